"""The models a predictor serves: one consistent set of runtimes, loaded from the model store,
replaced whole on hot reload.

Every registered kind (``trademl.models.base.registry``) that has a version in the store is
opened with its runtime: its newest version that passes the store's checks and its runtime's
ONNX contract check. A version that fails is named in ``load_errors`` and the next older one is
tried, so a corrupt or tampered newest version falls back to the newest good one instead of
dropping the kind. A kind with no loadable version, or one that reads another feature schema
than the others, is left out and named in ``load_errors``, and the rest still serve.

Hot reload: at most once per ``reload_interval_s`` the store's version lists are read (a
directory listing per kind, no hashing), and the folders of the versions that failed are
stat'ed; when a version appeared or went, or a failed version's folder changed (a copy that
wrote its manifest first and its other files later), the set is loaded again beside the
current one in a background thread and swapped in with one reference assignment, so a request
in flight finishes on the set it started with and none is dropped. A version that failed is
retried only once its folder changed, so an unchanged bad folder is not re-hashed every
interval; a kind whose versions all fail keeps serving the one it has.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from trademl.errors import TradeMLError
from trademl.models.base import kind_order, known_kinds, open_runtime, registry
from trademl.models.stacker import STACKER_KIND, StackerRuntime
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
    listing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # every version on disk per kind, then
    contracts: dict[str, dict | None] = field(default_factory=dict)  # per kind: the spec it was trained with
    stacker: StackerRuntime | None = None  # decides when present (trademl.models.stacker)
    stacker_note: str | None = None  # why the vote decides instead, when it does
    created: dict[str, str | None] = field(default_factory=dict)  # per kind: its manifest's created_at

    @property
    def contract(self) -> dict | None:
        """The contract spec the loaded models were trained with (the first that stored one)."""
        return next((c for c in self.contracts.values() if c), None)

    @property
    def novelty(self):
        """The training inputs' description the novelty score reads (the first model that stored one)."""
        return next((rt.novelty for rt in self.runtimes.values() if getattr(rt, "novelty", None) is not None), None)

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


