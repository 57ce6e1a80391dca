"""A tuning study: Optuna's TPE sampler and median pruner over SQLite storage.

The study lives in ``[tune] storage`` under a name (default: the kind), with the dataset it
searches recorded beside it: a later `trademl tune` with the same name and data resumes it
(a trial that a kill interrupted is marked failed and tried again with the same settings),
while other data under the same name is refused rather than mixed in. ``--trials N`` is the
study's total: a resumed study runs only what is missing.

What comes out: the best settings as a config file that lays them over yours (``extends``)
and records ``[tune] trials``, so a walk-forward backtest run with it deflates its Sharpe by
every trial tried; an HTML page of Optuna's plots; and the JSON of ``--json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trademl.config import Config, resolve_config
from trademl.html_page import atomic_write_text
from trademl.errors import TradeMLError
from trademl.tune.objectives import OBJECTIVES, trial_value
from trademl.tune.spaces import KINDS, suggest, with_params

RETRIED = "retry_of"  # user attribute of a trial re-run after a kill: the number of the one it replaces


@dataclass
class TuneResult:
    kind: str
    study: str
    storage: Path
    trials: int  # every trial of the study, whatever its state: each one counts as tried
    completed: int
    pruned: int
    failed: int
    best_params: dict
    best_value: float | None
    metric: str
    backend: str = "local"
    config_path: Path | None = None
    report_path: Path | None = None
    seconds: float = 0.0
    history: list = field(default_factory=list)  # (number, state, value) of every trial

    def to_json(self) -> dict:
        """What ``--json`` writes (the issue's shape, plus where things are)."""
        return {"kind": self.kind, "trials": self.trials, "backend": self.backend,
                "best": {"params": self.best_params, "value": self.best_value},
                "metric": self.metric, "completed": self.completed, "pruned": self.pruned, "failed": self.failed,
                "study": self.study, "storage": str(self.storage),
                "config": str(self.config_path) if self.config_path else None,
                "report": str(self.report_path) if self.report_path else None}


def tune(kind: str, dataset, config: Config | None = None, *, trials: int, timeout: float | None = None,
         workers: int = 1, study_name: str | None = None, horizon: int | None = None, config_file=None,
         report: bool = True, ray_address: str | None = None, say=None) -> TuneResult:
    """Search ``kind``'s ``[tune.<kind>]`` space on ``dataset`` until the study holds ``trials``
    trials (or ``timeout`` seconds pass). ``config_file``: the file ``config`` came from, which
    the written config extends. ``say``: a callable printing one line per finished trial."""
    import optuna

    cfg = resolve_config(config)
    _check_arguments(kind, trials, timeout, workers)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_path = Path(cfg.tune.storage)
    name = study_name or kind
    study = open_study(storage_path, name, kind, dataset, cfg)
    retry_interrupted(study)
    missing = trials - len(counted_trials(study))  # queued retries run first, within these
    h = horizon or cfg.data.horizons[0]
    started = time.perf_counter()
    backend = "local"
    if missing > 0:
        if workers > 1:
            from trademl.tune.parallel import optimize_on_ray

            optimize_on_ray(storage_path, name, kind, dataset, cfg, h, missing, timeout, workers, ray_address)
            backend = "ray"
        else:
            study.optimize(lambda trial: objective(trial, kind, dataset, cfg, h), n_trials=missing, timeout=timeout,
                           callbacks=[_announce(say)] if say else None)
        study = optuna.load_study(study_name=name, storage=storage_url(storage_path))
    result = _result(study, kind, storage_path, backend, time.perf_counter() - started)
    if result.best_value is not None:
        result.config_path = write_best_config(result, cfg, config_file)
    if report:
        from trademl.tune.report import write_report

        result.report_path = write_report(study, result, storage_path.parent / f"{name}.html")
    return result


def objective(trial, kind: str, dataset, cfg: Config, horizon: int) -> float:
    """One trial: the kind's section with the suggested settings, trained and judged."""
    params = suggest(trial, getattr(cfg.tune, kind))
    return trial_value(kind, trial, dataset, with_params(cfg, kind, params), horizon)


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def open_study(storage_path: Path, name: str, kind: str, dataset, cfg: Config):
    """The study ``name`` (created if new) for this kind and dataset; another dataset or kind
    under the same name is an error, not a mix of two searches."""
    import optuna

    try:
        storage_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TradeMLError(f"cannot create the study folder: {e.strerror or e}", where=str(storage_path.parent)) from None
    identity = {"kind": kind, "dataset": _dataset_identity(dataset)}
    objective_ = OBJECTIVES[kind]
    try:
        study = optuna.create_study(study_name=name, storage=storage_url(storage_path), load_if_exists=True,
                                    direction=objective_.direction,
                                    sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    except Exception as e:  # a corrupt or foreign SQLite file: say which, never a traceback
        raise TradeMLError(f"cannot open the study storage: {e}", where=str(storage_path),
                           hint="point [tune] storage at another file, or remove this one") from None
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        start_from_settings_in_force(study, kind, cfg)
    elif stored != identity:
        raise TradeMLError(f"study {name!r} searched other data or another kind ({stored['kind']}, "
                           f"{stored['dataset']['rows']} rows of {stored['dataset']['source']})",
                           where=str(storage_path), hint="give this search its own name: --study NAME")
    return study


def start_from_settings_in_force(study, kind: str, cfg: Config) -> None:
    """A new study's first trial is the settings in force (those inside the space): the search
    can only end at least as good as what it replaces."""
    section = getattr(cfg, kind)
    start = {}
    for name, r in getattr(cfg.tune, kind).items():
        value = getattr(section, name)
        inside = value in r.choices if r.choices is not None else r.low <= value <= r.high
        if inside:
            start[name] = value
    study.enqueue_trial(start, user_attrs={"start": "the settings in force"})


def _dataset_identity(dataset) -> dict:
    m = dataset.manifest
    return {"source": str(m.get("source")), "rows": int(len(dataset.frame)),
            "schema": m.get("feature_schema", {}).get("hash"), "span": m.get("span")}


def retry_interrupted(study) -> list[int]:
    """Trials left RUNNING by a killed run are marked failed, and their settings queued again."""
    import optuna

    retried = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={RETRIED: t.number}, skip_if_exists=False)
        retried.append(t.number)
    return retried


def counted_trials(study) -> list:
    """The trials that ran to an end (complete, pruned or failed), less those a kill interrupted
    and that ran again with the same settings: each search point counts once."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRIED] for t in trials if RETRIED in t.user_attrs}
    return [t for t in trials if t.state in (states.COMPLETE, states.PRUNED, states.FAIL) and t.number not in retried]


def _result(study, kind: str, storage_path: Path, backend: str, seconds: float) -> TuneResult:
    import optuna

    states = optuna.trial.TrialState
    done = counted_trials(study)
    complete = [t for t in done if t.state == states.COMPLETE]
    best = study.best_trial if complete else None
    return TuneResult(
        kind, study.study_name, storage_path, len(done), len(complete),
        sum(t.state == states.PRUNED for t in done), sum(t.state == states.FAIL for t in done),
        dict(best.params) if best else {}, float(best.value) if best else None, OBJECTIVES[kind].metric,
        backend=backend, seconds=seconds,
        history=[(t.number, t.state.name, t.value) for t in done],
    )


def write_best_config(result: TuneResult, cfg: Config, config_file=None) -> Path:
    """``<storage folder>/<study>.toml``: the best settings over ``config_file`` (``extends``),
    and ``[tune] trials`` with this search's trials added, written atomically."""
    path = result.storage.parent / f"{result.study}.toml"
    lines = [f"# trademl tune {result.kind}: the best of {result.trials} trials ({result.metric} "
             f"{result.best_value:.6g}); pass it as --config, or copy the [{result.kind}] values into yours"]
    if config_file is not None:
        lines.append(f"extends = {json.dumps(os.path.relpath(Path(config_file).resolve(), path.parent.resolve()))}")
    lines += ["", f"[{result.kind}]"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in sorted(result.best_params.items())]
    trials = {**cfg.tune.trials, result.kind: result.trials}
    lines += ["", "[tune]", "trials = {" + ", ".join(f"{k} = {n}" for k, n in sorted(trials.items())) + "}", ""]
    atomic_write_text(path, "\n".join(lines))
    return path


def _announce(say):
    def callback(study, trial) -> None:
        value = "-" if trial.value is None else f"{trial.value:.5g}"
        say(f"trial {trial.number}: {trial.state.name.lower()} {value}  {trial.params}")

    return callback


def _check_arguments(kind: str, trials: int, timeout, workers: int) -> None:
    if kind not in KINDS:
        raise TradeMLError(f"unknown kind {kind!r}; tune one of {', '.join(KINDS)}", where="tune")
    if not isinstance(trials, int) or not 1 <= trials <= 10_000:
        raise TradeMLError(f"--trials must be 1..10000, got {trials}", where="tune")
    if timeout is not None and not 0 < timeout <= 30 * 86_400:
        raise TradeMLError(f"--timeout must be a positive number of seconds, got {timeout}", where="tune")
    if not isinstance(workers, int) or not 1 <= workers <= 256:
        raise TradeMLError(f"--workers must be 1..256, got {workers}", where="tune")
