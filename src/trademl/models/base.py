"""The model interface: what every kind of model is, trains, predicts and stores.

A *kind* is one file in ``trademl/models/kinds/`` holding two classes that register themselves:

* a ``TradeModel`` subclass, the training side (``LGBMWinModel``, ``LSTMModel``,
  ``PPOAgent``)::

      m = LGBMWinModel(horizon=5, n_estimators=200).fit(dataset)   # kwargs override its config section
      votes = m.predict(dataset)                                   # every bar; NaN features are fine
      stored = m.save()                                            # into [paths] model_root
      m2 = LGBMWinModel.load(stored)                               # predict-only, from the store

* a ``Runtime`` subclass, the serving side: the same ``predict(inputs) -> Votes`` over ONNX
  Runtime and numpy, without torch, lightgbm or gymnasium. ``TradeModel.predict`` runs
  through it too, so a model predicts the same in a notebook, in the backtest and in serving.

``Votes`` is one shape for every kind: the model's (hold, buy, sell) vote per bar (NaN where it
could not run, with the reason), plus its own named outputs and which response fields they fill.
Every kind also stores ``metrics["validation_skill"]`` in one shape (``skill``), the only
figure the ensemble reads to weight it; nothing outside a kind parses its private metrics.

Adding a kind is one new file in ``kinds/``: the registry finds it (``registry()``) and the
predictor, the walk-forward and ``train all`` iterate over what is registered.
"""

from __future__ import annotations

import importlib
import pkgutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from trademl.errors import ModelStoreError, TradeMLError
from trademl.market.broker import AccountState

# ----------------------------------------------------------------------------- what a model sees and says


@dataclass
class ModelInputs:
    """The inputs of one batch of predictions, the same for every kind.

    ``X`` holds raw feature rows in the models' schema order, oldest first (NaN = missing or
    warming up); a prediction is made at each row of ``at``, reading rows up to it only.
    ``segments`` (one id per row of X) stops a window at a gap; None is one segment.
    ``rows`` gives the decision bars' own feature rows when they are not ``X[at]`` (a request
    that sends ``features`` beside its ``sequence``), or when there is no history at all
    (``X`` None: a features-only request). ``account`` is the account state at each
    prediction, for the kinds that observe it (the PPO agent).
    """

    X: np.ndarray | None
    at: np.ndarray
    segments: np.ndarray | None = None
    rows: np.ndarray | None = None
    account: AccountState | None = None

    def __post_init__(self):
        self.at = np.atleast_1d(np.asarray(self.at, dtype=np.int64))

    @classmethod
    def of_dataset(cls, dataset, rows=None, account: AccountState | None = None) -> "ModelInputs":
        """Every bar of a dataset (or the given rows), each with its own history."""
        at = np.arange(len(dataset.frame)) if rows is None else np.asarray(rows, dtype=np.int64)
        return cls(dataset.X, at, dataset.segments, account=account)

    def __len__(self) -> int:
        return len(self.at)

    def current_rows(self) -> np.ndarray | None:
        """[n, F] the feature rows of the decision bars."""
        if self.rows is not None:
            return np.atleast_2d(np.asarray(self.rows, dtype=np.float32))
        return None if self.X is None else self.X[self.at]

    def complete_windows(self, length: int, who: str) -> tuple[np.ndarray, str | None]:
        """(mask of the predictions whose last ``length`` rows are complete and in one segment,
        why the last one that is not, is not): the rule of ``sequences.valid_window_ends``."""
        from trademl.data.sequences import complete_windows_at

        if self.X is None:
            return (np.zeros(len(self.at), bool),
                    f"no `sequence` (or `bars`) in the request; the {who} needs {length} feature rows")
        ok = complete_windows_at(self.X, self.at, length, self.segments)
        if ok.all():
            return ok, None
        last = int(self.at[np.flatnonzero(~ok)[-1]])
        usable = _clean_rows_ending_at(self.X, last, self.segments)
        return ok, (f"the {who} needs {length} complete feature rows in one segment; the bars give {usable} "
                    "(features warm up and restart after a gap: send more bars)")


def _clean_rows_ending_at(X: np.ndarray, t: int, segments) -> int:
    """How many consecutive finite rows of t's segment end at row t (segment ids only grow)."""
    lo = 0 if segments is None else int(np.searchsorted(np.asarray(segments)[: t + 1], segments[t]))
    bad = np.flatnonzero(~np.isfinite(X[lo: t + 1]).all(axis=1))
    return (t - lo + 1) - (int(bad[-1]) + 1) if len(bad) else t - lo + 1


def class_vote(hold, buy, sell) -> np.ndarray:
    """[n, 3] (hold, buy, sell) from class probabilities, renormalised against float drift."""
    v = np.stack([np.asarray(hold, np.float64), np.asarray(buy, np.float64), np.asarray(sell, np.float64)], axis=-1)
    return v / v.sum(axis=-1, keepdims=True)


