"""Incremental features (issue 17): every feature's one-bar step gives the batch value.

The batch (``compute_features`` over a whole frame) is the reference. Each test feeds the same
bars one at a time through ``IncrementalFeatures`` and compares every row: the same NaNs (the
warm-ups, restarting at each gap and roll) and the same values to float32 precision.

Tolerance: |stream - batch| <= 2e-6 |batch| + atol, atol 1e-6 for features in ticks and 1e-7
otherwise. Ticks get the looser one because the batch's session VWAP subtracts cumulative sums
of price x volume over the whole file: it knows the VWAP to ~1e-9 of the price (~1e-5 ticks
on ES at 4,000), less precisely than the stream's own running sums.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trademl.config import resolve_config
from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.features import FEATURES, compute_features
from trademl.data.features.incremental import IncrementalFeatures, RollingWindow, SegmentTracker, stream_bars
from trademl.data.features.registry import DEFAULT_FEATURES, FEATURE_GROUPS
from trademl.market.contracts import spec_of_bars
from trademl.segments import segment_ids

GAP = resolve_config().data.max_gap_minutes
# The indicators on one instrument's bars (the intraday and context groups have their own file).
SINGLE_TIMEFRAME = [n for n in FEATURES if n not in FEATURE_GROUPS["intraday"] and n not in FEATURE_GROUPS["context"]]


def streamed(bars: pd.DataFrame, names: list[str], tick: float, context: pd.DataFrame | None = None) -> np.ndarray:
    """The rows a stream fed ``bars`` one at a time gives (``context``: another instrument's bars)."""
    from trademl.data.features.context import aligned_context_close

    inc = IncrementalFeatures(names, tick, GAP)
    ctx = None if context is None else aligned_context_close(context, bars.index.as_unit("ns").asi8, GAP)
    return np.array([inc.take(bar) for bar in stream_bars(bars, GAP, ctx)], dtype=np.float32)


def assert_same_rows(batch: pd.DataFrame, stream: np.ndarray) -> None:
    problems = []
    for j, name in enumerate(batch.columns):
        want, got = batch[name].to_numpy(np.float32), stream[:, j]
        if not np.array_equal(np.isnan(want), np.isnan(got)):
            rows = np.flatnonzero(np.isnan(want) != np.isnan(got))[:3]
            problems.append(f"{name}: NaN differs at rows {rows.tolist()} (batch {want[rows]}, stream {got[rows]})")
            continue
        ok = ~np.isnan(want)
        atol = 1e-6 if name.endswith("_ticks") else 1e-7
        err = np.abs(want[ok].astype(np.float64) - got[ok]) - (2e-6 * np.abs(want[ok]) + atol)
        if (err > 0).any():
            k = np.flatnonzero(ok)[int(np.argmax(err))]
            problems.append(f"{name}: {int((err > 0).sum())} rows differ, worst row {k}: batch {want[k]} stream {got[k]}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def es_bars() -> pd.DataFrame:
    return load_bars(bundled_sample_path(), symbol="ES")


def test_every_single_timeframe_feature_streams_as_the_batch_over_the_real_es_file(es_bars):
    """19,083 real ES bars: 16 sessions, daily halts (gaps), contract rolls."""
    assert segment_ids(es_bars, GAP).max() >= 10  # the file restarts many times
    tick = spec_of_bars(es_bars, "ES").tick_size
    batch = compute_features(es_bars, symbol="ES", names=SINGLE_TIMEFRAME)
    assert_same_rows(batch, streamed(es_bars, SINGLE_TIMEFRAME, tick))


def awkward_bars(n: int = 6_000, seed: int = 4) -> pd.DataFrame:
    """Bars with what breaks a careless step: flat stretches (no move, no range), bars with zero
    volume, gaps of several lengths, a roll, a price jump far beyond the volume profile's range."""
    rng = np.random.default_rng(seed)
    minutes = np.cumsum(np.where(rng.random(n) < 0.002, rng.integers(2, 400, n), 1))
    index = pd.DatetimeIndex(pd.Timestamp("2024-03-04 14:00", tz="UTC") + pd.to_timedelta(minutes, "min"),
                             name="timestamp")
    steps = rng.integers(-2, 3, n).astype(float)
    steps[1000:1300] = 0.0  # a flat stretch: zero std, zero range
    close = 4000.0 + 0.25 * np.cumsum(steps)
    close[4000:] += 5_000_000 * 0.25  # a jump of 5,000,000 ticks (1.25M bins of 4): POC windows across it have no POC
    open_ = np.r_[close[0], close[:-1]]
    wick = 0.25 * rng.integers(0, 3, (2, n))
    wick[:, 1000:1300] = 0.0
    high, low = np.maximum(open_, close) + wick[0], np.minimum(open_, close) - wick[1]
    volume = rng.integers(0, 40, n).astype(float)
    volume[2000:2100] = 0.0  # nothing traded: ratios of volume fall back to their fill
    bars = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume,
                         "contract": np.where(np.arange(n) < 3000, "ESH4", "ESM4")}, index=index)
    bars.attrs["symbol"] = "ES"
    return bars


