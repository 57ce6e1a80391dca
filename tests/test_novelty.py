"""Novelty (issue 17): the Dissimilarity Index of a request's features against the training
inputs. Held-out inputs like the training ones are flagged <= 5% of the time, a volatility
regime 5x the training one >= 90%, bars of another instrument >= 90% (by the index, or by a close off
the training instrument's tick grid); the predictor
says so, turns the decision to HOLD (or only warns), and counts it in /metrics."""

from __future__ import annotations

import numpy as np
import pytest

from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.features import compute_features
from trademl.data.synthetic import synthetic_bars
from trademl.errors import ModelStoreError
from trademl.models.novelty import NoveltyReference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _features(bars, symbol="NQ", names=None):
    frame = compute_features(bars, symbol=symbol, names=names)
    return frame.to_numpy(), list(frame.columns)


@pytest.fixture(scope="module")
def synthetic_reference():
    X, names = _features(synthetic_bars(20_000, seed=1))
    return NoveltyReference.fit(X, names), names


def _flagged(ref, X) -> float:
    return float(ref.novel(X).mean())


def test_inputs_like_the_training_ones_are_rarely_flagged(synthetic_reference):
    ref, names = synthetic_reference
    later, _ = _features(synthetic_bars(40_000, seed=1).iloc[20_000:])  # the same market, after training
    other_seed, _ = _features(synthetic_bars(20_000, seed=2, start="2024-06-03"))
    assert _flagged(ref, later[500:]) <= 0.05
    assert _flagged(ref, other_seed[500:]) <= 0.05


def test_a_volatility_regime_five_times_the_training_one_is_flagged(synthetic_reference):
    ref, _ = synthetic_reference
    wild, _ = _features(synthetic_bars(20_000, seed=3, daily_vol=0.06))  # 5x the default 0.012
    assert _flagged(ref, wild[500:]) >= 0.90


def test_another_market_that_behaves_otherwise_is_flagged():
    """An ES model fed bitcoin bars (read in ES ticks): every one flagged; ES's own later span not."""
    es = load_bars(bundled_sample_path())
    X, names = _features(es, "ES")
    cut = int(len(X) * 0.7)
    ref = NoveltyReference.fit(X[:cut], names)
    assert _flagged(ref, X[cut:]) <= 0.05
    btc = load_bars("../shared/data/btcperp_1min_2022-01.csv.gz", symbol="ES")
    assert _flagged(ref, _features(btc, "ES", names)[0]) >= 0.90


@pytest.fixture(scope="module")
def es_reference():
    """A reference of the bundled ES file's first 70%, with ES's tick grid, and the features of the rest."""
    X, names = _features(load_bars(bundled_sample_path()), "ES")
    cut = int(len(X) * 0.7)
    return NoveltyReference.fit(X[:cut], names, tick_size=0.25), names, X[cut:]


def test_another_instrument_is_told_by_its_price_grid(es_reference):
    """SPY bars read as ES, and 6E bars in their own ticks, move like ES in ticks (the index alone
    flags few of them), but their closes are not whole ES ticks: >= 90% flagged; ES's own later
    span stays under 5%."""
    ref, names, later = es_reference
    assert ref.tick_size == 0.25 and not ref.off_grid(later).any() and _flagged(ref, later) <= 0.05
    spy = _features(load_bars("../shared/data/spy_1min_2011_ninjatrader.txt", symbol="ES"), "ES", names)[0]
    euro = _features(load_bars("../shared/data/6e_1min_2024-01.csv.gz", symbol="6E"), "6E", names)[0]
    for other in (spy, euro):
        assert _flagged(ref, other) >= 0.90
    assert (ref.score(euro) > ref.threshold).mean() < 0.5  # what the index alone sees: the grid is what tells


def test_the_grid_check_is_off_when_the_training_prices_are_not_on_the_grid(es_reference):
    ref, names, later = es_reference
    X = later.copy()
    X[:, names.index("close")] *= 1.0001  # a ratio-adjusted series: its prices are no longer whole ticks
    adjusted = NoveltyReference.fit(X, names, tick_size=0.25)
    assert adjusted.tick_size == 0.0 and not adjusted.off_grid(X).any()
    row = later[-1].copy()
    row[names.index("close")] += 0.1
    assert ref.off_grid(row)[0] and ref.novel(row)[0] and ref.describe(row)["off_tick_grid"] is True
    row[names.index("close")] = np.nan  # a request without a close says nothing about the grid
    assert not ref.off_grid(row)[0]
    no_tick = NoveltyReference.fit(later, names)
    assert no_tick.tick_size == 0.0 and not no_tick.off_grid(row + 0.1).any()


def test_missing_features_add_no_distance_and_price_levels_are_ignored(synthetic_reference):
    ref, names = synthetic_reference
    centre = ref.center.copy()
    assert ref.score(np.full(len(names), np.nan))[0] == pytest.approx(ref.score(centre)[0])
    moved = centre.copy()
    moved[names.index("close")] *= 3  # a new price level alone is not a new market
    assert ref.score(moved)[0] == pytest.approx(ref.score(centre)[0])
    absurd = centre.copy()
    absurd[names.index("rsi")] = 1e30
    assert np.isfinite(ref.score(absurd)[0]) and ref.score(absurd)[0] > ref.threshold


