"""The incremental steps of the intraday and cross-market features equal the batch.

Each step is fed every bar of a frame through ``stream_bars`` (what a live stream sees) and
its values are compared with ``compute_features`` over the whole frame: the same NaN
positions, and the values equal in float32 to rtol 1e-6, atol 1e-7 (the batch stores float32;
the steps compute in float64 and differ from it at most in the last bits of float64 sums).

Frames: the bundled real ES file (16 sessions, two contract rolls), and made bars built to
hit every rule the batch has: a DST change with bars in the repeated (or skipped) hour, a
hole of more than four days, a contract roll inside the opening range, gaps inside a day
(one past max_gap_minutes, one under it), 3- and 7-minute bars off the 5-minute clock, a
day that ends before the regular session, flat stretches (an exact zero volatility and a
flat context: the batch's exact 0 variance). The context instrument has its own stamps,
missing bars, a stale hole and a stretch that copies our prices (a correlation of 1, clipped).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.config import resolve_config
from trademl.data.bars import load_bars
from trademl.data.features import FEATURES, compute_features
from trademl.data.features import incremental_context, incremental_intraday
from trademl.data.features.context import aligned_context_close
from trademl.data.features.incremental import stream_bars
from trademl.data.features.incremental_intraday import BlockWindowSum, SessionClock, _utc_offset_ns
from trademl.data.features.registry import FEATURE_GROUPS
from trademl.data.features.rolling import BlockPrefix, SegmentIndex
from trademl.market.contracts import spec_of_bars
from trademl.segments import segment_ids

ES_FILE = "/work/shared/data/es_1min_lean.csv"
INTRADAY = list(FEATURE_GROUPS["intraday"])
CONTEXT = list(FEATURE_GROUPS["context"])
STEPS = {**incremental_intraday.STEPS, **incremental_context.STEPS}
MAX_GAP = resolve_config().data.max_gap_minutes
TICK = 0.25
RTOL, ATOL = 1e-6, 1e-7


# Running and comparing ------------------------------------------------------------------------


def streamed(bars: pd.DataFrame, names: list[str], context: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Every step of ``names`` fed every bar in order: {name: its float64 values}."""
    tick = spec_of_bars(bars, "ES").tick_size
    steps = {n: STEPS[FEATURES[n].fn](tick, **FEATURES[n].params) for n in names}
    context_close = None
    if context is not None:
        context_close = aligned_context_close(context, bars.index.as_unit("ns").asi8, MAX_GAP)
    out = {n: np.empty(len(bars)) for n in names}
    for i, bar in enumerate(stream_bars(bars, MAX_GAP, context_close=context_close)):
        for name, step in steps.items():
            value = step.update(bar)
            assert isinstance(value, float), (name, type(value))
            out[name][i] = value
    return out


def assert_equal_to_batch(bars: pd.DataFrame, names: list[str], context: pd.DataFrame | None = None) -> None:
    """Each feature computed alone by the batch against its step: NaN where the batch is NaN,
    equal in float32 elsewhere. All mismatches are reported at once."""
    values = streamed(bars, names, context)
    problems = []
    for name in names:
        batch = compute_features(bars, symbol="ES", names=[name], max_gap_minutes=MAX_GAP, context=context)[name]
        expected, got = batch.to_numpy(), values[name].astype(np.float32)
        nan_differs = np.flatnonzero(np.isnan(expected) != np.isnan(got))
        both = ~np.isnan(expected) & ~np.isnan(got)
        off = np.flatnonzero(both & ~np.isclose(got, expected, rtol=RTOL, atol=ATOL))
        if len(nan_differs) or len(off):
            problems.append(f"{name}: NaN differs at {nan_differs[:5].tolist()} ({len(nan_differs)}), "
                            f"value differs at {off[:5].tolist()} ({len(off)})")
        # the comparison must mean something: every feature has values to compare
        assert both.any(), f"{name} is NaN everywhere in this frame"
    assert not problems, "\n".join(problems)


# Frames ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def es() -> pd.DataFrame:
    bars = load_bars(ES_FILE, symbol="ES")
    assert len(bars) == 19_083 and bars["contract"].nunique() == 3
    return bars


