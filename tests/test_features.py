"""Features: causality of every registered feature, segment restarts, hand-checked values,
the volume-profile POC, the schema, and the serving path's one-row computation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.features import (
    DEFAULT_FEATURES,
    FEATURES,
    FeatureSchema,
    compute_features,
    feature_row_from_bars,
    required_history,
)
from trademl.data.features.registry import FEATURE_GROUPS
from trademl.segments import bars_since_start, segment_ids
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError, SchemaError, TradeMLError

# Every feature that reads one instrument (the cross-market ones are tested with their context
# in tests/test_intraday_features.py); those that read earlier segments (yesterday's levels)
# are left out where a test asserts the restart at a segment boundary.
ALL = [n for n, s in FEATURES.items() if not s.needs_context]
PER_SEGMENT = [n for n in ALL if not FEATURES[n].crosses_segments]


@pytest.fixture(scope="module")
def es_bars():
    """Real ES minute bars: gaps between sessions and days, a contract roll, flat minutes."""
    return load_bars(bundled_sample_path())


@pytest.fixture(scope="module")
def syn_bars():
    return synthetic_bars(6000, seed=3, edge_ic=0.1)


def _garbage_after(bars: pd.DataFrame, t: int, rng: np.random.Generator) -> pd.DataFrame:
    """The same stamps, but every bar after t replaced by a different random market."""
    out = bars.copy()
    m = len(bars) - t - 1
    close = bars["close"].iloc[t] * np.exp(np.cumsum(rng.normal(0, 0.01, m))) * rng.uniform(0.5, 2.0)
    open_ = close * np.exp(rng.normal(0, 0.005, m))
    out.iloc[t + 1 :, out.columns.get_loc("open")] = open_
    out.iloc[t + 1 :, out.columns.get_loc("close")] = close
    out.iloc[t + 1 :, out.columns.get_loc("high")] = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, m))
    out.iloc[t + 1 :, out.columns.get_loc("low")] = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, m))
    out.iloc[t + 1 :, out.columns.get_loc("volume")] = rng.integers(0, 100_000, m).astype(float)
    return out


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, what: str):
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        assert same.all(), f"{what}: {col} differs at {a.index[np.flatnonzero(~same)[0]]}"


@pytest.mark.parametrize("data", ["es", "synthetic"])
def test_no_feature_looks_ahead(data, es_bars, syn_bars):
    """For random t, garbage after t (or no bars after t) leaves every value at or before t unchanged."""
    bars = es_bars if data == "es" else syn_bars
    extra = ("edge",) if data == "synthetic" else ()
    full = compute_features(bars, names=ALL, extra_columns=extra)
    rng = np.random.default_rng(11)
    # Random cut points, plus one right after a segment start (the roll, for ES).
    cuts = list(rng.integers(100, len(bars) - 100, 5))
    starts = np.flatnonzero(np.diff(segment_ids(bars)) != 0) + 1
    cuts.append(int(starts[len(starts) // 2]) + 3)
    for t in cuts:
        changed = compute_features(_garbage_after(bars, t, rng), names=ALL, extra_columns=extra)
        assert not np.allclose(changed["close"].iloc[t + 1 :], full["close"].iloc[t + 1 :])
        _assert_same(changed.iloc[: t + 1], full.iloc[: t + 1], f"garbage after row {t}")
        truncated = compute_features(bars.iloc[: t + 1], names=ALL, extra_columns=extra)
        _assert_same(truncated, full.iloc[: t + 1], f"bars cut after row {t}")


def _scaled_close(a: np.ndarray, b: np.ndarray, rtol: float = 2e-5) -> np.ndarray:
    """Equal to float32 precision, with an absolute floor at the feature's own scale."""
    scale = np.nanmax(np.abs(np.r_[a, b, 1e-30]))
    return np.isclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


