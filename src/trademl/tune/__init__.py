"""`trademl tune KIND`: hyperparameter search with Optuna.

- ``spaces``: the search space of each kind, from ``[tune.<kind>]`` in the config.
- ``objectives``: what a trial trains and the number it is judged by (walk-forward log-loss
  for LightGBM, the folds' validation loss for the sequence models, the held-out Sharpe net of
  costs for the RL agent), with the walk-forward folds reported to Optuna's median pruner.
- ``study``: the study in SQLite (a killed study resumes; the trial it was running is tried
  again), the run, the result as JSON, and the config file with the best settings, which
  records the trials spent so the walk-forward backtest deflates its Sharpe by them.
- ``report``: an HTML page of Optuna's plots.
"""

from trademl.tune.study import TuneResult, tune

__all__ = ["TuneResult", "tune"]
