"""Features that carry intraday information (issue 14): higher timeframes, session structure,
the volatility regime and another instrument's bars as context.

Hand-computed values on made bars (a spring and an autumn DST day included), the look-ahead
test with the context file changed too, the serving path's exactness for features that read
yesterday, the chunked build, and a planted cross-market lead that LightGBM finds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.config import Config
from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.dataset import build_dataset, dataset_from_bars, load_dataset
from trademl.data.features import FEATURES, compute_features, feature_row_from_bars, required_history
from trademl.data.features.registry import FEATURE_GROUPS, select_features
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError

INTRADAY = list(FEATURE_GROUPS["intraday"])
CONTEXT = list(FEATURE_GROUPS["context"])
TICK = 0.25


def chicago_bars(days: list[str], *, seed: int = 0, start_price: float = 5000.0, symbol: str = "ES") -> pd.DataFrame:
    """One-minute bars on CME hours of the given trading days (17:00 Chicago the evening before
    to 16:00, with the daily halt), a random walk on the tick grid."""
    stamps = []
    for day in days:
        d = pd.Timestamp(day)
        local = pd.date_range(d - pd.Timedelta(hours=7), d + pd.Timedelta(hours=16), freq="min", inclusive="left")
        stamps.append(local.tz_localize("America/Chicago", ambiguous="infer", nonexistent="shift_forward"))
    index = stamps[0].append(stamps[1:]).tz_convert("UTC").drop_duplicates()
    index.name = "timestamp"
    rng = np.random.default_rng(seed)
    close = start_price + TICK * np.cumsum(rng.integers(-3, 4, len(index)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) + TICK * rng.integers(0, 3, len(index))
    low = np.minimum(open_, close) - TICK * rng.integers(0, 3, len(index))
    bars = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1, 500, len(index)).astype(float)}, index=index)
    bars.attrs["symbol"] = symbol
    return bars


def _local(bars: pd.DataFrame) -> pd.DatetimeIndex:
    return bars.index.tz_convert("America/Chicago")


def _at(bars: pd.DataFrame, local_stamp: str) -> int:
    """Row of the bar opened at this Chicago wall time."""
    hits = np.flatnonzero(_local(bars).tz_localize(None) == pd.Timestamp(local_stamp))
    assert len(hits) == 1, local_stamp
    return int(hits[0])


def _between(bars: pd.DataFrame, start: str, end: str) -> np.ndarray:
    """Rows opened in [start, end) Chicago wall time."""
    wall = _local(bars).tz_localize(None)
    return np.flatnonzero((wall >= pd.Timestamp(start)) & (wall < pd.Timestamp(end)))


@pytest.mark.parametrize("days", [["2024-03-08", "2024-03-11"], ["2024-11-01", "2024-11-04"]],
                         ids=["spring DST weekend", "autumn DST weekend"])
def test_session_levels_by_hand_across_a_dst_change(days):
    """The Monday after a DST change (spring gap, autumn repeated hour inside the Sunday evening):
    the open is 08:30 Chicago in either offset; the opening range, the overnight, and Friday's
    high, low, close and settlement are what the bars say."""
    bars = chicago_bars(days, seed=1)
    f = compute_features(bars, names=INTRADAY)
    friday, monday = days
    fri_day = _between(bars, f"{pd.Timestamp(friday) - pd.Timedelta(hours=7)}", f"{friday} 16:00")
    fri_settle = bars["close"].iloc[_at(bars, f"{friday} 14:59")]

    open_row = _at(bars, f"{monday} 08:30")
    assert f["minutes_since_open"].iloc[open_row] == 0.0
    assert f["minutes_since_open"].iloc[_at(bars, f"{monday} 07:00")] == -90.0
    # 08:30 Chicago is 13:30 UTC in daylight time and 14:30 UTC in standard time
    assert bars.index[open_row].hour in (13, 14)

    c = bars["close"].to_numpy()
    t = _at(bars, f"{monday} 10:00")
    ticks = lambda level: (c[t] - level) / TICK  # noqa: E731
    or_rows = _between(bars, f"{monday} 08:30", f"{monday} 09:00")
    on_rows = _between(bars, f"{pd.Timestamp(monday) - pd.Timedelta(hours=7)}", f"{monday} 08:30")
    expected = {
        "or_high_dist_ticks": ticks(bars["high"].iloc[or_rows].max()),
        "or_low_dist_ticks": ticks(bars["low"].iloc[or_rows].min()),
        "overnight_high_dist_ticks": ticks(bars["high"].iloc[on_rows].max()),
        "overnight_low_dist_ticks": ticks(bars["low"].iloc[on_rows].min()),
        "prev_high_dist_ticks": ticks(bars["high"].iloc[fri_day].max()),
        "prev_low_dist_ticks": ticks(bars["low"].iloc[fri_day].min()),
        "prev_close_dist_ticks": ticks(bars["close"].iloc[fri_day[-1]]),
        "prev_settle_dist_ticks": ticks(fri_settle),
    }
    for name, value in expected.items():
        assert f[name].iloc[t] == pytest.approx(value, abs=1e-3), name
    # before today's opening range is complete, yesterday's is in force; from the 09:00 bar, today's
    fri_or = _between(bars, f"{friday} 08:30", f"{friday} 09:00")
    at_859 = _at(bars, f"{monday} 08:59")
    assert f["or_high_dist_ticks"].iloc[at_859] == pytest.approx((c[at_859] - bars["high"].iloc[fri_or].max()) / TICK)
    at_900 = _at(bars, f"{monday} 09:00")
    assert f["or_high_dist_ticks"].iloc[at_900] == pytest.approx((c[at_900] - bars["high"].iloc[or_rows].max()) / TICK)
    # during the overnight the level is the running one, so far
    mid = on_rows[len(on_rows) // 2]
    assert f["overnight_high_dist_ticks"].iloc[mid] == pytest.approx(
        (c[mid] - bars["high"].iloc[on_rows[0]: mid + 1].max()) / TICK)
    # the first day has no day before it
    assert np.isnan(f["prev_close_dist_ticks"].iloc[fri_day]).all()


def test_a_hole_or_a_roll_hides_the_previous_day():
    """Yesterday's levels are read across the daily halt and a weekend, never across a roll or a
    hole of more than four days."""
    hole = chicago_bars(["2024-03-04", "2024-03-13"], seed=2)
    f = compute_features(hole, names=["prev_close_dist_ticks"])
    assert np.isnan(f["prev_close_dist_ticks"]).all()
    rolled = chicago_bars(["2024-03-07", "2024-03-08"], seed=2)
    rolled["contract"] = np.where(rolled.index < rolled.index[len(rolled) // 2 + 400], "ESH4", "ESM4")
    f = compute_features(rolled, names=["prev_close_dist_ticks"])
    later = f["prev_close_dist_ticks"].to_numpy()[-100:]
    assert np.isnan(later).all()


def test_higher_timeframe_bar_is_used_only_after_it_closes():
    """tf_ret_5 at every bar is the open-to-close log return of the last 5-minute bar that ended
    before it; the bar of 09:04 (which ends the 09:00 bar) still reads the 08:55 one."""
    bars = chicago_bars(["2024-05-14"], seed=3)
    f = compute_features(bars, names=["tf_ret_5", "tf_range_15", "tf_trend_5"])
    o, h, lo, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    r855, r900 = _between(bars, "2024-05-14 08:55", "2024-05-14 09:00"), _between(bars, "2024-05-14 09:00", "2024-05-14 09:05")
    for row in r900:
        assert f["tf_ret_5"].iloc[row] == pytest.approx(np.log(c[r855[-1]] / o[r855[0]]), rel=1e-5)
    after = _at(bars, "2024-05-14 09:05")
    assert f["tf_ret_5"].iloc[after] == pytest.approx(np.log(c[r900[-1]] / o[r900[0]]), rel=1e-5)
    r_q = _between(bars, "2024-05-14 08:45", "2024-05-14 09:00")
    assert f["tf_range_15"].iloc[after] == pytest.approx(np.log(h[r_q].max() / lo[r_q].min()), rel=1e-5)
    r845 = _between(bars, "2024-05-14 08:45", "2024-05-14 08:50")  # three 5-minute bars before 09:00's
    assert f["tf_trend_5"].iloc[after] == pytest.approx(np.log(c[r900[-1]] / c[r845[-1]]), rel=1e-5)
    # nothing before the first complete 5-minute bar of the segment
    assert np.isnan(f["tf_ret_5"].to_numpy()[:5]).all()


def test_volatility_percentile_reads_only_the_previous_days():
    """A calm day after two calm days sits mid-range; a day 5x as volatile is near 1 once its
    window holds only its own bars; the first two days have no reference."""
    bars = chicago_bars(["2024-04-08", "2024-04-09", "2024-04-10", "2024-04-11"], seed=4)
    day4 = _between(bars, "2024-04-10 17:00", "2024-04-11 16:00")
    step = bars["close"].diff().fillna(0.0).to_numpy().copy()
    step[day4] *= 5
    close = 5000 + np.cumsum(step)
    bars["close"], bars["open"] = close, np.r_[close[0], close[:-1]]
    bars["high"] = np.maximum(bars["open"], bars["close"]) + TICK
    bars["low"] = np.minimum(bars["open"], bars["close"]) - TICK
    pct = compute_features(bars, names=["rvol_pct_60"])["rvol_pct_60"].to_numpy()
    first_two = _between(bars, "2024-04-07 17:00", "2024-04-09 16:00")
    assert np.isnan(pct[first_two]).all()
    day3 = _between(bars, "2024-04-09 17:00", "2024-04-10 16:00")
    assert 0.25 < np.nanmedian(pct[day3]) < 0.75
    assert np.nanmedian(pct[day4[120:]]) > 0.95


def _garbage_after(bars: pd.DataFrame, t_stamp, rng) -> pd.DataFrame:
    """Every bar opened after ``t_stamp`` replaced by another random market (the stamps kept)."""
    out = bars.copy()
    later = out.index > t_stamp
    m = int(later.sum())
    close = bars["close"].iloc[0] * np.exp(np.cumsum(rng.normal(0, 0.01, m))) * rng.uniform(0.5, 2.0)
    out.loc[later, "close"] = close
    out.loc[later, "open"] = close * np.exp(rng.normal(0, 0.002, m))
    out.loc[later, "high"] = np.maximum(out.loc[later, "open"], close) * 1.003
    out.loc[later, "low"] = np.minimum(out.loc[later, "open"], close) * 0.997
    out.loc[later, "volume"] = rng.integers(1, 1000, m).astype(float)
    return out


@pytest.fixture(scope="module")
def es_and_context():
    """The bundled ES bars with a context market on the same stamps (some missing, some shifted)."""
    es = load_bars(bundled_sample_path())
    rng = np.random.default_rng(5)
    keep = rng.random(len(es)) > 0.05  # the context misses 5% of our minutes
    other = es.iloc[keep].copy()
    drift = np.exp(np.cumsum(rng.normal(0, 1e-4, len(other))))  # close to ES: correlated
    for col in ("open", "high", "low", "close"):
        other[col] = other[col].to_numpy() * 3.4 * drift
    other["high"] = other[["open", "high", "low", "close"]].max(axis=1)
    other["low"] = other[["open", "high", "low", "close"]].min(axis=1)
    other = other.drop(columns=[c for c in other.columns if c not in ("open", "high", "low", "close", "volume")])
    other.attrs = {"source": "context"}
    return es, other


def test_no_new_feature_looks_ahead_not_even_through_the_context(es_and_context):
    """Garbage after t in our bars, in the context's, or both: nothing at or before t moves."""
    es, other = es_and_context
    names = INTRADAY + CONTEXT
    full = compute_features(es, names=names, context=other)
    rng = np.random.default_rng(6)
    for t in list(rng.integers(3000, len(es) - 100, 4)) + [len(es) // 2]:
        stamp = es.index[t]
        for ours, theirs in ((True, False), (False, True), (True, True)):
            a = _garbage_after(es, stamp, rng) if ours else es
            b = _garbage_after(other, stamp, rng) if theirs else other
            changed = compute_features(a, names=names, context=b)
            for col in names:
                x, y = changed[col].to_numpy()[: t + 1], full[col].to_numpy()[: t + 1]
                same = (x == y) | (np.isnan(x) & np.isnan(y))
                assert same.all(), f"{col} moved at {es.index[np.flatnonzero(~same)[0]]} by a change after {stamp}"
        truncated = compute_features(es.iloc[: t + 1], names=names, context=other[other.index <= stamp])
        np.testing.assert_array_equal(truncated.to_numpy(), full.iloc[: t + 1].to_numpy())


def test_context_is_joined_as_of_each_bar(es_and_context):
    """ctx_ret_1 is the context's log close change between our bars, its value at or before our
    stamp; a context bar more than max_gap_minutes old is missing."""
    es, other = es_and_context
    f = compute_features(es, names=["ctx_ret_1", "ctx_corr_60", "ctx_beta_60"], context=other)
    asof = other["close"].reindex(es.index, method="ffill")
    expected = np.log(asof).diff().to_numpy()
    got = f["ctx_ret_1"].to_numpy()
    ok = np.isfinite(got)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-4, atol=1e-7)
    corr = f["ctx_corr_60"].to_numpy()
    assert np.nanmin(corr) >= -1 and np.nanmax(corr) <= 1 and np.nanmean(corr) > 0.5  # one market, rescaled
    stale = other[other.index < es.index[len(es) // 2]]
    late = compute_features(es, names=["ctx_ret_1"], context=stale)["ctx_ret_1"].to_numpy()
    assert np.isnan(late[len(es) // 2 + 20:]).all()


def test_serving_tail_gives_the_batch_value_of_features_that_read_yesterday():
    """feature_row_from_bars keeps required_history bars: the session levels, the regime and the
    higher timeframes of the last bar equal the whole history's, also after a weekend."""
    bars = chicago_bars(["2024-06-03", "2024-06-04", "2024-06-05", "2024-06-06", "2024-06-07", "2024-06-10"], seed=7)
    full = compute_features(bars, names=INTRADAY)
    assert required_history(INTRADAY) < len(bars) - 2000
    for local in ("2024-06-06 10:15", "2024-06-10 08:59", "2024-06-09 18:30", "2024-06-10 15:30"):
        t = _at(bars, local)
        row = feature_row_from_bars(bars.iloc[: t + 1], names=INTRADAY)
        np.testing.assert_allclose(row.to_numpy()[0], full.iloc[t].to_numpy(), rtol=1e-6, equal_nan=True,
                                   err_msg=local)
        young = local.endswith("18:30")  # 90 minutes into a session: no four complete hours yet
        finite = dict(zip(INTRADAY, np.isfinite(row.to_numpy()[0])))
        assert all(ok or (young and name == "tf_trend_60") for name, ok in finite.items()), local


def test_chunked_build_equals_the_in_memory_dataset(tmp_path):
    """A build in chunks of 2,000 bars hands each chunk the bars before it: yesterday's levels
    and the regime come out as in one pass."""
    bars = chicago_bars(["2024-06-03", "2024-06-04", "2024-06-05", "2024-06-06"], seed=8)
    path = tmp_path / "es.csv"
    bars.reset_index().to_csv(path, index=False)
    cfg = Config()
    cfg.features.include = ["default", "intraday"]
    cfg.data.chunk_rows = 2000
    built = load_dataset(build_dataset(path, tmp_path / "ds", symbol="ES", config=cfg).path)
    whole = dataset_from_bars(load_bars(path, symbol="ES"), cfg, "ES")
    assert set(INTRADAY) <= set(built.feature_names)
    for name in INTRADAY:
        np.testing.assert_allclose(built.frame[name].to_numpy(), whole.frame[name].to_numpy(), rtol=1e-6,
                                   equal_nan=True, err_msg=name)


def test_groups_and_clear_errors():
    assert set(select_features(["intraday"])) == set(INTRADAY)
    assert set(select_features(["default", "context"])) > set(CONTEXT)
    assert all(FEATURES[n].needs_context for n in CONTEXT) and len(CONTEXT) == 7
    bars = synthetic_bars(500, seed=1)
    with pytest.raises(DataError, match="another instrument") as e:
        compute_features(bars, names=["rsi", "ctx_ret_1"])
    assert "--context" in e.value.hint


def lead_market(n: int, *, lead: bool, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A context market and ours: with ``lead`` our one-bar return at t+1 loads 0.6 on the context's
    standardised return at t (the context leads by one bar), else ours is independent of it."""
    context = synthetic_bars(n, seed=seed, symbol="ES", start_price=5000.0)
    rng = np.random.default_rng(seed + 1)
    theirs = np.log(context["close"]).diff().fillna(0.0).to_numpy()
    sigma = theirs.std()
    shock = rng.standard_normal(n)
    z = shock.copy()
    if lead:
        z[1:] = 0.6 * theirs[:-1] / sigma + 0.8 * shock[1:]
    log_close = np.log(16_000.0) + np.cumsum(sigma * 2.0 * z)
    close = np.round(np.exp(log_close) / TICK) * TICK
    open_ = np.r_[close[0], close[:-1]]
    ours = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + TICK,
                         "low": np.minimum(open_, close) - TICK, "close": close,
                         "volume": context["volume"].to_numpy()}, index=context.index)
    ours.attrs["symbol"] = "NQ"
    return ours, context.drop(columns=["edge"])


@pytest.mark.parametrize("lead", [True, False], ids=["context leads by one bar", "no lead"])
def test_lightgbm_finds_a_planted_cross_market_lead(lead):
    """AUC >= 0.55 out of sample when the context leads ours by one bar; near 0.5 without."""
    from trademl.models import lgbm

    from tests.test_lgbm import small_config

    cfg = small_config()
    cfg.data.extra_feature_columns = []
    ours, context = lead_market(30_000, lead=lead, seed=3)
    dataset = dataset_from_bars(ours, cfg, "NQ", context=context)
    assert dataset.manifest["context"]["bars"] == len(context)
    report = lgbm.train_win_model(dataset, 5, cfg)
    auc = report.metrics["out_of_sample"]["auc"]
    if lead:
        assert auc >= 0.55
        assert report.importance[0]["feature"].startswith("ctx_")
    else:
        assert abs(auc - 0.5) < 0.02


def _bar_dicts(frame: pd.DataFrame) -> list[dict]:
    return [{"timestamp": t.isoformat(), "open": r.open, "high": r.high, "low": r.low, "close": r.close,
             "volume": r.volume} for t, r in zip(frame.index, frame.itertuples())]


def test_predictor_computes_the_context_features_from_context_bars(tmp_path):
    """A model built with --context is served from `bars` + `context_bars` exactly as from the
    batch features of that bar; without `context_bars` the request is a clear 4xx-style error."""
    from trademl.models import lgbm
    from trademl.models.store import ModelStore
    from trademl.predict.ensemble import EnsemblePredictor

    from tests.test_lgbm import small_config

    cfg = small_config(n_estimators=40)
    cfg.data.extra_feature_columns = []
    cfg.paths.model_root = str(tmp_path / "models")
    ours, context = lead_market(8000, lead=True, seed=9)
    dataset = dataset_from_bars(ours, cfg, "NQ", context=context)
    lgbm.train_win_model(dataset, 5, cfg, store=ModelStore(cfg.paths.model_root))
    predictor = EnsemblePredictor(cfg.paths.model_root, cfg, record=False)
    t = len(ours) - 7
    window = ours.iloc[t - 400: t + 1]
    answer = predictor.ensemble_predict({"bars": _bar_dicts(window),
                                         "context_bars": _bar_dicts(context[context.index <= ours.index[t]].iloc[-400:])})
    assert "error" not in answer, answer
    row = {n: float(v) for n, v in zip(dataset.feature_names, dataset.X[t])}
    batch = predictor.ensemble_predict({"features": row, "timestamp": ours.index[t].isoformat()})
    assert answer["win_5m_prob"] == pytest.approx(batch["win_5m_prob"], abs=1e-6)
    from trademl.predict.request import RequestError

    with pytest.raises(RequestError, match="context_bars") as refused:
        predictor.ensemble_predict({"bars": _bar_dicts(window)})
    assert refused.value.field == "bars"


def test_a_short_request_is_warned_about_features_that_read_earlier_days():
    """Fewer bars than a cross-day feature's history may give a value (a partial first day) that
    training would not: the request is told how many bars to send."""
    from trademl.predict.request import _short_of_history

    names = ["rsi", "prev_high_dist_ticks", "rvol_pct_60", "tf_ret_5"]
    short = _short_of_history(names, 1500, np.array([50.0, 12.0, np.nan, 0.001]))
    assert short == {"prev_high_dist_ticks": FEATURES["prev_high_dist_ticks"].history}  # NaN is "warming up"
    assert _short_of_history(names, FEATURES["rvol_pct_60"].history, np.ones(4)) == {}


def test_cli_builds_with_a_context_file_and_refuses_it_beside_a_dataset_folder(tmp_path, es_and_context):
    """`data build ES --context OTHER` records the context and adds its features; `train lgbm
    FOLDER --context OTHER` is a clear error (a folder already holds its features)."""
    from typer.testing import CliRunner

    from trademl.cli import app

    es, other = es_and_context
    context_file = tmp_path / "other.csv"
    other.rename_axis("timestamp").reset_index().to_csv(context_file, index=False)
    runner = CliRunner()
    built = runner.invoke(app, ["data", "build", str(bundled_sample_path()), "--context", str(context_file),
                                "-o", str(tmp_path / "ds")])
    assert built.exit_code == 0, built.output
    dataset = load_dataset(tmp_path / "ds")
    assert set(CONTEXT) <= set(dataset.feature_names)
    assert dataset.manifest["context"]["bars"] == len(other) and "other.csv" in dataset.manifest["context"]["source"]
    refused = runner.invoke(app, ["train", "lgbm", str(tmp_path / "ds"), "--context", str(context_file)])
    assert refused.exit_code == 2 and "dataset folder already holds its features" in refused.output
    assert "Traceback" not in refused.output