@pytest.mark.parametrize("data", ["es", "synthetic"])
def test_features_restart_after_a_gap(data, es_bars, syn_bars):
    """Right after a gap (or the ES roll) every feature equals the one computed on the post-gap bars alone."""
    bars = es_bars if data == "es" else syn_bars
    seg = segment_ids(bars)
    full = compute_features(bars, names=PER_SEGMENT)
    for s in np.unique(seg)[1:4]:
        rows = np.flatnonzero(seg == s)
        alone = compute_features(bars.iloc[rows[0] :], names=PER_SEGMENT).iloc[: len(rows)]
        for col in PER_SEGMENT:
            ok = _scaled_close(full[col].to_numpy()[rows], alone[col].to_numpy())
            assert ok.all(), f"segment {s}: {col} differs at {bars.index[rows[np.flatnonzero(~ok)[0]]]}"
        # Warm-up: a window of w bars is NaN for the first bars after the gap, then defined.
        assert np.isnan(full["sma_dist_20"].to_numpy()[rows[:19]]).all()
        assert np.isfinite(full["sma_dist_20"].to_numpy()[rows[19]])


# Hand-checked values against straightforward pandas definitions -------------------------


@pytest.fixture(scope="module")
def one_session():
    """~500 bars of one real ES session (one segment, one trading day)."""
    bars = load_bars(bundled_sample_path())
    seg = segment_ids(bars)
    first = np.flatnonzero(seg == seg[2000])
    out = bars.iloc[first[0] : first[0] + 500]
    assert len(np.unique(segment_ids(out))) == 1 and len(out) == 500
    return out


def _reference(bars: pd.DataFrame) -> dict[str, pd.Series]:
    c, h, low, v = bars["close"], bars["high"], bars["low"], bars["volume"]
    d = c.diff().fillna(0.0)
    gain = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    prev = c.shift(1).fillna(c)
    tr = pd.concat([h, prev], axis=1).max(axis=1) - pd.concat([low, prev], axis=1).min(axis=1)
    atr = tr.ewm(alpha=1 / 14, adjust=False).mean()
    typical = (h + low + c) / 3
    vwap = (typical * v).cumsum() / v.cumsum()
    obv = (np.sign(d) * v).cumsum()
    mid, sd = c.rolling(20).mean(), c.rolling(20).std(ddof=0)
    ema12, ema26 = c.ewm(span=12, adjust=False).mean(), c.ewm(span=26, adjust=False).mean()
    r = np.log(c).diff()
    return {
        "rsi": 100 * gain / (gain + loss),
        "atr_ticks_14": atr / 0.25,
        "vwap_dist_ticks": (c - vwap) / 0.25,
        "obv_slope_20": obv.diff(20) / v.rolling(20).sum(),
        "obv_z_60": (obv - obv.rolling(60).mean()) / obv.rolling(60).std(ddof=0),
        "bb_pctb_20": (c - (mid - 2 * sd)) / (4 * sd),
        "bb_width_20": 4 * sd / mid,
        "ema_dist_20": c / c.ewm(span=20, adjust=False).mean() - 1,
        "sma_dist_50": c / c.rolling(50).mean() - 1,
        "macd_hist": ((ema12 - ema26) - (ema12 - ema26).ewm(span=9, adjust=False).mean()) / c,
        "ret_15": np.log(c / c.shift(15)),
        "rvol_30": np.sqrt((r**2).rolling(30).mean()),
        "volume_z_60": (v - v.rolling(60).mean()) / v.rolling(60).std(ddof=0),
        "clv": ((c - low) - (h - c)) / (h - low).where(h > low),
    }