def _utc_minutes(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    return pd.date_range(start.tz_convert("UTC"), end.tz_convert("UTC"), freq="min", inclusive="left").as_unit("ns")


def _wall(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return index.tz_convert("America/Chicago").tz_localize(None)


def _on_day(day0: pd.Timestamp, k: int, hhmm: str) -> pd.Timestamp:
    """Chicago wall time ``hhmm`` of the ``k``-th calendar day after ``day0``."""
    return day0 + pd.Timedelta(days=k) + pd.Timedelta(hhmm + ":00")


def _wall_between(wall: pd.DatetimeIndex, day0: pd.Timestamp, k: int, start: str, end: str) -> np.ndarray:
    """Bars opened in [start, end) Chicago wall time on day ``k`` after ``day0``."""
    return np.asarray((wall >= _on_day(day0, k, start)) & (wall < _on_day(day0, k, end)))


def made_bars(first_day: str, seed: int = 0) -> pd.DataFrame:
    """Minute bars round the clock but the daily halt (16:00-17:00 Chicago), weekends included so
    that the DST change's night has bars: six days from ``first_day``, a hole of six days, three
    more days; then holes, off-clock stretches, a roll and flat stretches cut into them."""
    d0 = pd.Timestamp(first_day, tz="America/Chicago") - pd.Timedelta(hours=7)  # 17:00 the evening before
    index = _utc_minutes(d0, d0 + pd.Timedelta(days=6)).append(
        _utc_minutes(d0 + pd.Timedelta(days=12), d0 + pd.Timedelta(days=15)))
    day = pd.Timestamp(first_day)
    wall = _wall(index)
    keep = np.asarray(wall.hour != 16)
    keep &= ~_wall_between(wall, day, 4, "10:00", "10:40")  # a 40-minute gap: a new segment inside the day
    keep &= ~_wall_between(wall, day, 4, "12:00", "12:07")  # a 7-minute gap: the same segment, buckets skipped
    keep &= ~_wall_between(wall, day, 5, "08:00", "16:00")  # a day that ends before its regular session
    minute = index.asi8 // 60_000_000_000
    off_clock = _wall_between(wall, day, 1, "09:00", "11:00") | _wall_between(wall, day, 13, "12:00", "14:00")
    keep &= ~off_clock | (minute % 3 == 1)  # 3-minute bars opened at ..:01, ..:04, ..
    sparse = _wall_between(wall, day, 2, "13:00", "15:30")
    keep &= ~sparse | (minute % 7 == 3)  # 7-minute bars, under the segment gap
    index = index[keep]
    stamps = index.asi8.copy()
    stamps[_wall_between(_wall(index), day, 3, "09:10", "09:50")] += 30_000_000_000  # 30 s past the minute
    index = pd.DatetimeIndex(stamps, tz="UTC", name="timestamp")

    rng = np.random.default_rng(seed)
    steps = TICK * rng.integers(-3, 4, len(index)).astype(float)
    wall = _wall(index)
    for k in (1, 2):  # two flat afternoons: rvol_60 exactly 0, in today's bars and the previous day's
        steps[_wall_between(wall, day, k, "13:00", "14:45")] = 0.0
    close = 5000.0 + np.cumsum(steps)
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) + TICK * rng.integers(0, 3, len(index))
    low = np.minimum(open_, close) - TICK * rng.integers(0, 3, len(index))
    bars = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1, 500, len(index)).astype(float)}, index=index)
    # the roll lands inside the opening range of the day after the hole
    bars["contract"] = np.where(wall < _on_day(day, 13, "08:41"), "ESZ4", "ESH5")
    bars.attrs["symbol"] = "ES"
    return bars