@dataclass
class Votes:
    """What one kind says about a batch of bars.

    ``vote`` is [n, 3] (hold, buy, sell), NaN in the rows where the model could not run
    (``reason`` says why, for the last such row). ``outputs`` are the model's own named
    outputs [n] (NaN where it could not run). ``fields`` maps each response field the kind
    fills (the guide's names) to an output name, or to a (long, short) pair of output names
    for a field that depends on the side of the trade asked about (``win_5m_prob``).
    """

    kind: str
    vote: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    fields: dict[str, str | tuple[str, str]] = field(default_factory=dict)
    reason: str | None = None

    @property
    def ran(self) -> np.ndarray:
        return np.isfinite(self.vote).all(axis=1)

    def response_fields(self, i: int = -1, side: int = 1) -> dict[str, float]:
        """The response fields of prediction ``i`` (``side`` +1 long, -1 short)."""
        out = {}
        for name, key in self.fields.items():
            if isinstance(key, tuple):
                key = key[0] if side == 1 else key[1]
            out[name] = float(self.outputs[key][i])
        return out

    @classmethod
    def none(cls, kind: str, n: int, reason: str) -> "Votes":
        """A batch on which the model could not run at all."""
        return cls(kind, np.full((n, 3), np.nan), reason=reason)


def skill(value: float | None, measure: str, interval=None, note: str | None = None) -> dict:
    """The one shape of ``metrics["validation_skill"]``: out-of-sample skill in [0, 1] (0: no
    better than its baseline, None: nothing to measure it against), how it was measured, an
    interval where the measure has one."""
    v = None if value is None or not np.isfinite(value) else float(min(1.0, max(0.0, value)))
    return {"value": v, "measure": measure,
            "interval": None if interval is None else [float(interval[0]), float(interval[1])], "note": note}


def validation_skill(metrics: dict) -> float | None:
    """The stored skill of any kind (None when the manifest has none: a model of an older version)."""
    record = (metrics or {}).get("validation_skill")
    if not isinstance(record, dict):
        return None
    value = record.get("value")
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


# ----------------------------------------------------------------------------- the serving side


class Runtime(ABC):
    """A stored model opened for prediction: ONNX Runtime and numpy only.

    ``history`` is how many feature rows one prediction reads (1 for a row model, the window
    otherwise); ``needs_account`` is True for a kind that observes the account (its votes
    depend on the positions a strategy took, so a backtest runs it bar by bar).
    """

    kind_pattern: ClassVar[str]  # the stored kinds this runtime serves: "lgb_*m", "lstm", ...
    needs_account: ClassVar[bool] = False
    order: ClassVar[int] = 50  # where its kinds stand in responses and tables

    kind: str
    version: str
    feature_names: list[str]
    history: int

    @classmethod
    @abstractmethod
    def load(cls, stored) -> "Runtime":
        """Open a StoredModel (the store has verified its checksums)."""

    @abstractmethod
    def predict(self, inputs: ModelInputs) -> Votes:
        """Votes at every prediction of ``inputs``."""

    @classmethod
    def serves(cls, kind: str) -> bool:
        import fnmatch

        return fnmatch.fnmatchcase(kind, cls.kind_pattern)


