"""Train the LSTM on a dataset: walk-forward CV for honest scores, then the model to serve.

The network is ``[lstm] architecture`` (``trademl.models.sequence_nets``: the guide's
bidirectional LSTM by default, or gru, transformer, cnn_lstm, tcn); everything here (windows,
normalisation, folds, checkpoints, export and its check, the store) is the same for all of
them, and all are stored as kind "lstm" with the architecture in the manifest.

``train_lstm(dataset, config)``:

1. Sequence windows of SEQUENCE_LENGTH bars end at every row whose window stays inside one
   segment, has finite features and has all three labels at PREDICTION_HORIZON. Fewer
   than MIN_SEQUENCES such windows is an InsufficientDataError with the numbers.
2. Walk-forward CV over the purged, embargoed splits (``trademl.data.splits``): per fold,
   a model is fitted on the training windows (a purged tail held out for early stopping)
   and scored on the test fold it never saw. Those out-of-sample scores are the metrics.
3. The served model is fitted the same way on all windows (the last 20 %, purged, for
   early stopping), exported to ONNX, checked against PyTorch to 1e-5 and written to the
   model store as kind "lstm" with its normaliser.

Every stage checkpoints after each epoch; ``resume=True`` continues where a killed run
stopped and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from trademl.config import Config, resolve_config
from trademl.data.sequences import Normalizer, valid_window_ends
from trademl.errors import DataError, InsufficientDataError, ModelStoreError
from trademl.models.base import skill

KIND = "lstm"
VALID_FRACTION = 0.2
ONNX_TOLERANCE = 1e-5
# The int8 graph against the float one on the training windows: the signal probabilities and the
# risk within INT8_TOLERANCE, the movement (a log return whose predictions spread little) in
# step with it, correlated at INT8_MOVEMENT_CORR; far below what one more training seed moves them.
INT8_TOLERANCE = 2e-2
INT8_MOVEMENT_CORR = 0.999
CLASS_NAMES = ("hold", "buy", "sell")


@dataclass
class LSTMTrainResult:
    stored: object  # trademl.models.store.StoredModel
    metrics: dict
    net: object  # the served LSTMSignalNet (eval mode)
    normalizer: Normalizer
    movement_scale: float
    oos: dict = field(default_factory=dict)  # out-of-sample arrays pooled over the CV folds


def sequence_task(dataset, config: Config):
    """The raw features, targets and usable window ends of ``dataset`` for the [lstm] settings."""
    from trademl.models.lstm_train import SequenceTask

    lc = config.lstm
    h = lc.PREDICTION_HORIZON
    frame = dataset.frame
    columns = [f"signal_{h}", f"movement_{h}", f"risk_{h}"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"dataset has no labels {missing} for PREDICTION_HORIZON {h}",
            where=str(getattr(dataset, "path", None) or "dataset"),
            hint=f"rebuild it with {h} in [data] horizons (has {dataset.manifest.get('horizons')})",
        )
    labels = {c: frame[c].to_numpy(np.float64) for c in columns}
    labelled = np.logical_and.reduce([np.isfinite(v) for v in labels.values()])
    task = SequenceTask(
        X=dataset.X,
        feature_names=list(dataset.feature_names),
        signal=labels[columns[0]],
        movement=labels[columns[1]],
        risk=labels[columns[2]],
        sequence_length=lc.SEQUENCE_LENGTH,
    )
    ends = valid_window_ends(task.X, dataset.segments, lc.SEQUENCE_LENGTH, required=labelled)
    if len(ends) < lc.MIN_SEQUENCES:
        n_seg = len(np.unique(dataset.segments))
        raise InsufficientDataError(
            f"{len(ends)} usable sequences of {lc.SEQUENCE_LENGTH} bars (from {len(frame)} bars in {n_seg} "
            f"segments; {int(labelled.sum())} rows labelled at horizon {h}); the LSTM needs at least {lc.MIN_SEQUENCES}",
            where=str(getattr(dataset, "path", None) or "dataset"),
            hint="use more data, a shorter SEQUENCE_LENGTH or a larger max_gap_minutes",
        )
    return task, ends


def train_lstm(
    dataset,
    config: Config | None = None,
    *,
    store_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch_end: Callable[[str, dict], None] | None = None,
) -> LSTMTrainResult:
    """Walk-forward CV, then fit, export and store the served model. See the module doc."""
    import torch

    from trademl.data.splits import train_valid_split, walk_forward_splits
    from trademl.models.lstm_train import fit_stage

    config = resolve_config(config)
    lc = config.lstm
    torch.set_num_threads(lc.TORCH_THREADS)
    task, ends = sequence_task(dataset, config)
    settings = lc.model_dump()
    h = lc.PREDICTION_HORIZON
    checkpoint_dir = Path(checkpoint_dir or Path(config.paths.model_root).parent / "checkpoints" / KIND)
    _prepare_checkpoints(checkpoint_dir, resume)

    folds = walk_forward_splits(len(task.X), lc.N_FOLDS, horizon=h, min_train=lc.MIN_SEQUENCES)
    stages = []
    for fold in folds:
        train = np.intersect1d(ends, fold.train)
        test = np.intersect1d(ends, fold.test)
        if len(train) < lc.MIN_SEQUENCES or not len(test):
            continue  # an early fold with too little history; later folds still score
        stages.append((f"fold{fold.number}", *train_valid_split(train, VALID_FRACTION, h), test))
    if not stages:
        raise InsufficientDataError(
            f"no walk-forward fold has {lc.MIN_SEQUENCES} training sequences ({len(ends)} sequences, {lc.N_FOLDS} folds)",
            where="lstm", hint="use more data or a smaller N_FOLDS",
        )
    stages.append(("final", *train_valid_split(ends, VALID_FRACTION, h), None))

    reporter = _Progress(stages, settings, enabled=progress, on_epoch_end=on_epoch_end)
    fold_metrics, pooled = [], {"ends": [], "logits": [], "movement": [], "risk": [], "majority": []}
    with reporter:
        for number, (name, fit, valid, test) in enumerate(stages):
            if not len(fit) or not len(valid):
                raise InsufficientDataError(f"stage {name}: {len(fit)} fit and {len(valid)} validation sequences", where="lstm")
            reporter.start(name, len(fit))
            result = fit_stage(
                task, fit, valid, settings, name=name, stage_number=number, checkpoint_dir=checkpoint_dir,
                resume=resume, on_epoch_end=reporter.epoch_end, on_batch=reporter.advance,
            )
            net = _net_from(result, task, settings)
            if test is not None:
                fold_metrics.append(_score_fold(net, task, result, fit, test, settings, pooled))
    cv = _pooled_metrics(task, pooled)
    metrics = {
        "validation_skill": lstm_skill(cv),
        # `trademl models list` prints a string headline as it is: the architecture in words
        "headline": {"architecture": lc.architecture,
                     **{k: cv[k] for k in ("accuracy", "majority_accuracy", "movement_corr") if k in cv}},
        "cv": cv,
        "out_of_sample": cv,  # the name `trademl models list` and the other kinds use
        "folds": fold_metrics,
        "final": {"best_epoch": result.best_epoch, "val_loss": result.best_loss, "history": result.history,
                  "class_weights": result.class_weights, "movement_scale": result.movement_scale,
                  "fit_sequences": int(len(stages[-1][1])), "valid_sequences": int(len(stages[-1][2]))},
        "sequences": int(len(ends)),
    }
    stored = _store(net, result, task, dataset, config, metrics, ends, store_root)
    oos = {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}
    return LSTMTrainResult(stored, metrics, net, result.normalizer, result.movement_scale, oos)


def _prepare_checkpoints(checkpoint_dir: Path, resume: bool) -> None:
    """A fresh run starts without stage checkpoints; a resumed one keeps them.

    Only this trainer's own files (fold*.pt, final.pt and their .part leftovers) are
    removed, so pointing --checkpoint-dir at a folder that holds anything else is harmless.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for pattern in ("fold*.pt", "final.pt", "*.pt.part"):
            for p in checkpoint_dir.glob(pattern):
                p.unlink()


