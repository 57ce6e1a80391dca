"""Bars whose volume is all zero (spot FX feeds): the volume features drop out with one
warning, recorded in the schema; training and serving follow the dataset's feature list."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trademl.config import load_config
from trademl.data.dataset import build_dataset, load_dataset
from trademl.data.features import DEFAULT_FEATURES, FEATURES, compute_features
from trademl.data.synthetic import synthetic_bars

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOLUME_FEATURES = [n for n in DEFAULT_FEATURES if FEATURES[n].needs_volume]


def _volume_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "volume" in str(w.message)]


def test_default_features_of_zero_volume_bars_leave_out_the_volume_ones_with_one_warning():
    bars = synthetic_bars(600, seed=4)
    bars["volume"] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = compute_features(bars)
    assert _volume_warnings(caught) == [f"the bars' volume is all zero: leaving out the volume features {VOLUME_FEATURES}"]
    assert len(VOLUME_FEATURES) == 8 and not set(VOLUME_FEATURES) & set(feats.columns)
    schema = feats.attrs["schema"]
    assert schema.names == tuple(n for n in DEFAULT_FEATURES if n not in VOLUME_FEATURES)
    assert schema.left_out == dict.fromkeys(VOLUME_FEATURES, "the bars' volume is all zero")
    assert schema.to_dict()["left_out"] == schema.left_out and type(schema).from_dict(schema.to_dict()) == schema


def test_named_features_are_computed_as_asked_whatever_the_volume():
    """A model's own list (serving, later chunks of a build) always gives the same columns."""
    bars = synthetic_bars(600, seed=4)
    bars["volume"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats = compute_features(bars, names=["close", "volume_z_60"])
    assert list(feats.columns) == ["close", "volume_z_60"] and feats.attrs["schema"].left_out == {}


def test_some_volume_keeps_every_volume_feature():
    bars = synthetic_bars(600, seed=4)
    bars["volume"] = 0.0
    bars.iloc[300, bars.columns.get_loc("volume")] = 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(VOLUME_FEATURES) <= set(compute_features(bars).columns)


@pytest.mark.parametrize("zero", ["all", "first chunk", "later chunks"])
def test_a_chunked_build_has_one_schema_settled_by_its_first_chunk(tmp_path, zero):
    """The first frame built (whole segments from the first chunks) settles the features."""
    bars = synthetic_bars(3_000, seed=5, symbol="NQ")
    first = bars.index < bars.index[1_200]
    bars.loc[{"all": slice(None), "first chunk": first, "later chunks": ~first}[zero], "volume"] = 0.0
    path = tmp_path / "nq_bars.csv"
    bars.drop(columns=[c for c in bars.columns if c not in ("open", "high", "low", "close", "volume")]).to_csv(path)
    cfg = load_config(None, {"data": {"chunk_rows": 1_000}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build_dataset(path, tmp_path / "ds", symbol="NQ", config=cfg)
    ds = load_dataset(result.path)
    left_out = not set(VOLUME_FEATURES) & set(ds.feature_names)
    assert len(_volume_warnings(caught)) == int(left_out)  # one warning, and only when they are left out
    if zero != "first chunk":  # where the first frame built ends depends on the sessions: either is right
        assert left_out == (zero == "all")
    assert ds.X.shape == (len(bars), len(ds.feature_names))


@pytest.mark.skipif(not (SHARED / "6e_1min_2024-01.csv.gz").exists(), reason="shared 6E file not on this machine")
def test_6e_with_zero_volume_builds_with_one_warning_trains_lgbm_and_serves(tmp_path):
    from trademl import EnsemblePredictor, LGBMWinModel

    bars = pd.read_csv(SHARED / "6e_1min_2024-01.csv.gz")
    bars["volume"] = 0
    path = tmp_path / "6e_1min_2024-01_zero_volume.csv.gz"
    bars.to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build_dataset(path, tmp_path / "ds")
    assert len(_volume_warnings(caught)) == 1, _volume_warnings(caught)
    schema = result.manifest["feature_schema"]
    assert result.manifest["symbol"] == "6E" and set(schema["left_out"]) == set(VOLUME_FEATURES)
    ds = load_dataset(result.path)
    assert len(ds.feature_names) == len(DEFAULT_FEATURES) - 8 and "dist_to_poc_ticks" not in ds.feature_names

    model = LGBMWinModel(horizon=5, n_estimators=40, n_folds=2, num_threads=1).fit(ds)
    assert np.isfinite(model.metrics["validation_skill"]["value"])
    assert np.isfinite(model.predict(ds).vote[-100:]).all()
    stored = model.save(tmp_path / "models")
    assert stored.feature_names == ds.feature_names  # the model manifest carries the dataset's list
    # serving reads the names from the model manifest: raw bars with zero volume give the same answer
    predictor = EnsemblePredictor(tmp_path / "models", record=False)
    from_features = predictor.ensemble_predict(ds.snapshot(-1))
    tail = ds.bars().iloc[-300:]
    raw = [{"timestamp": t.isoformat(), "open": r.open, "high": r.high, "low": r.low, "close": r.close, "volume": 0.0}
           for t, r in tail.iterrows()]
    from_bars = predictor.ensemble_predict({"symbol": "6E", "timestamp": tail.index[-1].isoformat(), "bars": raw})
    assert from_features["models_used"] == from_bars["models_used"] == ["lgb_5m"]
    assert from_bars["win_5m_prob"] == pytest.approx(from_features["win_5m_prob"], abs=1e-6)
