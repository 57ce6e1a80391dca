"""One LSTM training run ("stage"): epochs, early stopping, a checkpoint after every epoch.

Determinism: the weights are drawn after ``torch.manual_seed(stage seed)``; the order
of the training windows in epoch e is a permutation drawn from a generator seeded by
(seed, stage, e) alone, so it does not depend on what ran before; dropout draws from
torch's global generator, whose state goes into the checkpoint. No numpy randomness
and no DataLoader workers are used (batches are gathered from the strided window view in
the main process). With the same seed, data and thread count, a run interrupted after
any epoch and resumed from its checkpoint ends with bit-identical weights.

A checkpoint holds tensors, numbers and strings only, and is read with
``torch.load(weights_only=True)``; it is written to a temporary file and renamed, so a
kill during the write leaves the previous epoch's checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from trademl.data.sequences import Normalizer, rows_covered, windows_at
from trademl.errors import TradeMLError
from trademl.models.sequence_nets import build_net

CHECKPOINT_FORMAT = 1
GRAD_CLIP_NORM = 1.0  # LSTMs on noisy returns occasionally spike; clipping keeps Adam sane


@dataclass
class SequenceTask:
    """What a stage learns from: raw features, window ends, and the three targets per row."""

    X: np.ndarray  # float32 [n, F], raw (normalised per batch)
    feature_names: list[str]
    signal: np.ndarray  # float [n]: 0 hold, 1 buy, 2 sell (NaN where unlabelled)
    movement: np.ndarray  # float [n]: forward log return
    risk: np.ndarray  # float [n] in [0, 1]
    sequence_length: int


@dataclass
class StageResult:
    name: str
    state: dict  # best weights
    normalizer: Normalizer
    movement_scale: float
    class_weights: list[float]
    best_epoch: int
    best_loss: float
    history: list[dict] = field(default_factory=list)


def stage_seed(seed: int, stage_number: int) -> int:
    return int(seed) * 1_000 + int(stage_number)


def epoch_order(n: int, seed: int, stage_number: int, epoch: int) -> torch.Tensor:
    """The order of the training windows in one epoch: a function of (seed, stage, epoch) only."""
    g = torch.Generator().manual_seed(stage_seed(seed, stage_number) * 10_000 + epoch)
    return torch.randperm(n, generator=g)


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse class frequency (hold, buy, sell), mean 1 over the rows; 0 for an absent class."""
    counts = np.bincount(labels.astype(np.int64), minlength=3).astype(np.float64)
    present = counts > 0
    w = np.zeros(3)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def movement_scale(movement: np.ndarray) -> float:
    """Std of the training targets: the Huber loss then sees values of order 1, not 1e-3."""
    s = float(np.std(movement))
    return s if s > 0 else 1.0


def resolve_device(setting: str) -> torch.device:
    """[lstm] device: "auto" is CUDA when torch sees a GPU, else the CPU; "cuda" without one is an error."""
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise TradeMLError("device is 'cuda' but torch sees no CUDA GPU", where="[lstm] device",
                           hint='use "auto" or "cpu"')
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and available) else "cpu")


class Batcher:
    """Normalised window batches [b, T, F] and their targets, gathered on demand, on ``device``."""

    def __init__(self, task: SequenceTask, normalizer: Normalizer, scale: float, device: str | torch.device = "cpu"):
        self.task, self.normalizer, self.scale, self.device = task, normalizer, scale, torch.device(device)

    def inputs(self, ends: np.ndarray) -> torch.Tensor:
        raw = windows_at(self.task.X, ends, self.task.sequence_length)
        return torch.from_numpy(self.normalizer.apply(raw)).to(self.device)

    def targets(self, ends: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.task
        return tuple(torch.from_numpy(a).to(self.device) for a in (
            t.signal[ends].astype(np.int64),
            (t.movement[ends] / self.scale).astype(np.float32),
            t.risk[ends].astype(np.float32),
        ))


class MultiTaskLoss(nn.Module):
    """Class-weighted cross-entropy + Huber on scaled movement + BCE on the risk score."""

    def __init__(self, weights: np.ndarray):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
        self.huber = nn.HuberLoss(delta=1.0)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, outputs, targets) -> tuple[torch.Tensor, dict]:
        (logits, movement, risk_logit), (signal, movement_target, risk_target) = outputs, targets
        parts = {
            "signal": self.ce(logits, signal),
            "movement": self.huber(movement, movement_target),
            "risk": self.bce(risk_logit, risk_target),
        }
        return sum(parts.values()), parts


def fingerprint(task: SequenceTask, fit_ends: np.ndarray, valid_ends: np.ndarray, settings: dict) -> str:
    """What a checkpoint was made from: resuming against other data or settings is refused."""
    h = hashlib.sha256()
    for arr in (task.X, task.signal, task.movement, task.risk, fit_ends, valid_ends):
        h.update(np.ascontiguousarray(arr).data)
    h.update(repr(sorted(settings.items())).encode())
    h.update("|".join(task.feature_names).encode())
    return h.hexdigest()