def made_context(bars: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Another market on its own stamps (20 s after ours), 10% of them missing, a 50-minute stale
    hole, two flat hours (windows of exact zero returns), and two hours on our own stamps that
    copy our prices (correlation 1)."""
    rng = np.random.default_rng(seed)
    ours = bars.index.as_unit("ns").asi8
    stamps = ours + 20_000_000_000
    wall = _wall(bars.index)
    day = wall[0].normalize() + pd.Timedelta(days=1)  # made_bars' first day
    copy = _wall_between(wall, day, 3, "10:00", "12:00")
    flat = _wall_between(wall, day, 2, "09:00", "11:00")
    stale = _wall_between(wall, day, 4, "14:00", "14:50")
    stamps[copy] = ours[copy]
    close = 1800.0 * np.exp(np.cumsum(rng.normal(0, 2e-4, len(stamps))))
    close[flat] = close[np.flatnonzero(flat)[0]]
    close[copy] = bars["close"].to_numpy()[copy] * 0.36
    keep = (rng.random(len(stamps)) > 0.1) & ~stale
    keep[copy | flat] = True
    other = pd.DataFrame({"open": close, "high": close, "low": close, "close": close},
                         index=pd.DatetimeIndex(stamps, tz="UTC", name="timestamp"))[keep]
    other.attrs = {"source": "context"}
    return other


@pytest.fixture(scope="module", params=["2024-10-31", "2024-03-07"], ids=["November DST", "March DST"])
def made(request) -> pd.DataFrame:
    bars = made_bars(request.param)
    utc = bars.index.as_unit("ns").asi8
    offset = _wall(bars.index).as_unit("ns").asi8 - utc
    changes = np.flatnonzero(np.diff(offset) != 0)
    assert set(np.unique(offset) // 3_600_000_000_000) == {-5, -6}
    assert (np.diff(utc)[changes] == 60_000_000_000).any()  # bars a minute apart across the change itself
    assert (np.diff(bars.index.asi8) > 4 * 86_400e9).any()  # the hole
    assert bars["contract"].nunique() == 2
    assert len(np.unique(segment_ids(bars, MAX_GAP))) > 10
    return bars


@pytest.fixture(scope="module")
def es_context(es) -> pd.DataFrame:
    """A market close to ES on ES's stamps, 5% of them missing."""
    rng = np.random.default_rng(5)
    other = es.iloc[rng.random(len(es)) > 0.05][["open", "high", "low", "close"]].copy()
    drift = np.exp(np.cumsum(rng.normal(0, 1e-4, len(other))))
    for col in other.columns:
        other[col] = other[col].to_numpy() * 3.4 * drift
    other.attrs = {"source": "context"}
    return other


# The tests ------------------------------------------------------------------------------------


def test_every_intraday_and_context_function_has_a_step():
    needed = {FEATURES[n].fn for n in INTRADAY + CONTEXT}
    assert needed == set(STEPS)


def test_intraday_steps_equal_the_batch_on_the_es_file(es):
    assert_equal_to_batch(es, INTRADAY)


def test_intraday_steps_equal_the_batch_on_made_bars(made):
    assert_equal_to_batch(made, INTRADAY)


def test_context_steps_equal_the_batch_on_the_es_file(es, es_context):
    assert_equal_to_batch(es, CONTEXT, context=es_context)


def test_context_steps_equal_the_batch_on_made_bars(made):
    context = made_context(made)
    close = aligned_context_close(context, made.index.as_unit("ns").asi8, MAX_GAP)
    assert np.isnan(close).any() and np.isfinite(close).mean() > 0.8  # some missing or stale, most there
    assert_equal_to_batch(made, CONTEXT, context=context)
    # a window of the flat context's exact zero returns: the batch's beta is exactly 0 there
    # (and so is the step's, checked above); the copied hours give a correlation of 1
    batch = compute_features(made, symbol="ES", names=["ctx_beta_60", "ctx_corr_60"], max_gap_minutes=MAX_GAP,
                             context=context)
    wall = _wall(made.index)
    flat_end = _on_day(wall[0].normalize() + pd.Timedelta(days=1), 2, "10:59")
    assert batch["ctx_beta_60"].to_numpy()[np.flatnonzero(wall == flat_end)[0]] == 0.0
    assert (batch["ctx_corr_60"] == 1.0).any()


def test_session_clock_offsets_equal_pandas():
    """zoneinfo's offset at each hour of 2024 and 2025 (four DST changes) is pandas' tz_convert."""
    hours = pd.date_range("2024-01-01", "2026-01-01", freq="h", tz="UTC")
    theirs = hours.tz_convert("America/Chicago").tz_localize(None).as_unit("ns").asi8 - hours.as_unit("ns").asi8
    ours = np.array([_utc_offset_ns(int(s)) for s in hours.as_unit("s").asi8])
    np.testing.assert_array_equal(ours, theirs)
    clock = SessionClock()

    def at(utc: str) -> tuple[int, int]:
        return clock.at(pd.Timestamp(utc, tz="UTC").value)

    # 08:30 Chicago is 13:30 UTC in summer, 14:30 UTC in winter: minute 930 of the trading day
    assert at("2024-07-01 13:30")[1] == 930 and at("2024-12-02 14:30")[1] == 930
    # the trading day turns at 17:00 Chicago (22:00 UTC in summer)
    (before, last_minute), (after, first_minute) = at("2024-07-01 21:59"), at("2024-07-01 22:00")
    assert after == before + 1 and (last_minute, first_minute) == (1439, 0)


def test_block_window_sum_is_bit_for_bit_the_batch_sum():
    """Over three blocks of rows, with zero stretches (an exact 0) and segments: the same doubles."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1e-3, 3 * 4096 + 500) ** 2
    x[5000:5300] = 0.0
    x[4090:4200] = 0.0  # a zero window across a block boundary
    seg = np.cumsum(rng.random(len(x)) < 0.002)
    segs = SegmentIndex(seg)
    for window in (1, 60, 250):
        expected = BlockPrefix(x).window_sum(window, segs, x_first_valid=1)
        summer = BlockWindowSum(window)
        got = np.array([summer.push(float(v)) for v in x])
        got[segs.young(window)] = np.nan
        np.testing.assert_array_equal(got, expected)
        assert (got[np.isfinite(got)] == 0.0).any()