def _net_from(result, task, settings):
    """The stage's best weights in a CPU net of the configured architecture (what is exported)."""
    from trademl.models.sequence_nets import build_net

    net = build_net(len(task.feature_names), settings)
    net.load_state_dict(result.state)
    return net.eval()


def _score_fold(net, task, result, fit, test, settings, pooled) -> dict:
    """Out-of-sample scores of one fold, and its predictions added to the pool."""
    from trademl.models.lstm_model import prior_correction
    from trademl.models.lstm_train import Batcher, predict_raw

    logits, movement, risk_logit = predict_raw(net, Batcher(task, result.normalizer, result.movement_scale), test, settings["BATCH_SIZE"])
    logits = logits - prior_correction(result.class_weights).numpy()  # what the served probabilities rank by
    majority = int(np.argmax(np.bincount(task.signal[fit].astype(np.int64), minlength=3)))
    pooled["ends"].append(test)
    pooled["logits"].append(logits)
    pooled["movement"].append(movement * result.movement_scale)
    pooled["risk"].append(1 / (1 + np.exp(-risk_logit)))
    pooled["majority"].append(np.full(len(test), majority))
    m = _scores(task, test, logits, movement * result.movement_scale, pooled["risk"][-1], pooled["majority"][-1])
    return {"fold": result.name, "best_epoch": result.best_epoch, "val_loss": result.best_loss, **m}


