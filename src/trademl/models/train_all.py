"""``trademl train all``: every registered kind of model trained on one dataset into one store.

What ``trademl train all`` runs, what the demo runs, and what the walk-forward backtest runs
for each fold (into a temporary store). The kinds come from the registry
(``trademl.models.base``): a new kind file is trained here without a change to this module.
One job per stored kind, so one kind failing (too little data in an early fold, an ONNX
export that failed its parity check) can be skipped and named while the others are stored.

With ``[ensemble] method = "stacked"`` the base models train on the first rows and the stacker
(``trademl.models.stacker``) on the last ``stack_share`` of them, after a purge gap: the rows
it fits on are out of sample for every base model it stacks. Too few rows: no stacker, every
row trains the base models, and ``skipped`` says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trademl.errors import InsufficientDataError, ModelStoreError, TradeMLError
from trademl.data.dataset import sub_dataset
from trademl.models.base import registry
from trademl.models.stacker import STACKER_KIND
from trademl.models.stacker_train import stack_split


@dataclass
class TrainedModels:
    """What ``train_models`` stored, with each trainer's own result for printing."""

    stored: dict  # kind -> StoredModel
    skipped: dict = field(default_factory=dict)  # kind -> why it was not trained
    seconds: dict = field(default_factory=dict)  # family ([lgbm], [lstm], [ppo]) -> training seconds
    models: dict = field(default_factory=dict)  # kind -> the fitted TradeModel

    @property
    def metrics(self) -> dict:
        return {kind: s.manifest.get("metrics") or {} for kind, s in self.stored.items()}


def families() -> tuple[str, ...]:
    """The model families ``train all`` knows (their config sections): lgbm, lstm, ppo, ..."""
    return tuple(registry().models)


def check_families(chosen) -> tuple[str, ...]:
    chosen = tuple(chosen)
    known = families()
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise TradeMLError(f"unknown models {unknown}; choose among {', '.join(known)}", where="models")
    return chosen


def train_models(dataset, config, model_root, *, models=None, work_dir=None, skip_failed: bool = False,
                 progress: bool = False, console=None) -> TrainedModels:
    """Train the chosen families (default: all) on ``dataset`` into the store at ``model_root``.

    ``work_dir`` holds the trainers' checkpoints (default: where the config puts them). With
    ``skip_failed`` a kind that cannot be trained here is skipped and named in ``skipped``, as
    the predictor skips a model it cannot load, instead of failing the whole run.
    """
    from trademl.config import resolve_config

    cfg = resolve_config(config).model_copy(deep=True)
    cfg.paths.model_root = str(model_root)
    chosen = check_families(models or families())
    out = TrainedModels({})
    base_data, stack_rows = dataset, None
    if cfg.ensemble.method == "stacked":
        base_rows, stack_rows, why_not = stack_split(dataset, cfg)
        if stack_rows is None:
            out.skipped[STACKER_KIND] = why_not
        else:
            base_data = sub_dataset(dataset, base_rows)
    for family in chosen:
        for model in registry().models[family].for_dataset(base_data, cfg):
            started = time.perf_counter()
            options = {"progress": progress, "console": console}
            if work_dir is not None:
                options["checkpoint_dir"] = Path(work_dir) / model.kind
            try:
                out.stored[model.kind] = model.fit(base_data, **options).save(model_root)
                out.models[model.kind] = model
            except (InsufficientDataError, ModelStoreError) as e:
                if not skip_failed:
                    raise
                out.skipped[model.kind] = str(e)
            out.seconds[family] = out.seconds.get(family, 0.0) + time.perf_counter() - started
    if stack_rows is not None and out.stored:
        _train_stacker(dataset, stack_rows, cfg, model_root, out, skip_failed)
    return out


def _train_stacker(dataset, rows, cfg, model_root, out: TrainedModels, skip_failed: bool) -> None:
    """The stacker on the rows the base models did not train on (``trademl.models.stacker_train``)."""
    from trademl.models.stacker_train import train_stacker

    started = time.perf_counter()
    try:
        out.stored[STACKER_KIND] = train_stacker(dataset, out.stored, rows, cfg, model_root)
    except (InsufficientDataError, ModelStoreError) as e:
        if not skip_failed:
            raise
        out.skipped[STACKER_KIND] = str(e)
    out.seconds["stacker"] = time.perf_counter() - started