def check_onnx_contract(session, where: str, inputs, outputs, *, only_these_outputs: bool = True) -> None:
    """Refuse (``ModelStoreError`` naming ``where``, the file) an ONNX graph whose signature is
    not its kind's contract, before any request can reach it.

    ``inputs`` and ``outputs`` are ``[(name or None, shape), ...]``: a name of None matches the
    graph's input or output at that position; a shape is a tuple of ints (fixed dims) and None
    (the batch). Every input and output must be a float tensor of that rank and those fixed
    dims, with a dynamic batch; ``only_these_outputs=False`` allows other outputs beside the
    named ones. The graph is then run once on a zero batch of two of the contract's shapes and
    every output checked for its shape, so a graph that declares the right shapes but cannot
    compute on them (``Invalid rank``) is refused here too.
    """
    import numpy as np

    def declared(node, kind_of: str, i: int, want_name, shape) -> None:
        label = f"{kind_of} {node.name!r}"
        if want_name is not None and node.name != want_name:
            raise ModelStoreError(f"the ONNX {kind_of} {i} is {node.name!r}, the contract says {want_name!r}", where=where,
                                  hint="retrain the model: this graph is not what its kind exports")
        if node.type != "tensor(float)":
            raise ModelStoreError(f"the ONNX {label} is {node.type}, the contract says tensor(float)", where=where,
                                  hint="retrain the model: this graph is not what its kind exports")
        got = list(node.shape)
        contract = ["n" if d is None else d for d in shape]
        if len(shape) == 1 and len(got) == 2 and got[1] == 1:
            got = got[:1]  # a per-row output declared [n, 1]: the runtimes ravel it
        if len(got) != len(shape) or not all(_dim_fits(g, d) for g, d in zip(got, shape)):
            raise ModelStoreError(f"the ONNX {label} has shape {got}, the contract says {contract}", where=where,
                                  hint="retrain the model: this graph is not what its kind exports")

    graph_inputs, graph_outputs = session.get_inputs(), session.get_outputs()
    if len(graph_inputs) != len(inputs):
        raise ModelStoreError(f"the ONNX graph takes {len(graph_inputs)} inputs, the contract says {len(inputs)}",
                              where=where, hint="retrain the model: this graph is not what its kind exports")
    for i, (node, (name, shape)) in enumerate(zip(graph_inputs, inputs)):
        declared(node, "input", i, name, shape)
    by_name = {o.name: o for o in graph_outputs}
    if only_these_outputs and len(graph_outputs) != len(outputs):
        raise ModelStoreError(f"the ONNX graph has {len(graph_outputs)} outputs, the contract says {len(outputs)}",
                              where=where, hint="retrain the model: this graph is not what its kind exports")
    wanted = []
    for i, (name, shape) in enumerate(outputs):
        if name is None:
            node = graph_outputs[i]
        elif name in by_name:
            node = by_name[name]
        else:
            raise ModelStoreError(f"the ONNX graph has no output {name!r} (has {sorted(by_name)})", where=where,
                                  hint="retrain the model: this graph is not what its kind exports")
        declared(node, "output", i, name, shape)
        wanted.append((node.name, shape))
    n = 2
    feed = {node.name: np.zeros([n if d is None else d for d in shape], np.float32)
            for node, (_, shape) in zip(graph_inputs, inputs)}
    try:
        results = session.run([name for name, _ in wanted], feed)
    except Exception as e:  # onnxruntime's own exception types
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise ModelStoreError(f"the ONNX graph does not run on inputs of the contract's shapes {shapes}: {e}",
                              where=where, hint="retrain the model: this graph is not what its kind exports") from None
    for (name, shape), value in zip(wanted, results):
        got = list(np.shape(value))
        expected = [n if d is None else d for d in shape]
        # a per-row output ([n]) may come as [n, 1]: the runtimes ravel it
        if got != expected and not (len(shape) == 1 and got == [n, 1]):
            raise ModelStoreError(f"the ONNX output {name!r} comes out as {got} for a batch of {n}, the contract says "
                                  f"{expected}", where=where, hint="retrain the model: this graph is not what its kind exports")


def _dim_fits(declared, contract) -> bool:
    """A declared ONNX dim against the contract's: the batch (None) must be dynamic; a fixed dim
    must be that int, or symbolic (the probe run of ``check_onnx_contract`` then checks it)."""
    if contract is None:
        return not isinstance(declared, int)
    return declared == contract or not isinstance(declared, int)


# ----------------------------------------------------------------------------- the training side