def _scores(task, ends, logits, movement, risk, majority) -> dict:
    from trademl.data.synthetic import rank_ic

    truth = task.signal[ends].astype(np.int64)
    realized = task.movement[ends]
    predicted = np.argmax(logits, axis=1)
    return {
        "n_test": int(len(ends)),
        "accuracy": float(np.mean(predicted == truth)),
        "majority_accuracy": float(np.mean(majority == truth)),
        "predicted_shares": {CLASS_NAMES[c]: float(np.mean(predicted == c)) for c in range(3)},
        "label_shares": {CLASS_NAMES[c]: float(np.mean(truth == c)) for c in range(3)},
        "movement_corr": _pearson(movement, realized),
        "movement_rank_ic": rank_ic(movement.astype(np.float64), realized) if len(ends) > 2 else float("nan"),
        "risk_mae": float(np.mean(np.abs(risk - task.risk[ends]))),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0  # a constant prediction correlates with nothing
    return float(np.corrcoef(a.astype(np.float64), b)[0, 1])


def lstm_skill(cv: dict) -> dict:
    """Accuracy gain of the signal head over always predicting the majority class, out of fold:
    (acc - maj) / (1 - maj), 0 when it does no better."""
    if "accuracy" not in cv:
        return skill(None, "accuracy gain over the majority class", note="no fold could be scored")
    acc, maj = float(cv["accuracy"]), float(cv["majority_accuracy"])
    return skill(max(0.0, (acc - maj) / (1.0 - maj)) if maj < 1 else 0.0,
                 "accuracy gain over the majority class, (acc - maj) / (1 - maj), out of fold",
                 note=f"accuracy {acc:.3f} vs {maj:.3f} for the majority class over {cv['n_test']} sequences")


def _pooled_metrics(task, pooled) -> dict:
    if not pooled["ends"]:
        return {}
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    return _scores(task, cat["ends"], cat["logits"], cat["movement"], cat["risk"], cat["majority"])


def _store(net, result, task, dataset, config: Config, metrics: dict, ends: np.ndarray, store_root):
    """Export ONNX, prove it equals PyTorch, write everything into the store atomically."""
    from trademl.models.store import ModelStore

    lc = config.lstm
    frame = dataset.frame
    span = {
        "start": frame.index[int(ends[0])].isoformat(),
        "end": frame.index[int(ends[-1])].isoformat(),
        "rows": int(len(frame)),
        "sequences": int(len(ends)),
    }
    store = ModelStore(store_root or config.paths.model_root)
    try:
        return _write_version(store, net, result, task, dataset, lc, metrics, ends, span)
    except OSError as e:  # a full disk: the store's writer has removed its half-written folder
        raise ModelStoreError(f"cannot write the model: {e.strerror or e}", where=str(store.root)) from None


def _write_version(store, net, result, task, dataset, lc, metrics, ends, span):
    import torch

    from trademl.data.reference import feature_reference
    from trademl.models.lstm_model import export_onnx

    with store.writer(
        KIND,
        feature_schema=dataset.manifest["feature_schema"],
        training_span=span,
        config={**lc.model_dump(), "symbol": dataset.manifest.get("symbol")},
        contract=dataset.manifest.get("contract"),  # the spec serving prices with (trademl.market.contracts)
        metrics=metrics,
        # the last step of every training window: the bars the model was fitted on, for drift checks
        feature_reference=feature_reference(task.X[ends], task.feature_names),
    ) as w:
        export_onnx(net, result.movement_scale, result.class_weights, lc.SEQUENCE_LENGTH, len(task.feature_names), w.path / "model.onnx")
        result.normalizer.save(w.path / "normalizer.json")
        try:
            torch.save(net.state_dict(), w.path / "model.pt")
        except RuntimeError as e:  # torch's writer reports a full disk as RuntimeError
            raise OSError(errno.ENOSPC if "space" in str(e).lower() else errno.EIO,
                          f"model.pt: {str(e).splitlines()[0][:200]}") from None
        w.manifest["onnx_max_abs_diff"] = _check_onnx(net, result, task, ends, w.path / "model.onnx")
        w.manifest["onnx_graph"] = (_int8_graph(w.path / "model.onnx", _check_windows(result, task, ends))
                                    if lc.serve_int8 else {"precision": "float32", "note": "[lstm] serve_int8 = false"})
        w.manifest["architecture"] = lc.architecture  # also in config; here so a stored model says what it is
        w.manifest["outputs"] = {"signal_probs": list(CLASS_NAMES), "movement": "log return", "risk": "[0, 1]"}
    return w.stored


def _check_onnx(net, result, task, ends, onnx_path: Path) -> float:
    """Largest |ONNX - PyTorch| over real windows at batch 1 and a larger batch; > 1e-5 aborts the store."""
    import onnxruntime as ort
    import torch

    from trademl.models.lstm_model import ServingHead
    from trademl.models.lstm_train import Batcher

    head = ServingHead(net, result.movement_scale, result.class_weights).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batcher = Batcher(task, result.normalizer, result.movement_scale)
    worst = 0.0
    for sample in (ends[-1:], ends[-min(64, len(ends)):]):
        x = batcher.inputs(sample)
        with torch.no_grad():
            expected = [t.numpy() for t in head(x)]
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        worst = max(worst, max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got)))
    if worst > ONNX_TOLERANCE:
        raise ModelStoreError(f"ONNX export differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE})", where="model.onnx")
    return worst