def test_a_reference_of_other_features_is_refused(tmp_path, synthetic_reference):
    ref, names = synthetic_reference
    path = tmp_path / "novelty.npz"
    ref.save(path)
    assert NoveltyReference.load(path, len(names)).threshold == pytest.approx(ref.threshold)
    gridded = NoveltyReference.fit(ref.sample.astype(np.float64) + 100.0, names, tick_size=0.25)
    gridded = NoveltyReference(gridded.center, gridded.scale, gridded.weight, gridded.sample, gridded.mean_distance,
                               gridded.threshold, 0.25, names.index("close"))
    gridded.save(path)
    loaded = NoveltyReference.load(path, len(names))
    assert (loaded.tick_size, loaded.price_column) == (0.25, names.index("close"))
    with np.load(path) as f:  # a reference written before the grid check: loads, and checks no grid
        np.savez(path.with_name("old.npz"), **{k: f[k] for k in f.files if k not in ("tick_size", "price_column")})
    assert NoveltyReference.load(path.with_name("old.npz"), len(names)).tick_size == 0.0
    with pytest.raises(ModelStoreError, match="does not fit"):
        NoveltyReference.load(path, len(names) + 1)
    path.write_bytes(b"not an npz")
    with pytest.raises(ModelStoreError, match="unreadable"):
        NoveltyReference.load(path, len(names))


@pytest.mark.parametrize("action", ["hold", "warn"])
def test_the_predictor_scores_every_request_and_holds_when_novel(tmp_path, action):
    from trademl.data.dataset import dataset_from_bars
    from trademl.models import lgbm
    from trademl.models.store import ModelStore
    from trademl.predict.ensemble import EnsemblePredictor

    from tests.test_lgbm import small_config

    cfg = small_config(n_estimators=40)
    cfg.serve.novelty_action = action
    cfg.backtest.confidence_threshold = 0.0  # every vote counts: a BUY/SELL for novelty to turn to HOLD
    dataset = dataset_from_bars(synthetic_bars(12_000, seed=4, edge_ic=0.2), cfg)
    lgbm.train_win_model(dataset, 5, cfg, store=ModelStore(tmp_path))
    predictor = EnsemblePredictor(tmp_path, cfg, record=False)
    row = {n: float(v) for n, v in zip(dataset.feature_names, dataset.X[-50])}
    usual = predictor.ensemble_predict({"features": row})
    assert usual["novelty"]["novel"] is False and usual["novelty"]["score"] < usual["novelty"]["threshold"]
    wild = dict(row, rvol_15=row["rvol_15"] * 25, rvol_30=row["rvol_30"] * 25, rvol_60=row["rvol_60"] * 25,
                bb_width_20=row["bb_width_20"] * 25, atr_ticks_14=row["atr_ticks_14"] * 25,
                bar_range_ticks=row["bar_range_ticks"] * 25, edge=4.0)
    novel = predictor.ensemble_predict({"features": wild})
    assert novel["novelty"]["novel"] is True and novel["novelty"]["off_tick_grid"] is False
    assert any("unlike the training inputs" in w for w in novel["warnings"])
    off_grid = predictor.ensemble_predict({"features": dict(row, close=row["close"] + 0.1)})
    assert off_grid["novelty"]["off_tick_grid"] is True and off_grid["novelty"]["novel"] is True
    assert any("whole number of the training instrument's ticks" in w for w in off_grid["warnings"])
    for out in (novel, off_grid):
        if action == "hold":  # the vote said BUY or SELL; novelty turned it to HOLD
            assert out["ensemble_recommendation"] == "HOLD"
            assert any("turned to HOLD" in w for w in out["warnings"])
        else:
            assert out["ensemble_recommendation"] in ("BUY", "SELL")


def test_metrics_count_novel_inputs(tmp_path):
    from fastapi.testclient import TestClient

    from trademl.data.dataset import dataset_from_bars
    from trademl.models import lgbm
    from trademl.models.store import ModelStore
    from trademl.predict.ensemble import EnsemblePredictor
    from trademl.serve.app import create_app

    from tests.test_lgbm import small_config

    cfg = small_config(n_estimators=30)
    dataset = dataset_from_bars(synthetic_bars(10_000, seed=5, edge_ic=0.2), cfg)
    lgbm.train_win_model(dataset, 5, cfg, store=ModelStore(tmp_path))
    app = create_app(EnsemblePredictor(tmp_path, cfg, record=False))
    row = {n: float(v) for n, v in zip(dataset.feature_names, dataset.X[-20])}
    wild = {k: (v * 40 if k.startswith(("rvol", "atr", "bb_width", "bar_range")) else v) for k, v in row.items()}
    with TestClient(app) as client:
        for features in (row, wild, wild):
            assert client.post("/v1/predict", json={"features": features}).status_code == 200
        text = client.get("/metrics").text
    line = next(l for l in text.splitlines() if l.startswith("trademl_novel_inputs_total"))
    assert float(line.split()[-1]) == 2.0


def test_the_walk_forward_turns_novel_buys_and_sells_to_hold_as_the_predictor_does():
    from trademl.backtest.walkforward import held_when_novel

    action = np.array([1, 2, 0, 1], dtype=np.int8)
    confidence, hold = np.array([0.8, 0.7, 0.6, 0.9]), np.array([0.1, 0.2, 0.6, 0.3])
    novel = np.array([True, False, True, False])
    got_action, got_confidence = held_when_novel(action, confidence, hold, novel)
    np.testing.assert_array_equal(got_action, [0, 2, 0, 1])
    np.testing.assert_allclose(got_confidence, [0.1, 0.7, 0.6, 0.9])
    assert held_when_novel(action, confidence, hold, None)[0] is action