def _save_checkpoint(path: Path, payload: dict) -> None:
    """Write through ``.pt.part`` and rename; a failed write (a full disk) leaves no ``.part``
    behind, keeps the previous checkpoint and is one clear error."""
    from trademl.errors import TradeMLError

    tmp = path.with_suffix(".pt.part")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        # torch's writer reports a failed write (a full disk) as RuntimeError: "file write
        # failed", "iostream error", "unexpected pos ..."
        if isinstance(e, (OSError, RuntimeError)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
            raise TradeMLError(f"cannot write the training checkpoint: {reason}", where=str(path)) from None
        raise


def _load_checkpoint(path: Path, expected_fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")  # copied to the training device on load
    except Exception as e:  # a truncated or foreign file: say which, do not guess
        raise TradeMLError(f"unreadable checkpoint: {e}", where=str(path), hint="start again without --resume") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("fingerprint") != expected_fingerprint:
        raise TradeMLError(
            "checkpoint was made from other data or settings than this run",
            where=str(path),
            hint="start again without --resume, or resume with the original dataset and config",
        )
    return ckpt


def _clone_state(net: nn.Module) -> dict:
    """A CPU copy of the weights, whatever device trains: checkpoints and the served net are CPU tensors."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


@torch.no_grad()
def predict_raw(net: nn.Module, batcher: Batcher, ends: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """(signal logits [n, 3], scaled movement [n], risk logit [n]) in eval mode."""
    net.eval()
    outs = [net(batcher.inputs(ends[i : i + batch_size])) for i in range(0, len(ends), batch_size)]
    if not outs:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return tuple(torch.cat([o[k] for o in outs]).cpu().numpy() for k in range(3))


@torch.no_grad()
def _validation_loss(net, batcher: Batcher, loss_fn: MultiTaskLoss, ends: np.ndarray, batch_size: int) -> float:
    net.eval()
    total = 0.0
    for i in range(0, len(ends), batch_size):
        b = ends[i : i + batch_size]
        loss, _ = loss_fn(net(batcher.inputs(b)), batcher.targets(b))
        total += float(loss) * len(b)
    return total / max(len(ends), 1)


def fit_stage(
    task: SequenceTask,
    fit_ends: np.ndarray,
    valid_ends: np.ndarray,
    settings: dict,
    *,
    name: str,
    stage_number: int,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[str, dict], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> StageResult:
    """Train one model on ``fit_ends``, early-stopped on the loss over ``valid_ends``.

    ``settings`` is the [lstm] config section as a dict (architecture, HIDDEN_SIZE, EPOCHS, ...).
    The weights are drawn on the CPU (the same start on any device), then moved to ``device``.
    """
    device = resolve_device(settings.get("device", "cpu"))
    T, n = task.sequence_length, len(task.X)
    normalizer = Normalizer.fit(task.X, rows_covered(fit_ends, T, n), task.feature_names)
    scale = movement_scale(task.movement[fit_ends])
    weights = class_weights(task.signal[fit_ends])
    batcher = Batcher(task, normalizer, scale, device)
    loss_fn = MultiTaskLoss(weights).to(device)
    seed = int(settings["seed"])
    batch_size = int(settings["BATCH_SIZE"])

    torch.manual_seed(stage_seed(seed, stage_number))
    net = build_net(len(task.feature_names), settings).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings["LEARNING_RATE"])
    state = {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": [], "done": False}
    best = _clone_state(net)

    ckpt_path = Path(checkpoint_dir) / f"{name}.pt" if checkpoint_dir else None
    stamp = fingerprint(task, fit_ends, valid_ends, settings)
    ckpt = _load_checkpoint(ckpt_path, stamp) if (ckpt_path and resume) else None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:  # dropout on the GPU draws from its own generator
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        best = ckpt["best_model"]
        state = {k: ckpt[k] for k in state}

    while not state["done"]:
        epoch = state["epoch"] + 1
        train_loss = _train_epoch(net, optimizer, batcher, loss_fn, fit_ends, epoch, seed, stage_number, batch_size, on_batch)
        val_loss = _validation_loss(net, batcher, loss_fn, valid_ends, batch_size)
        improved = val_loss < state["best_loss"] - 1e-7
        if improved:
            best = _clone_state(net)
            state.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "improved": improved}
        state["history"].append(record)
        state["epoch"] = epoch
        state["done"] = epoch >= settings["EPOCHS"] or state["bad_epochs"] >= settings["PATIENCE"]
        if ckpt_path:
            _save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "fingerprint": stamp, "stage": name,
                "model": _clone_state(net), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "best_model": best, **state,
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            })
        if on_epoch_end:
            on_epoch_end(name, record)
    return StageResult(name, best, normalizer, scale, weights.tolist(), state["best_epoch"], state["best_loss"], state["history"])


def _train_epoch(net, optimizer, batcher, loss_fn, fit_ends, epoch, seed, stage_number, batch_size, on_batch) -> float:
    net.train()
    order = fit_ends[epoch_order(len(fit_ends), seed, stage_number, epoch).numpy()]
    total = 0.0
    for i in range(0, len(order), batch_size):
        b = order[i : i + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(net(batcher.inputs(b)), batcher.targets(b))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        total += float(loss.detach()) * len(b)
        if on_batch:
            on_batch(len(b))
    return total / max(len(order), 1)