def test_values_match_pandas_reference(one_session):
    got = compute_features(one_session, names=ALL)
    for name, expected in _reference(one_session).items():
        spec = FEATURES[name]
        exp = expected.to_numpy(dtype=float, copy=True)
        exp[: spec.warmup] = np.nan  # our warm-up; the reference may start earlier
        if name == "clv":
            exp = np.nan_to_num(exp, nan=0.0)  # a bar with no range sits in the middle
        ok = _scaled_close(got[name].to_numpy(dtype=float), exp, rtol=1e-5)
        assert ok.all(), f"{name} differs from the reference at row {np.flatnonzero(~ok)[:3]}"
        assert np.isfinite(got[name].to_numpy()[spec.warmup :]).all(), name


def test_vwap_resets_each_trading_day():
    """Continuous 24h minutes: the session VWAP restarts at 22:00 UTC, and only there."""
    bars = synthetic_bars(3000, seed=5)
    bars.index = pd.date_range("2024-03-04 20:00", periods=len(bars), freq="min", tz="UTC", name="timestamp")
    got = compute_features(bars, names=["vwap_dist_ticks"])["vwap_dist_ticks"].to_numpy()
    typical = ((bars["high"] + bars["low"] + bars["close"]) / 3).to_numpy()
    roll = bars.index.get_loc(pd.Timestamp("2024-03-04 22:00", tz="UTC"))
    # First bar of the new trading day: VWAP is that bar's typical price.
    assert got[roll] == pytest.approx((bars["close"].iloc[roll] - typical[roll]) / 0.25, rel=1e-5)
    # The bar before still averages the whole day since 20:00.
    v = bars["volume"].to_numpy()
    vwap = (typical[:roll] * v[:roll]).sum() / v[:roll].sum()
    assert got[roll - 1] == pytest.approx((bars["close"].iloc[roll - 1] - vwap) / 0.25, rel=1e-5)


# Volume-profile point of control --------------------------------------------------------


def _flat_bars(prices, volumes, start="2024-01-02 14:00"):
    """Bars whose high = low = close = open = price, so the typical price is the price."""
    idx = pd.date_range(start, periods=len(prices), freq="min", tz="UTC", name="timestamp")
    p = np.asarray(prices, dtype=float)
    bars = pd.DataFrame({"open": p, "high": p, "low": p, "close": p, "volume": np.asarray(volumes, float)}, idx)
    bars.attrs["symbol"] = "NQ"
    return bars


def test_poc_distance_on_a_hand_made_profile():
    # NQ: tick 0.25, bins of 4 ticks = 1 point. 60-bar window:
    # bin 100: 20 bars x 10 = 200; bin 101: 20 x 5 = 100; bin 103: 19 x 12 = 228; bin 102: 1 bar.
    prices = [100.25] * 20 + [101.5] * 20 + [103.0] * 19 + [102.0]
    volumes = [10] * 20 + [5] * 20 + [12] * 19 + [1]
    got = compute_features(_flat_bars(prices, volumes), names=["dist_to_poc_ticks"])["dist_to_poc_ticks"]
    assert np.isnan(got.iloc[:59]).all()  # the profile needs 60 bars
    assert got.iloc[59] == pytest.approx((102.0 - 103.5) / 0.25)  # POC bin 103 -> centre 103.5
    # A bar at 100.75 (bin 100, volume 30) while a bin-100 bar leaves the window:
    # 200 - 10 + 30 = 220 < 228. Another with 20: 220 - 10 + 20 = 230 > 228, the POC moves.
    more = _flat_bars(prices + [100.75, 100.75], volumes + [30, 20])
    got = compute_features(more, names=["dist_to_poc_ticks"])["dist_to_poc_ticks"]
    assert got.iloc[60] == pytest.approx((100.75 - 103.5) / 0.25)
    assert got.iloc[61] == pytest.approx((100.75 - 100.5) / 0.25)