def _model_contract(stored) -> dict | None:
    """The spec a model was trained with (its manifest's ``contract``): serving prices with it."""
    contract = stored.manifest.get("contract")
    return contract if isinstance(contract, dict) and "root" in contract else None


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
        # (kind, version) -> (the folder's state when it failed, why): retried once the state changes
        self._failed: dict[tuple[str, str], tuple[tuple, str]] = {}
        self.models = self._load(self._listing(), previous=None)

    def kinds(self) -> list[str]:
        """The kinds to serve: every default kind, and any other registered kind in the store."""
        runtimes = registry().runtimes
        in_store = [k for k in self.store.kinds() if any(rt.serves(k) for rt in runtimes)]
        return sorted(set(known_kinds()) | set(in_store), key=kind_order)

    def _listing(self) -> dict[str, tuple[str, ...]]:
        """Every version on disk per kind to serve, oldest first (a directory listing, no hashing)."""
        listing = {kind: tuple(self.store.versions(kind)) for kind in self.kinds()}
        listing[STACKER_KIND] = tuple(self.store.versions(STACKER_KIND))
        return listing

    def _folder_state(self, kind: str, version: str) -> tuple:
        """What changes when anything in the version folder is added, removed, grown or rewritten."""
        folder = self.store.root / kind / version
        state = []
        try:
            for dirpath, dirnames, filenames in os.walk(folder):
                for name in sorted(dirnames + filenames):
                    p = os.path.join(dirpath, name)
                    st = os.lstat(p)
                    state.append((os.path.relpath(p, folder), st.st_size, st.st_mtime_ns))
                dirnames.sort()
        except OSError:
            pass
        return tuple(sorted(state))

    def _reason(self, e: Exception) -> str:
        """Why a version failed, naming the file relative to the store (no absolute path: this
        text reaches responses and /v1/models); the log line has the full path."""
        if not isinstance(e, TradeMLError):
            text = f"{type(e).__name__}: {e}"
        else:
            text = f"{e.where}: {e.message}" if e.where else e.message
            text = f"{text} ({e.hint})" if e.hint else text
        roots = {str(self.store.root.absolute()), str(self.store.root.resolve()), str(self.store.root)}
        for root in sorted(roots, key=len, reverse=True):  # longest first: a root inside another stays whole
            text = text.replace(root.rstrip(os.sep) + os.sep, "")
        return text

    def _failed_changed(self) -> bool:
        return any(self._folder_state(kind, version) != state for (kind, version), (state, _) in self._failed.items())

    def _open_newest(self, kind: str, on_disk: tuple[str, ...], current: tuple | None, opener):
        """(opened, version, stored or None, why older or newer versions failed): the newest version
        of ``kind`` that loads, down from the newest; ``current`` = (version, opened) of the set in
        service, kept as it is when it is still the newest good one, and when nothing newer loads."""
        bad = []
        for version in reversed(on_disk):  # newest first, down to the newest good one
            if current is not None and current[0] == version:
                return current[1], version, None, bad  # unchanged: no re-hashing, no new session
            state = self._folder_state(kind, version)
            known = self._failed.get((kind, version))
            if known is not None and known[0] == state:
                bad.append(known[1])  # failed before and nothing changed since: not re-hashed
                continue
            try:
                stored = self.store.load(kind, version)
                opened = opener(stored)
            except Exception as e:  # one bad folder never takes the reload (or the other kinds) down
                message = f"{kind} {version} could not be loaded: {self._reason(e)}"
                self._failed[(kind, version)] = (state, message)
                log.warning("%s could not be loaded: %s", self.store.root / kind / version, e)
                bad.append(message)
                continue
            self._failed.pop((kind, version), None)
            return opened, version, stored, bad
        if current is not None:  # keep serving the model we have rather than none
            return current[1], current[0], None, bad
        return None, None, None, bad

    def _load(self, listing: dict[str, tuple[str, ...]], previous: LoadedModels | None) -> LoadedModels:
        runtimes, versions, metrics, symbols, errors, contracts, created = {}, {}, {}, {}, {}, {}, {}
        self._failed = {key: v for key, v in self._failed.items() if key[1] in listing.get(key[0], ())}
        for kind, on_disk in listing.items():
            if kind == STACKER_KIND:
                continue
            if not on_disk:
                errors[kind] = f"no trained {kind} model in the store"
                continue
            had = previous is not None and kind in previous.runtimes
            current = (previous.versions[kind], previous.runtimes[kind]) if had else None
            runtime, chosen, stored, bad = self._open_newest(kind, on_disk, current, open_runtime)
            if runtime is not None:
                runtimes[kind], versions[kind] = runtime, chosen
                if stored is None:  # the one in service, kept
                    metrics[kind], symbols[kind] = previous.metrics.get(kind, {}), previous.symbols.get(kind)
                    contracts[kind], created[kind] = previous.contracts.get(kind), previous.created.get(kind)
                else:
                    metrics[kind], symbols[kind] = stored.manifest.get("metrics") or {}, _model_symbol(stored)
                    contracts[kind], created[kind] = _model_contract(stored), stored.manifest.get("created_at")
            if bad:
                errors[kind] = "; ".join(bad) + (f"; serving {kind} {chosen}" if chosen else "")
        names = _common_schema(runtimes, versions, errors)
        metrics = {k: metrics[k] for k in runtimes}
        newest = {kind: (on_disk[-1] if on_disk else None) for kind, on_disk in listing.items() if kind != STACKER_KIND}
        weights, weight_warning = choose_weights(self.config.ensemble.weights, metrics, list(newest))
        symbol = next((symbols[k] for k in runtimes if symbols.get(k)), None)
        stacker, stacker_note = self._load_stacker(listing.get(STACKER_KIND, ()), previous, versions, names)
        return LoadedModels(runtimes, versions, newest, errors, names, weights, weight_warning, symbol,
                            metrics, {k: symbols.get(k) for k in runtimes}, dict(listing),
                            {k: contracts.get(k) for k in runtimes}, stacker, stacker_note,
                            {k: created.get(k) for k in runtimes})

    def _load_stacker(self, on_disk: tuple[str, ...], previous: LoadedModels | None, versions: dict,
                      names: list[str]):
        """(the stacker to decide with or None, why not): only beside the base versions it was fitted on."""
        if self.config.ensemble.method != "stacked":
            return None, None
        if not on_disk:
            return None, ("no stacker in the store (train with `trademl train all`): the models' vote decides and "
                          "its confidence is not a calibrated probability")
        current = (previous.stacker.version, previous.stacker) if previous is not None and previous.stacker else None
        stacker, version, stored, bad = self._open_newest(STACKER_KIND, on_disk, current, StackerRuntime.load)
        if stacker is None:
            return None, "; ".join(bad) + ": the models' vote decides"
        if stored is not None and stored.feature_names != names and names:
            return None, f"the stacker {version} reads another feature schema than the models: the models' vote decides"
        stale = {k: v for k, v in stacker.base_versions.items() if versions.get(k) not in (None, v)}
        if stale:
            served = ", ".join(f"{k} {versions[k]} (fitted on {v})" for k, v in stale.items())
            return None, (f"the stacker {version} was fitted on other versions than those served: {served}; "
                          "retrain with `trademl train all`: the models' vote decides")
        return stacker, None

    def maybe_reload(self, force: bool = False, wait: bool = False) -> bool:
        """Reload if a version appeared or went, or a failed one's folder changed (see the module
        doc). ``wait`` loads in this thread instead of a background one. Returns True when a
        reload was started (or done)."""
        now = time.monotonic()
        if not force and now - self._checked < self.reload_interval_s:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False  # a reload is running: keep serving the current set
        try:
            self._checked = now
            listing = self._listing()
            changed = listing != self.models.listing or self._failed_changed()
        except BaseException:
            self._reload_lock.release()
            raise
        if not changed:
            self._reload_lock.release()
            return False
        if wait:
            self._swap_in(listing)
        else:  # the lock travels with the work: the loader thread releases it
            threading.Thread(target=self._swap_in, args=(listing,), name="trademl-reload", daemon=True).start()
        return True

    def _swap_in(self, listing: dict[str, tuple[str, ...]]) -> None:
        """Load what changed beside the current set, then replace it whole. Holds the reload lock."""
        try:
            fresh = self._load(listing, previous=self.models)
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
            why = f"{kind} {versions[kind]} reads another feature schema than {first}; retrain it on the same dataset"
            errors[kind] = f"{errors[kind]}; {why}" if kind in errors else why
            del runtimes[kind], versions[kind]
    return names or []