def test_every_single_timeframe_feature_streams_as_the_batch_on_awkward_bars():
    bars = awkward_bars()
    batch = compute_features(bars, symbol="ES", names=SINGLE_TIMEFRAME)
    flat = batch["bb_width_20"].iloc[1100:1300].dropna()
    assert len(flat) > 100 and flat.eq(0.0).all()  # the flat stretch is really flat
    across = batch["dist_to_poc_ticks"].iloc[4001:4059]  # bar 4000 itself opens before the jump
    assert across.isna().all() and batch["dist_to_poc_ticks"].iloc[4100:].notna().any()  # no POC across the jump
    assert_same_rows(batch, streamed(bars, SINGLE_TIMEFRAME, 0.25))


def test_bars_without_volume_stream_the_price_features():
    bars = awkward_bars(3_000).drop(columns="volume")
    names = [n for n in DEFAULT_FEATURES if not FEATURES[n].needs_volume]
    assert_same_rows(compute_features(bars, symbol="ES", names=names), streamed(bars, names, 0.25))


def test_extra_columns_pass_through_from_each_bar():
    inc = IncrementalFeatures(["rsi", "edge"], 0.25, GAP)
    row = inc.push(0, 100.0, 101.0, 99.0, 100.5, 10.0, extras={"edge": 0.75})
    assert row[1] == np.float32(0.75) and math.isnan(row[0])  # rsi warming up, edge as sent


def test_the_segment_rule_is_the_datasets():
    """A gap longer than max_gap_minutes or a new contract starts a segment; a gap of exactly the
    limit does not (segment_ids' rule, applied one bar at a time)."""
    tracker = SegmentTracker(GAP)
    minute = 60_000_000_000
    stamps = [0, minute, minute + GAP * minute, minute + (2 * GAP + 1) * minute, (2 * GAP + 3) * minute]
    contracts = ["A", "A", "A", "A", "B"]
    starts = [tracker.bar(s, 1.0, 1.0, 1.0, 1.0, 1.0, c).new_segment for s, c in zip(stamps, contracts)]
    frame = pd.DataFrame({"contract": contracts}, index=pd.to_datetime(stamps, utc=True))
    ids = segment_ids(frame, GAP)
    assert starts == [True] + list(np.diff(ids) > 0) == [True, False, False, True, True]


def test_a_rolling_window_sums_exactly_however_long_the_stream():
    """The window sums what it holds (fsum): no drift after a million updates, unlike a running sum."""
    window = RollingWindow()
    window.maxlen = 3
    running = 0.0
    values = [0.1, 1e8, -1e8] * 10_000 + [0.1, 0.2, 0.3]
    for i, v in enumerate(values):
        window.values.append(v)
        running += v - (values[i - 3] if i >= 3 else 0.0)
        if len(window.values) > 2 * window.maxlen:
            del window.values[:-window.maxlen]
    assert window.sum(3) == math.fsum([0.1, 0.2, 0.3])
    assert running != window.sum(3)  # what the running sum would have given instead


def test_every_registered_feature_together_through_the_engine_on_the_es_file(es_bars):
    """The intraday and context steps (tests/test_incremental_intraday.py checks each alone) wired
    through the engine beside the indicators, sharing its bars and segments."""
    rng = np.random.default_rng(2)
    context = es_bars[rng.random(len(es_bars)) > 0.05][["open", "high", "low", "close"]] * 1.01
    names = list(FEATURES)
    assert len(names) == 88  # the registry: every feature a config can name
    batch = compute_features(es_bars, symbol="ES", names=names, context=context)
    assert_same_rows(batch, streamed(es_bars, names, 0.25, context))