def _poc_brute_force(bars: pd.DataFrame, window=60, bin_size=1.0) -> np.ndarray:
    typical = ((bars["high"] + bars["low"] + bars["close"]) / 3).to_numpy()
    v, c, seg = bars["volume"].to_numpy(), bars["close"].to_numpy(), segment_ids(bars)
    out = np.full(len(bars), np.nan)
    for t in range(window - 1, len(bars)):
        lo = t - window + 1
        if seg[lo] != seg[t] or v[lo : t + 1].sum() == 0:
            continue
        profile: dict[int, float] = {}
        for k in range(lo, t + 1):
            b = int(np.floor(typical[k] / bin_size + 1e-9))
            profile[b] = profile.get(b, 0.0) + v[k]
        best = max(profile.items(), key=lambda kv: (kv[1], -kv[0]))[0]  # ties: lowest price
        out[t] = (c[t] - (best + 0.5) * bin_size) / 0.25
    return out


def test_poc_matches_brute_force_on_real_bars(es_bars):
    bars = es_bars.iloc[14_000:16_000]  # includes the ESZ13 -> ESH14 roll
    got = compute_features(bars, names=["dist_to_poc_ticks"])["dist_to_poc_ticks"].to_numpy()
    np.testing.assert_allclose(got, _poc_brute_force(bars), rtol=1e-6, equal_nan=True)


# Schema ----------------------------------------------------------------------------------


def test_schema_hash_and_round_trip():
    a = FeatureSchema.for_names(DEFAULT_FEATURES)
    b = FeatureSchema.from_dict(a.to_dict())
    assert a.hash == b.hash == FeatureSchema(tuple(DEFAULT_FEATURES)).hash
    assert len(a.hash) == 64
    a.check_compatible(b)
    assert FeatureSchema(("close", "rsi")).hash != FeatureSchema(("rsi", "close")).hash
    assert FeatureSchema(("rsi_14",)).hash != FeatureSchema(("rsi_7",)).hash  # parameters count
    assert compute_features(synthetic_bars(300, seed=1)).attrs["schema"].hash == a.hash


def test_schema_differences_are_named():
    model = FeatureSchema(("close", "volume", "rsi", "ret_5"))
    with pytest.raises(SchemaError, match=r"missing \['volume'\]"):
        model.check_compatible(FeatureSchema(("close", "rsi", "ret_5")))
    with pytest.raises(SchemaError, match=r"extra \['ret_1'\]"):
        model.check_compatible(FeatureSchema(("close", "volume", "rsi", "ret_5", "ret_1")))
    with pytest.raises(SchemaError, match=r"reordered \['rsi', 'ret_5'\]"):
        model.check_compatible(FeatureSchema(("close", "volume", "ret_5", "rsi")))
    tampered = model.to_dict() | {"names": ["close", "volume", "ret_5", "rsi"]}
    with pytest.raises(SchemaError, match="does not match"):
        FeatureSchema.from_dict(tampered)


# Serving path ----------------------------------------------------------------------------


def test_feature_row_from_bars_equals_last_row_of_full_computation():
    # 24h continuous minutes: one segment far longer than the kept history, so the tail
    # really is cut inside a segment (EMAs, the VWAP day, windows all reach back).
    bars = synthetic_bars(5000, seed=9)
    bars.index = pd.date_range("2024-03-04 00:00", periods=len(bars), freq="min", tz="UTC", name="timestamp")
    assert required_history() < len(bars) - 1000
    full = compute_features(bars)
    for t in (2600, 3979, len(bars) - 1):
        row = feature_row_from_bars(bars.iloc[: t + 1])
        assert list(row.columns) == list(full.columns) and row.index[0] == bars.index[t]
        ok = _scaled_close(row.to_numpy()[0], full.iloc[t].to_numpy(), rtol=1e-5)
        assert ok.all(), f"row {t}: {list(full.columns[~ok])} differ"


# Contract of the frame, and bad input ----------------------------------------------------


