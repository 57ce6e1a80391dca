"""Trials on Ray: the driver asks Optuna for settings and tells it the values; the workers train.

Optuna's own storage stays with the driver (a remote node need not reach the SQLite file):
``workers`` trials run at once, each a job on the cluster with the dataset sent once. A
remote trial cannot consult the median pruner mid-run (the other trials' folds are in the
driver's storage), so on Ray every trial runs to its end; its folds' values are still
reported, after it, for the plots.
"""

from __future__ import annotations

import math
from pathlib import Path

from trademl.config import Config


class _Recording:
    """A trial stand-in for a remote objective: records each fold's value, never prunes."""

    def __init__(self):
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((int(step), float(value)))

    def should_prune(self) -> bool:
        return False


def remote_trial(kind: str, params: dict, horizon: int, *, dataset, config: Config) -> tuple[float, list]:
    """One trial's value (and its folds' reports) with ``params`` set in the kind's section."""
    from trademl.tune.objectives import trial_value
    from trademl.tune.spaces import with_params

    trial = _Recording()
    return trial_value(kind, trial, dataset, with_params(config, kind, params), horizon), trial.reports


def optimize_on_ray(storage_path: Path, name: str, kind: str, dataset, cfg: Config, horizon: int, n_trials: int,
                    timeout: float | None, workers: int, address: str | None) -> None:
    """Run ``n_trials`` more trials of study ``name``, ``workers`` at a time on Ray."""
    import time

    import optuna

    from trademl.parallel import ray_cluster, threads_per_worker, with_threads
    from trademl.tune.spaces import suggest
    from trademl.tune.study import storage_url

    study = optuna.load_study(study_name=name, storage=storage_url(storage_path))
    job_cfg = with_threads(cfg, threads_per_worker(workers, address))
    space = getattr(cfg.tune, kind)
    deadline = None if timeout is None else time.monotonic() + timeout
    with ray_cluster(workers, address) as ray:
        job = ray.remote(num_cpus=1, max_retries=0)(remote_trial)
        data_ref, cfg_ref = ray.put(dataset), ray.put(job_cfg)
        running, asked = {}, 0
        while asked < n_trials or running:
            while asked < n_trials and len(running) < workers and (deadline is None or time.monotonic() < deadline):
                trial = study.ask()
                params = suggest(trial, space)
                running[job.remote(kind, params, horizon, dataset=data_ref, config=cfg_ref)] = trial
                asked += 1
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            trial = running.pop(done[0])
            _tell(study, trial, ray, done[0])


def _tell(study, trial, ray, ref) -> None:
    """The remote trial's value (nan or an error: a failed trial) told to the study."""
    import optuna

    try:
        value, reports = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the trial's own error, raised here as itself
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise e.as_instanceof_cause() from None
    for step, v in reports:
        trial.report(v, step)
    if value is None or not math.isfinite(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)
