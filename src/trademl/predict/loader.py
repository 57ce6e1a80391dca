"""The models a predictor serves: one consistent set of runtimes, loaded from the model store,
replaced whole on hot reload.

Every registered kind (``trademl.models.base.registry``) that has a version in the store is
opened with its runtime; a kind that is missing, fails its checks or reads another feature
schema than the others is left out and named in ``load_errors``, and the rest still serve.

Hot reload: at most once per ``reload_interval_s`` the store's version lists are read (a
directory listing per kind, no hashing); when a newer version appeared, it is loaded and
verified beside the current set in a background thread and the new set is swapped in with one
reference assignment, so a request in flight finishes on the set it started with and none is
dropped. A kind whose new version fails to load keeps serving its previous version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from trademl.errors import TradeMLError
from trademl.models.base import kind_order, known_kinds, open_runtime, registry
from trademl.predict.decision import choose_weights

log = logging.getLogger("trademl.predict")


@dataclass(frozen=True)
class LoadedModels:
    """One consistent set of runtimes; replaced whole, never edited."""

    runtimes: dict  # kind -> Runtime, in response order
    versions: dict[str, str]
    seen: dict[str, str | None]  # the newest version on disk per kind when this set was made
    load_errors: dict[str, str]
    feature_names: list[str]
    weights: dict[str, float]
    weight_warning: str | None
    symbol: str | None
    metrics: dict[str, dict]
    symbols: dict[str, str | None]

    @property
    def history(self) -> int:
        """Feature rows the loaded models read per prediction, at most (1 without a sequence model)."""
        return max((rt.history for rt in self.runtimes.values()), default=1)

    def bars_needed(self) -> int | None:
        """Raw bars a `bars` request needs for every loaded model to run (feature warm-up + window)."""
        from trademl.data.features import FEATURES, required_history

        registered = [n for n in self.feature_names if n in FEATURES]  # extra columns need no history
        if not registered:
            return None
        return int(required_history(registered) + self.history - 1)


def _model_symbol(stored) -> str | None:
    m = stored.manifest
    return (m.get("model") or {}).get("symbol") or (m.get("config") or {}).get("symbol")


class ModelLoader:
    """Loads ``LoadedModels`` from a store and keeps them fresh (see the module doc)."""

    def __init__(self, store, config, reload_interval_s: float):
        self.store = store
        self.config = config
        self.reload_interval_s = reload_interval_s
        self._reload_lock = threading.Lock()
        self._checked = time.monotonic()
        self.models = self._load(self._newest_versions(), previous=None)

    def kinds(self) -> list[str]:
        """The kinds to serve: every default kind, and any other registered kind in the store."""
        runtimes = registry().runtimes
        in_store = [k for k in self.store.kinds() if any(rt.serves(k) for rt in runtimes)]
        return sorted(set(known_kinds()) | set(in_store), key=kind_order)

    def _newest_versions(self) -> dict[str, str | None]:
        out = {}
        for kind in self.kinds():
            versions = self.store.versions(kind)
            out[kind] = versions[-1] if versions else None
        return out

    def _load(self, newest: dict[str, str | None], previous: LoadedModels | None) -> LoadedModels:
        runtimes, versions, metrics, symbols, errors = {}, {}, {}, {}, {}

        def keep_previous(kind):
            runtimes[kind], versions[kind] = previous.runtimes[kind], previous.versions[kind]
            metrics[kind], symbols[kind] = previous.metrics.get(kind, {}), previous.symbols.get(kind)

        for kind, version in newest.items():
            had = previous is not None and kind in previous.runtimes
            if had and previous.versions[kind] == version:
                keep_previous(kind)  # unchanged: no re-hashing, no new session
                continue
            if version is None:
                errors[kind] = f"no trained {kind} model in {self.store.root}"
                continue
            try:
                stored = self.store.load(kind, version)
                runtimes[kind], versions[kind] = open_runtime(stored), version
                metrics[kind], symbols[kind] = stored.manifest.get("metrics") or {}, _model_symbol(stored)
            except (TradeMLError, ImportError, OSError, KeyError, ValueError) as e:
                errors[kind] = f"{kind} {version} could not be loaded: {e}"
                log.warning("%s", errors[kind])
                if had:  # keep serving the model we have rather than none
                    keep_previous(kind)
        names = _common_schema(runtimes, versions, errors)
        metrics = {k: metrics[k] for k in runtimes}
        weights, weight_warning = choose_weights(self.config.ensemble.weights, metrics, newest)
        symbol = next((symbols[k] for k in runtimes if symbols.get(k)), None)
        return LoadedModels(runtimes, versions, dict(newest), errors, names, weights, weight_warning, symbol,
                            metrics, {k: symbols.get(k) for k in runtimes})

    def maybe_reload(self, force: bool = False, wait: bool = False) -> bool:
        """Swap in newer versions if any appeared (see the module doc). ``wait`` loads in this
        thread instead of a background one. Returns True when a reload was started (or done)."""
        now = time.monotonic()
        if not force and now - self._checked < self.reload_interval_s:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False  # a reload is running: keep serving the current set
        try:
            self._checked = now
            newest = self._newest_versions()
            changed = newest != self.models.seen
        except BaseException:
            self._reload_lock.release()
            raise
        if not changed:
            self._reload_lock.release()
            return False
        if wait:
            self._swap_in(newest)
        else:  # the lock travels with the work: the loader thread releases it
            threading.Thread(target=self._swap_in, args=(newest,), name="trademl-reload", daemon=True).start()
        return True

    def _swap_in(self, newest: dict[str, str | None]) -> None:
        """Load what changed beside the current set, then replace it whole. Holds the reload lock."""
        try:
            fresh = self._load(newest, previous=self.models)
            if fresh.versions != self.models.versions:
                log.info("models reloaded: %s", fresh.versions)
            self.models = fresh  # one assignment: requests see the old set or the new, never a mix
        except Exception:  # a reload must never take the serving set down with it
            log.exception("reloading models failed; serving the current set")
        finally:
            self._reload_lock.release()


def _common_schema(runtimes: dict, versions: dict, errors: dict) -> list[str]:
    """All models must read the same ordered features; one that does not is dropped, named."""
    names, first = None, None
    for kind in list(runtimes):
        rt = runtimes[kind]
        if names is None:
            names, first = list(rt.feature_names), kind
        elif list(rt.feature_names) != names:
            errors[kind] = f"{kind} {versions[kind]} reads another feature schema than {first}; retrain it on the same dataset"
            del runtimes[kind], versions[kind]
    return names or []