def test_frame_contract_and_registry():
    bars = synthetic_bars(2000, seed=2)
    f = compute_features(bars, extra_columns=("edge",))
    assert list(f.columns) == list(DEFAULT_FEATURES) + ["edge"]
    assert (f.dtypes == np.float32).all() and f.index.equals(bars.index)
    np.testing.assert_array_equal(f["edge"].to_numpy(), bars["edge"].to_numpy(np.float32))
    assert 35 <= len(DEFAULT_FEATURES) <= 45 and set(DEFAULT_FEATURES) <= set(FEATURES)
    assert {"close", "volume", "rsi", "dist_to_poc_ticks"} <= set(DEFAULT_FEATURES)
    since = bars_since_start(segment_ids(bars))
    assert since.max() > 1000 > since[-1]  # two segments
    for spec in FEATURES.values():
        assert spec.history > spec.warmup >= 0
        if spec.name in FEATURE_GROUPS["intraday"] or spec.needs_context:
            continue  # NaN where their reference is missing (tests/test_intraday_features.py)
        # NaN exactly during each segment's warm-up, a value on every ordinary bar after it
        values = compute_features(bars, names=[spec.name])[spec.name].to_numpy()
        np.testing.assert_array_equal(np.isnan(values), since < spec.warmup, err_msg=spec.name)


def test_bars_without_volume_drop_volume_features_with_a_warning():
    bars = synthetic_bars(500, seed=2).drop(columns="volume")
    with pytest.warns(UserWarning, match="no volume"):
        f = compute_features(bars)
    assert "volume" not in f.columns and "dist_to_poc_ticks" not in f.columns and "rsi" in f.columns
    assert f.attrs["schema"].names == tuple(f.columns)


def test_bad_input_is_a_clear_error():
    bars = synthetic_bars(300, seed=2)
    broken = bars.copy()
    broken.iloc[123, broken.columns.get_loc("close")] = np.nan
    with pytest.raises(DataError, match="'close'.*row 123"):
        compute_features(broken)
    with pytest.raises(DataError, match="lack the column"):
        compute_features(bars.drop(columns="high"))
    with pytest.raises(DataError, match="row 5 .* does not come after"):
        compute_features(bars.iloc[[0, 1, 2, 3, 4, 4, 5]])
    with pytest.raises(DataError, match="tz-aware"):
        compute_features(bars.tz_localize(None))
    with pytest.raises(TradeMLError, match="did you mean.*rsi_14"):
        compute_features(bars, names=["rsi_41"])
    with pytest.raises(DataError, match="'nope' is not in the bars"):
        compute_features(bars, extra_columns=("nope",))
    no_symbol = bars.copy()
    no_symbol.attrs.pop("symbol")
    with pytest.raises(DataError, match="no contract symbol"):
        compute_features(no_symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_features(bars.iloc[:0]).shape == (0, len(DEFAULT_FEATURES))


def test_cli_lists_the_features():
    from typer.testing import CliRunner

    from trademl.cli import app

    result = CliRunner().invoke(app, ["data", "features", "--all"])
    assert result.exit_code == 0
    assert "dist_to_poc_ticks" in result.output and "ema_dist_200" in result.output
    assert f"{len(FEATURES)} features" in result.output


def test_a_bad_print_leaves_only_its_windows_poc_missing_and_sizes_no_allocation():
    """One bar with a high of 4e9 (a bad print) used to size a 2**31-cell profile histogram and
    crash; the windows that contain it have no POC now, and every other bar is unchanged."""
    from trademl.data.features import compute_features

    bars = synthetic_bars(3000, seed=1, symbol="ES")
    clean = compute_features(bars, symbol="ES")["dist_to_poc_ticks"]
    bars.iloc[1500, bars.columns.get_loc("high")] = 4e9
    spiked = compute_features(bars, symbol="ES")["dist_to_poc_ticks"]
    differ = ~((clean.isna() & spiked.isna()) | (clean == spiked)).to_numpy()
    assert np.flatnonzero(differ).tolist() == list(range(1500, 1560)) and spiked.iloc[1500:1560].isna().all()
