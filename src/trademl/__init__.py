"""trademl: machine-learned trading signals for futures minute bars.

The public API, as short as SB3's::

    from trademl import Dataset, LGBMWinModel, LSTMModel, PPOAgent, EnsemblePredictor
    ds = Dataset.from_bars("bars.csv", symbol="NQZ5")        # or a DataFrame; .load(path) / .save(path)
    m = LGBMWinModel(horizon=5, n_estimators=200).fit(ds)    # kwargs override the config section
    votes = m.predict(ds)                                    # every bar; NaN features are fine
    m.save()                                                 # into [paths] model_root
    EnsemblePredictor().ensemble_predict(ds.snapshot(-1))    # the dataset's own last row, no loop

Names are imported on first use, so ``import trademl`` stays cheap and the serving path
never loads pandas, torch or lightgbm because of this file.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "trademl.config",
    "load_config": "trademl.config",
    "Dataset": "trademl.data.dataset",
    "LGBMWinModel": "trademl.models.kinds.lgbm",
    "LSTMModel": "trademl.models.kinds.lstm",
    "PPOAgent": "trademl.models.kinds.ppo",
    "ModelStore": "trademl.models.store",
    "ModelInputs": "trademl.models.base",
    "Votes": "trademl.models.base",
    "EnsemblePredictor": "trademl.predict.ensemble",
    "IncrementalFeatures": "trademl.data.features.incremental",
    "Broker": "trademl.market.broker",
    "ExecutionModel": "trademl.market.execution",
    "run_backtest": "trademl.backtest.engine",
    "walk_forward_backtest": "trademl.backtest.walkforward",
    "train_models": "trademl.models.train_all",
    "retrain_round": "trademl.retrain.loop",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'trademl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