@dataclass
class PackedModels:
    """Models trained in a job, as it returns them: the store packed as bytes (a remote node's disk
    is not ours), the kinds it holds, what was skipped and the training seconds."""

    store: bytes
    kinds: list
    skipped: dict
    seconds: dict


def train_packed(dataset, config, models=None) -> PackedModels:
    """``train_models`` into a temporary store, packed: what a walk-forward fold's job and an
    instrument's job return (``trademl.parallel``)."""
    import tempfile

    from trademl.parallel import pack_folder

    with tempfile.TemporaryDirectory(prefix="trademl-job-") as tmp:
        root = Path(tmp) / "models"
        trained = train_models(dataset, config, root, models=models, work_dir=Path(tmp) / "checkpoints", skip_failed=True)
        root.mkdir(parents=True, exist_ok=True)  # nothing trained: still a (empty) store to pack
        return PackedModels(pack_folder(root), list(trained.stored), dict(trained.skipped), dict(trained.seconds))


@dataclass
class SymbolTraining(PackedModels):
    """One instrument's packed models (``train_symbol``), with its symbol and file."""

    symbol: str = ""
    source: str = ""


def train_symbol(path, *, config, models=None) -> SymbolTraining:
    """Every chosen family on one bars file (its instrument from its contract column or name)."""
    from dataclasses import asdict

    from trademl.data.dataset import bars_file_dataset

    dataset = bars_file_dataset(path, config)
    return SymbolTraining(**asdict(train_packed(dataset, config, models)), symbol=dataset.symbol, source=str(path))


def train_each(paths, config, model_root, *, models=None, workers: int = 1, address: str | None = None) -> dict:
    """One store per instrument, ``<model_root>/<SYMBOL>``: each bars file trained on its own, the
    files ``workers`` at a time (``trademl.parallel``). Returns {symbol: SymbolTraining}."""
    import tempfile

    from trademl.data.bars import bar_paths
    from trademl.models.store import ModelStore
    from trademl.parallel import run_jobs, threads_per_worker, unpack_folder, with_threads

    files = [str(p) for p in bar_paths(paths)]
    if len(set(files)) != len(files):
        raise TradeMLError("a bars file is named twice", where="train all --each")
    cfg = with_threads(config, threads_per_worker(workers, address)) if workers > 1 else config
    results = run_jobs(train_symbol, [(f,) for f in files], workers=workers, address=address,
                       shared={"config": cfg, "models": models})
    symbols = [r.symbol for r in results]
    twice = sorted({s for s in symbols if symbols.count(s) > 1})
    if twice:
        raise TradeMLError(f"several files are the same instrument {twice}: --each trains one store per instrument",
                           where="train all --each", hint="merge one instrument's files by training them without --each")
    for r in results:
        with tempfile.TemporaryDirectory(prefix="trademl-adopt-") as tmp:
            staged = ModelStore(unpack_folder(r.store, Path(tmp)))
            target = ModelStore(Path(model_root) / r.symbol)
            for kind in r.kinds:  # adopted under their own versions: a stacker still finds its base models
                target.adopt(staged.load(kind))
    return dict(zip(symbols, results))


def print_trained(trained: TrainedModels, console) -> None:
    """Each trainer's own table, then what was skipped and how long it took."""
    for model in trained.models.values():
        model.print_report(console)
    stacker = trained.stored.get(STACKER_KIND)
    if stacker is not None:
        m = stacker.manifest.get("metrics") or {}
        console.print(f"stacked {', '.join(m.get('kinds', []))} on {m.get('rows', 0):,} rows none of them trained on: "
                      f"base rate long {m.get('base_rate_long', float('nan')):.3f}, short "
                      f"{m.get('base_rate_short', float('nan')):.3f}; auto threshold {m.get('threshold_auto')}")
    for kind, why in trained.skipped.items():
        console.print(f"[yellow]{kind} not trained: {why}[/]")
    times = ", ".join(f"{g} {s:.0f} s" for g, s in trained.seconds.items())
    console.print(f"trained in {times}")
