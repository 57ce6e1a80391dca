"""``[features] include / exclude``: names or groups choose what a new dataset computes; a chosen
feature the bars cannot give is an error naming it; the models train and serve on the subset."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trademl.config import load_config
from trademl.data.dataset import dataset_from_bars
from trademl.data.features import DEFAULT_FEATURES, FEATURES
from trademl.data.features.registry import FEATURE_GROUPS
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError


@pytest.fixture(scope="module")
def bars():
    return synthetic_bars(3_000, seed=1, symbol="NQ")


def _names(bars, **features):
    return dataset_from_bars(bars, load_config(None, {"features": features})).feature_names


def test_groups_and_names_choose_the_features(bars):
    assert _names(bars) == list(DEFAULT_FEATURES)
    assert _names(bars, include=["returns", "calendar"]) == [
        "ret_1", "ret_5", "ret_15", "ret_30", "ret_60", "rvol_15", "rvol_30", "rvol_60",
        "tod_sin", "tod_cos", "dow_sin", "dow_cos"]
    assert _names(bars, include=["rsi", "atr_ticks_14", "tod_sin"]) == ["rsi", "atr_ticks_14", "tod_sin"]
    left = _names(bars, exclude=["volume", "trend"])
    assert set(left) == set(DEFAULT_FEATURES) - set(FEATURE_GROUPS["volume"]) - set(FEATURE_GROUPS["trend"])
    assert not any(FEATURES[n].needs_volume for n in left) and "macd" not in left
    # the groups cover the default set, and the volume group is every feature that reads volume
    assert set(DEFAULT_FEATURES) <= set().union(*FEATURE_GROUPS.values())
    assert set(FEATURE_GROUPS["volume"]) == {n for n, s in FEATURES.items() if s.needs_volume}
    # a non-default registered feature can be chosen by name
    extra = next(n for n in FEATURES if n not in DEFAULT_FEATURES)
    assert _names(bars, include=["rsi", extra]) == [n for n in FEATURES if n in ("rsi", extra)]


@pytest.mark.parametrize("features, message", [
    ({"include": ["rsi", "nope"]}, "'nope' is neither a feature nor a group"),
    ({"exclude": ["Volume"]}, "'Volume' is neither a feature nor a group"),
    ({"include": ["calendar"], "exclude": ["calendar"]}, "leave no feature to compute"),
])
def test_a_bad_choice_is_a_clear_error(bars, features, message):
    with pytest.raises(DataError, match=message) as e:
        _names(bars, **features)
    assert e.value.where == "config [features]"


def test_a_chosen_feature_the_bars_cannot_give_is_named(bars):
    no_volume = bars.drop(columns=["volume"])
    with pytest.raises(DataError, match=r"no volume column: the chosen features \['volume_z_60', 'ofi_15'\]"):
        _names(no_volume, include=["rsi", "volume_z_60", "ofi_15"])
    zero = bars.copy()
    zero["volume"] = 0.0
    with pytest.raises(DataError, match="all-zero volume"):
        _names(zero, include=["volume"])
    # Only excluding: the default rule still leaves the volume features out, with its one warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        left = _names(zero, exclude=["trend"])
    assert not any(FEATURES[n].needs_volume for n in left)
    assert sum("leaving out the volume features" in str(w.message) for w in caught) == 1


def test_models_train_and_serve_on_the_chosen_features(tmp_path, bars):
    from trademl.models.kinds.lgbm import LGBMWinModel
    from trademl.predict.ensemble import EnsemblePredictor

    cfg = load_config(None, {"features": {"include": ["returns", "bands", "calendar"]},
                             "lgbm": {"n_estimators": 30, "n_folds": 2, "num_threads": 1},
                             "paths": {"model_root": str(tmp_path / "models")}})
    ds = dataset_from_bars(synthetic_bars(6_000, seed=2, symbol="NQ"), cfg)
    stored = LGBMWinModel(5, cfg).fit(ds).save()
    assert stored.feature_names == ds.feature_names and "volume_z_60" not in stored.feature_names
    out = EnsemblePredictor(tmp_path / "models", cfg, record=False).ensemble_predict(ds.snapshot(-1))
    assert out["models_used"] == ["lgb_5m"] and np.isfinite(out["win_5m_prob"])