def _check_windows(result, task, ends, n: int = 256) -> np.ndarray:
    """The last ``n`` training windows, normalised as served: what the int8 graph is judged on."""
    from trademl.models.lstm_train import Batcher

    return Batcher(task, result.normalizer, result.movement_scale).inputs(ends[-min(n, len(ends)):]).numpy()


def _int8_graph(onnx_path: Path, windows: np.ndarray) -> dict:
    """Replace the float graph at ``onnx_path`` by its dynamic int8 quantisation (ONNX Runtime's
    DynamicQuantizeLSTM) when the graph has an LSTM, whose recurrent weights, read again at
    every step, are what int8 makes cheap (the heads stay float), and when its outputs on
    ``windows`` stay within INT8_TOLERANCE / INT8_MOVEMENT_CORR of the float graph's; else keep
    the float graph. Returns the manifest's ``onnx_graph`` entry: the precision stored and the
    differences measured."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from trademl.models.kinds.lstm import run_windows
    from trademl.models.lstm_model import INPUT_NAME
    from trademl.models.onnx_session import open_session

    if not any(node.op_type == "LSTM" for node in onnx.load(str(onnx_path)).graph.node):
        return {"precision": "float32", "note": "no LSTM node: int8 pays off in the recurrence only"}
    int8_path = onnx_path.with_name("model.int8.onnx")
    try:
        with _quiet_root_logger():  # its advice to pre-process a graph for static quantisation, on every call
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
        float_out = open_session(onnx_path).run(None, {INPUT_NAME: windows})
        int8_out = run_windows(open_session(int8_path), windows, 1)  # one window per call, as it is served
        (p0, m0, r0), (p1, m1, r1) = float_out, int8_out
        diff = {"signal_probs": float(np.abs(p1 - p0).max()), "risk": float(np.abs(r1 - r0).max()),
                "movement_corr": _correlation(np.ravel(m0), np.ravel(m1))}
        if max(diff["signal_probs"], diff["risk"]) > INT8_TOLERANCE or diff["movement_corr"] < INT8_MOVEMENT_CORR:
            return {"precision": "float32", "int8_vs_float": diff,
                    "note": f"the int8 graph departed from the float one on {len(windows)} training windows"}
        int8_path.replace(onnx_path)
        return {"precision": "int8", "method": "onnxruntime.quantization.quantize_dynamic (LSTM nodes, QInt8 weights)",
                "int8_vs_float": diff, "windows": int(len(windows))}
    finally:
        int8_path.unlink(missing_ok=True)


@contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser warns through the root logger; drop its records meanwhile."""
    import logging

    root, drop = logging.getLogger(), (lambda record: False)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 1 when both are constant and equal (nothing to rank), 0 when only one is."""
    if np.std(a) == 0 or np.std(b) == 0:
        return 1.0 if np.allclose(a, b, atol=1e-9) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


class _Progress:
    """A rich progress bar over the batches of every stage, one line of losses per epoch."""

    def __init__(self, stages, settings, enabled: bool, on_epoch_end=None):
        self.enabled, self.user_callback = enabled, on_epoch_end
        self.epochs = settings["EPOCHS"]
        self.batch_size = settings["BATCH_SIZE"]
        self.progress = self.task = None
        self.n_stages = len(stages)

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def start(self, name: str, n_fit: int) -> None:
        if self.progress:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"lstm {name}", total=n_fit * self.epochs)

    def advance(self, n: int) -> None:
        if self.progress:
            self.progress.advance(self.task, n)

    def epoch_end(self, name: str, record: dict) -> None:
        if self.progress:
            mark = "*" if record["improved"] else " "
            self.progress.console.log(
                f"{name} epoch {record['epoch']:>3}: train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f} {mark}"
            )
        if self.user_callback:
            self.user_callback(name, record)


def stored_summary(stored) -> str:
    """One paragraph for the end of `trademl train lstm`."""
    cv = stored.manifest.get("metrics", {}).get("cv", {})
    arch = stored.manifest.get("architecture", "bilstm_attention")  # models stored before there was a choice
    lines = [f"stored lstm {stored.version} at {stored.path}", f"architecture {arch}"]
    if cv:
        lines.append(
            f"walk-forward OOS on {cv['n_test']:,} sequences: accuracy {cv['accuracy']:.3f} "
            f"(majority class {cv['majority_accuracy']:.3f}), movement corr {cv['movement_corr']:.3f}, "
            f"risk MAE {cv['risk_mae']:.3f}"
        )
    graph = stored.manifest.get("onnx_graph") or {}
    if graph.get("precision") == "int8":
        d = graph["int8_vs_float"]
        lines.append(f"served in int8: within {max(d['signal_probs'], d['risk']):.4f} of the float graph on "
                     f"{graph['windows']} training windows (movement r {d['movement_corr']:.4f})")
    elif graph:
        lines.append(f"served in float32: {graph.get('note', '')}")
    lines.append("written: " + ", ".join(sorted(stored.manifest["files"])))
    return "\n".join(lines)
