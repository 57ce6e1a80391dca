"""What one trial of each kind trains, and the number it is judged by.

Every objective trains on the study's dataset with the trial's settings and stores nothing
in the model store: a trial is a measurement, not a model to serve. Walk-forward folds are
reported one by one (``trial.report``), so Optuna's median pruner stops a trial whose first
folds are already worse than the median trial's at the same fold.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

import numpy as np

from trademl.config import Config


@dataclass(frozen=True)
class Objective:
    """A kind's objective: its name, whether higher is better, and the settings that fix the
    budget of one trial (not searched)."""

    kind: str
    metric: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


OBJECTIVES = {
    "lgbm": Objective("lgbm", "walk-forward log-loss of the raw test-block probabilities", maximize=False),
    "lstm": Objective("lstm", "mean best validation loss of the walk-forward folds", maximize=False),
    "ppo": Objective("ppo", "held-out Sharpe net of costs", maximize=True),
}


def _pruned():
    import optuna

    return optuna.TrialPruned()


def lgbm_value(trial, dataset, cfg: Config, horizon: int) -> float:
    """Mean log-loss of the folds' raw probabilities on their test blocks; fold k's running mean
    is reported at step k."""
    from sklearn.metrics import log_loss

    from trademl.models import lgbm

    rows = lgbm.win_rows(dataset, horizon)
    lgbm.check_trainable(rows, cfg.lgbm.min_rows, lgbm.kind_for(horizon))
    losses = []

    def fold_done(result) -> None:
        y = rows.y[result.test_rows]
        losses.append(log_loss(y, np.clip(result.raw, 1e-7, 1 - 1e-7), labels=[0, 1]))
        trial.report(float(np.mean(losses)), result.number)
        if trial.should_prune():
            raise _pruned()

    names = list(dataset.feature_names) + [lgbm.SIDE_COLUMN]
    lgbm.walk_forward(rows, horizon, cfg.lgbm, names, on_fold=fold_done)
    return float(np.mean(losses))


def lstm_value(trial, dataset, cfg: Config) -> float:
    """Mean best validation loss of the walk-forward folds (the final fit's is not a fold); each
    fold's best loss is reported when its next fold starts, the last at the end."""
    from trademl.models.lstm import train_lstm

    best: dict[str, float] = {}

    def epoch_end(stage: str, record: dict) -> None:
        if stage == "final":
            return
        best[stage] = min(best.get(stage, math.inf), float(record["val_loss"]))
        trial.report(float(np.mean(list(best.values()))), len(best) - 1)
        if trial.should_prune():
            raise _pruned()

    with tempfile.TemporaryDirectory(prefix="trademl-tune-") as tmp:
        result = train_lstm(dataset, cfg, store_root=tmp, checkpoint_dir=f"{tmp}/ckpt", on_epoch_end=epoch_end)
    folds = [f["val_loss"] for f in result.metrics["folds"]]
    return float(np.mean(folds)) if folds else float(result.metrics["final"]["val_loss"])


def ppo_value(trial, dataset, cfg: Config) -> float:
    """Held-out Sharpe net of costs of the trained agent (nan, a failed trial, when the
    held-out span has too few sessions for one)."""
    from trademl.models.kinds.ppo import training_bars
    from trademl.models.ppo.train import train_ppo

    with tempfile.TemporaryDirectory(prefix="trademl-tune-") as tmp:
        run = cfg.model_copy(deep=True)
        run.paths.model_root = f"{tmp}/models"
        run.ppo.checkpoint_dir = f"{tmp}/ckpt"
        result = train_ppo(training_bars(dataset), run, features=dataset.X, schema=dataset.manifest["feature_schema"],
                           symbol=dataset.symbol, store=False)
    sharpe = result.metrics["held_out_sharpe"]["sharpe"]
    return float("nan") if sharpe is None else float(sharpe)


def trial_value(kind: str, trial, dataset, cfg: Config, horizon: int) -> float:
    if kind == "lgbm":
        return lgbm_value(trial, dataset, cfg, horizon)
    if kind == "lstm":
        return lstm_value(trial, dataset, cfg)
    return ppo_value(trial, dataset, cfg)