class TradeModel(ABC):
    """A kind of model, trained on a ``Dataset`` (see the module doc).

    Subclasses set ``section`` (their config section, which keyword arguments override),
    ``runtime`` (their ``Runtime`` class), ``kind`` (the stored kind this instance trains)
    and implement ``_train(dataset, staging_root, **options)``, which trains and writes the
    model into a ``ModelStore`` at ``staging_root``. ``fit`` keeps that private staged copy
    until ``save`` copies it into a store, so ``predict`` works before anything is saved.
    """

    section: ClassVar[str]
    runtime: ClassVar[type[Runtime]]
    default_kinds: ClassVar[tuple[str, ...]]  # what ``train all`` trains by default

    def __init__(self, config=None, **overrides):
        from trademl.config import with_overrides

        self.config = with_overrides(config, {self.section: overrides} if overrides else None)
        self.stored = None  # StoredModel (staged after fit, or in a store after save/load)
        self.report = None  # the trainer's own result, for printing
        self._runtime: Runtime | None = None
        self._staging: tempfile.TemporaryDirectory | None = None

    @property
    def kind(self) -> str:
        return self.default_kinds[0]

    @classmethod
    def for_dataset(cls, dataset, config=None) -> list["TradeModel"]:
        """The models of this family ``train all`` trains on ``dataset`` (one, by default)."""
        return [cls(config)]

    # -- training --

    def fit(self, dataset, **options) -> "TradeModel":
        """Train on ``dataset``; ``options`` are the trainer's (progress, checkpoint_dir, resume)."""
        from trademl.models.store import ModelStore

        self._staging = tempfile.TemporaryDirectory(prefix=f"trademl-{self.kind}-")
        root = Path(self._staging.name)
        self.report = self._train(dataset, root, **options)
        self.stored = ModelStore(root).load(self.kind)
        self._runtime = None
        return self

    @abstractmethod
    def _train(self, dataset, staging_root: Path, **options):
        """Train on ``dataset`` and store the model in a ModelStore at ``staging_root``; return
        the trainer's own result (what its table prints)."""

    # -- predicting --

    def predict(self, inputs) -> Votes:
        """Votes of the model on a ``Dataset`` (every bar, flat account) or on ``ModelInputs``."""
        if not isinstance(inputs, ModelInputs):
            inputs = ModelInputs.of_dataset(inputs)
        return self._opened().predict(inputs)

    def _opened(self) -> Runtime:
        if self.stored is None:
            raise TradeMLError(f"{type(self).__name__} is not trained: call fit(dataset) or load(stored) first",
                               where=self.kind)
        if self._runtime is None:
            self._runtime = self.runtime.load(self.stored)
        return self._runtime

    # -- storing --

    @property
    def metrics(self) -> dict:
        return dict((self.stored.manifest.get("metrics") if self.stored is not None else None) or {})

    @property
    def validation_skill(self) -> float | None:
        return validation_skill(self.metrics)

    def save(self, store=None):
        """Copy the trained model into ``store`` (a ModelStore or a folder; None: [paths] model_root)."""
        from trademl.models.store import ModelStore

        if self.stored is None:
            raise TradeMLError("nothing to save: call fit(dataset) first", where=self.kind)
        if store is None:
            store = self.config.paths.model_root
        store = store if isinstance(store, ModelStore) else ModelStore(store)
        staged = self.stored.path
        self.stored = store.adopt(self.stored)
        self._runtime = None
        if hasattr(self.report, "stored"):  # the trainer's report names where the model is
            self.report.stored = self.stored
        if isinstance(getattr(self.report, "written", None), list):
            self.report.written = [self.stored.path if Path(p) == staged else p for p in self.report.written]
        return self.stored

    def print_report(self, console) -> None:
        """The trainer's own table (what `trademl train` prints); here, where the model is."""
        console.print(f"stored {self.stored.kind} {self.stored.version} in {self.stored.path.parent.parent}")

    @classmethod
    def load(cls, stored, config=None) -> "TradeModel":
        """A predict-only model from a StoredModel (or ``(store or root, kind)``)."""
        from trademl.models.store import ModelStore, StoredModel

        if not isinstance(stored, StoredModel):
            root, kind = stored
            stored = (root if isinstance(root, ModelStore) else ModelStore(root)).load(kind)
        model = cls.__new__(cls)
        TradeModel.__init__(model, config)
        model.stored = stored
        return model

    def __del__(self):
        staging = getattr(self, "_staging", None)
        if staging is not None:
            staging.cleanup()


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Registered:
    runtimes: tuple[type[Runtime], ...]
    models: dict[str, type[TradeModel]]  # section name -> training class


_REGISTRY: Registered | None = None


def registry() -> Registered:
    """Every kind in ``trademl/models/kinds/`` (imported once; they are light, no torch)."""
    global _REGISTRY
    if _REGISTRY is None:
        from trademl.models import kinds

        for info in pkgutil.iter_modules(kinds.__path__):
            importlib.import_module(f"{kinds.__name__}.{info.name}")
        runtimes = sorted(_all_subclasses(Runtime), key=lambda c: c.order)
        # In the runtimes' order (lgbm, lstm, ppo), whatever order the modules were imported in.
        trainers = sorted((c for c in _all_subclasses(TradeModel) if "section" in c.__dict__), key=lambda c: c.runtime.order)
        models = {c.section: c for c in trainers}
        _REGISTRY = Registered(tuple(runtimes), models)
    return _REGISTRY


def _all_subclasses(base) -> list:
    out = []
    for sub in base.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def runtime_for(kind: str) -> type[Runtime]:
    for rt in registry().runtimes:
        if rt.serves(kind):
            return rt
    raise ModelStoreError(f"no registered runtime serves kind {kind!r}", where="model store",
                          hint=f"known kinds: {', '.join(known_kinds())}")


def known_kinds() -> list[str]:
    """The kinds trained by default, in response order (lgb_5m, lgb_30m, lstm, ppo)."""
    return [k for m in sorted(registry().models.values(), key=lambda c: c.runtime.order) for k in m.default_kinds]


def kind_order(kind: str) -> tuple[int, str]:
    """Sort key of a stored kind: its runtime's order, then its place among the defaults."""
    known = known_kinds()
    try:
        return runtime_for(kind).order, f"{known.index(kind):04d}" if kind in known else kind
    except ModelStoreError:
        return 1000, kind


def open_runtime(stored) -> Runtime:
    """The serving runtime of a StoredModel, by its kind."""
    return runtime_for(stored.kind).load(stored)
