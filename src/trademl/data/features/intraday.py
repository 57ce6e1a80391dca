"""Features that carry intraday information: higher timeframes, session structure, volatility regime.

The single-timeframe indicators see a window of the last N bars. A futures trader also
reads the bars of higher timeframes (the last 15-minute bar), the session's landmarks
(the opening range, the overnight high, yesterday's close and settlement) and whether
today's volatility is high for this market. Everything here is causal:

- a higher-timeframe bar is used from the first bar AFTER it (the bar that closes it could
  only know it is the last one by seeing the next stamp), never while it is unfinished;
- a session level is used once it is complete (the opening range from the first bar after
  it), or as its running value so far (the overnight high during the overnight);
- the volatility percentile compares today's value with the previous days' only.

Session levels and the regime read previous trading days, so unlike the other features they
cross segment boundaries (the daily halt is a segment break); they never cross a contract roll,
whose price levels differ, nor a hole of more than ``MAX_DAY_GAP_DAYS`` calendar days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trademl.data.features.context import NS_PER_DAY, NS_PER_MINUTE, BarContext
from trademl.segments import segment_start_mask

# CME equity-index sessions (and SPY's 9:30-16:00 New York hours, the same instants): the
# trading day starts at 17:00 Chicago, the regular session runs 08:30-15:00 Chicago.
SESSION_TIMEZONE = "America/Chicago"
DAY_START_MINUTE = 17 * 60
RTH_OPEN_MINUTE = 8 * 60 + 30
RTH_CLOSE_MINUTE = 15 * 60
# A previous trading day further back than this (a hole in the data, not a weekend or a
# holiday) says nothing about today's levels.
MAX_DAY_GAP_DAYS = 4
# The regime's reference: each previous day's rvol summarised by this many quantiles (cheap to
# pool, and exact between the batch and the serving path, which sees the same whole days).
REGIME_QUANTILES = 65
REGIME_SAMPLE_MINUTES = 5
BARS_PER_DAY_MAX = 1440  # bars are at least one minute long


# Higher timeframes ---------------------------------------------------------------------------


def _higher_bars(ctx: BarContext, minutes: int):
    """Clock-aligned ``minutes`` bars built from the bars, per segment: the run (higher bar) of each
    bar, and per run its segment, open, high, low and close."""

    def make():
        bucket = ctx.stamps // (minutes * NS_PER_MINUTE)
        new = segment_start_mask(bucket)
        new[ctx.first_rows] = True
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(bucket)) - 1
        run = np.cumsum(new) - 1
        return (run, ctx.seg[starts], ctx.open[starts], np.maximum.reduceat(ctx.high, starts),
                np.minimum.reduceat(ctx.low, starts), ctx.close[ends])

    return ctx.cached(("higher_bars", minutes), make)


def _per_bar_of_completed(ctx: BarContext, minutes: int, per_run: np.ndarray, back: int = 1) -> np.ndarray:
    """Per bar: ``per_run`` of the higher bar ``back`` runs before its own (1: the last completed
    one); NaN where that run is in an earlier segment or before the data."""
    run, run_seg = _higher_bars(ctx, minutes)[:2]
    shifted = np.full(len(per_run), np.nan)
    if back < len(per_run):
        shifted[back:] = per_run[:-back]
        shifted[back:][run_seg[back:] != run_seg[:-back]] = np.nan
    return shifted[run]


def higher_return(ctx: BarContext, minutes: int) -> np.ndarray:
    """log(close / open) of the last completed ``minutes`` bar."""
    _, _, o, _, _, c = _higher_bars(ctx, minutes)
    return _per_bar_of_completed(ctx, minutes, np.log(c / o))


def higher_range(ctx: BarContext, minutes: int) -> np.ndarray:
    """log(high / low) of the last completed ``minutes`` bar."""
    _, _, _, h, lo, _ = _higher_bars(ctx, minutes)
    return _per_bar_of_completed(ctx, minutes, np.log(h / lo))


def higher_trend(ctx: BarContext, minutes: int, bars: int) -> np.ndarray:
    """log close-to-close return over the last ``bars`` completed ``minutes`` bars (all in our segment)."""
    run_seg, c = _higher_bars(ctx, minutes)[1], _higher_bars(ctx, minutes)[5]
    log_c = np.log(c)
    change = np.full(len(c), np.nan)
    if bars < len(c):
        change[bars:] = log_c[bars:] - log_c[:-bars]
        change[bars:][run_seg[bars:] != run_seg[:-bars]] = np.nan
    return _per_bar_of_completed(ctx, minutes, change)


# Session structure ----------------------------------------------------------------------------


def _session_clock(ctx: BarContext):
    """(trading day number, minute in the trading day) of every bar, in the session's time zone
    (daylight saving time included: 08:30 Chicago is 13:30 or 14:30 UTC)."""

    def make():
        local = ctx.stamps + _utc_offsets(ctx.stamps, SESSION_TIMEZONE)
        shifted = local + (1440 - DAY_START_MINUTE) * NS_PER_MINUTE  # 17:00 -> midnight of the next day
        return shifted // NS_PER_DAY, (shifted % NS_PER_DAY) // NS_PER_MINUTE

    return ctx.cached(("session_clock",), make)


def _utc_offsets(stamps: np.ndarray, zone: str) -> np.ndarray:
    """The zone's UTC offset (ns) at each stamp. Offsets change only on whole UTC hours, so the
    zone is asked once per distinct hour (a few per day), not once per bar."""
    hour_ns = 60 * NS_PER_MINUTE
    hours = stamps // hour_ns
    new = segment_start_mask(hours)
    firsts = hours[new] * hour_ns
    utc = pd.DatetimeIndex(firsts, tz="UTC")
    offsets = utc.tz_convert(zone).tz_localize(None).as_unit("ns").asi8 - firsts
    return offsets[np.cumsum(new) - 1]


def _days(ctx: BarContext):
    """The trading days present: per bar its day row, and per day its first bar, last bar, and
    whether the day before it (previous row) may be read: same contract, at most MAX_DAY_GAP_DAYS."""

    def make():
        day, _ = _session_clock(ctx)
        runs = ctx.contract_run
        new = segment_start_mask(day) | segment_start_mask(runs)
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(day)) - 1
        row = np.cumsum(new) - 1
        prev_ok = np.zeros(len(starts), dtype=bool)
        prev_ok[1:] = (runs[starts[1:]] == runs[starts[:-1]]) & (day[starts[1:]] - day[starts[:-1]] <= MAX_DAY_GAP_DAYS)
        return row, starts, ends, prev_ok

    return ctx.cached(("days",), make)


def _per_day(ctx: BarContext, values: np.ndarray, mask: np.ndarray, pick) -> np.ndarray:
    """``pick`` (np.maximum / np.minimum) of ``values`` where ``mask`` over each day; NaN for none."""
    _, starts, _, _ = _days(ctx)
    fill = -np.inf if pick is np.maximum else np.inf
    out = pick.reduceat(np.where(mask, values, fill), starts) if len(starts) else np.empty(0)
    out[np.isinf(out)] = np.nan
    return out


def _previous_day(ctx: BarContext, per_day: np.ndarray) -> np.ndarray:
    """Per bar: the value of the day before its own (NaN where that day may not be read)."""
    row, _, _, prev_ok = _days(ctx)
    shifted = np.full(len(per_day), np.nan)
    shifted[1:] = per_day[:-1]
    shifted[~prev_ok] = np.nan
    return shifted[row]


def _distance_ticks(ctx: BarContext, level: np.ndarray) -> np.ndarray:
    out = ctx.close - level
    out /= ctx.tick_size
    return out


def minutes_since_open(ctx: BarContext) -> np.ndarray:
    """Minutes since the regular session's open (08:30 Chicago); negative in the overnight."""
    _, minute = _session_clock(ctx)
    return (minute - (RTH_OPEN_MINUTE - DAY_START_MINUTE) % 1440).astype(np.float64)


def _rth_minute_bounds() -> tuple[int, int]:
    return (RTH_OPEN_MINUTE - DAY_START_MINUTE) % 1440, (RTH_CLOSE_MINUTE - DAY_START_MINUTE) % 1440


def _opening_range(ctx: BarContext, minutes: int, side: str) -> np.ndarray:
    """Per bar: the latest complete opening range's high or low (today's from the first bar after
    its end, before that the previous day's)."""

    def make():
        _, minute = _session_clock(ctx)
        open_m, _ = _rth_minute_bounds()
        inside = (minute >= open_m) & (minute < open_m + minutes)
        values, pick = (ctx.high, np.maximum) if side == "high" else (ctx.low, np.minimum)
        today = _per_day(ctx, values, inside, pick)
        row = _days(ctx)[0]
        return np.where(minute >= open_m + minutes, today[row], _previous_day(ctx, today))

    return ctx.cached(("opening_range", minutes, side), make)


def opening_range_distance(ctx: BarContext, minutes: int, side: str) -> np.ndarray:
    """close - the opening range's high or low, in ticks."""
    return _distance_ticks(ctx, _opening_range(ctx, minutes, side))


def overnight_distance(ctx: BarContext, side: str) -> np.ndarray:
    """close - the overnight's high or low in ticks: the running value during the overnight (17:00
    to the open), the whole overnight's after it."""
    _, minute = _session_clock(ctx)
    open_m, _ = _rth_minute_bounds()
    overnight = minute < open_m
    level = _grouped_running(ctx, ctx.high if side == "high" else ctx.low, overnight, side == "high")
    return _distance_ticks(ctx, level)


def _grouped_running(ctx: BarContext, values: np.ndarray, mask: np.ndarray, take_max: bool) -> np.ndarray:
    """Running max (or min) of ``values`` where ``mask`` within each day; NaN before any."""
    x = np.where(mask, values if take_max else -values, -np.inf)
    grid, at = _day_grid(ctx, x, -np.inf)
    running = np.maximum.accumulate(grid, axis=1)[at]
    running[np.isinf(running)] = np.nan
    return running if take_max else -running


def _day_grid(ctx: BarContext, values: np.ndarray, fill: float) -> tuple[np.ndarray, tuple]:
    """``values`` laid out one trading day per row (padded with ``fill``), and each bar's cell: a
    per-day scan or sort is then one exact numpy call, whatever the other days hold."""

    def make():
        row, starts, ends, _ = _days(ctx)
        width = int((ends - starts).max()) + 1 if len(starts) else 1
        flat = np.arange(len(row)) - starts[row] + row * width
        return (len(starts), width), flat, (row, flat - row * width)

    shape, flat, cell = ctx.cached(("day_grid",), make)
    grid = np.full(shape[0] * shape[1], fill)
    grid[flat] = values
    return grid.reshape(shape), cell


def previous_day_distance(ctx: BarContext, level: str) -> np.ndarray:
    """close - the previous trading day's high, low, close or settlement proxy (its last close
    before the 15:00 Chicago close), in ticks."""
    return _distance_ticks(ctx, _previous_day(ctx, _day_levels(ctx, level)))


def _day_levels(ctx: BarContext, level: str) -> np.ndarray:
    def make():
        _, starts, ends, _ = _days(ctx)
        everywhere = np.ones(len(ctx), dtype=bool)
        if level == "high":
            return _per_day(ctx, ctx.high, everywhere, np.maximum)
        if level == "low":
            return _per_day(ctx, ctx.low, everywhere, np.minimum)
        if level == "close":
            return ctx.close[ends]
        _, minute = _session_clock(ctx)
        open_m, close_m = _rth_minute_bounds()
        regular = (minute >= open_m) & (minute < close_m)
        last = np.maximum.reduceat(np.where(regular, np.arange(len(ctx)), -1), starts) if len(starts) else starts
        return np.where(last >= starts, ctx.close[np.maximum(last, 0)], np.nan)

    return ctx.cached(("day_level", level), make)


# Volatility regime ---------------------------------------------------------------------------


def volatility_percentile(ctx: BarContext, window: int, days: int) -> np.ndarray:
    """Where rvol_<window> stands among its values over the previous ``days`` trading days (0..1).

    Each day is summarised by REGIME_QUANTILES nearest-rank quantiles of its values; NaN unless all
    ``days`` previous days are there (within ``days`` + MAX_DAY_GAP_DAYS calendar days): with fewer
    (a short request) the value would differ from the batch one, so it says "warming up" instead."""
    from trademl.data.features.indicators import realized_vol

    rvol = realized_vol(ctx, window)
    rvol[ctx.segs.young(window)] = np.nan
    day_no = _session_clock(ctx)[0]
    _, starts, ends, _ = _days(ctx)
    summaries = _daily_quantiles(ctx, rvol)
    out = np.full(len(ctx), np.nan)
    for d, (s, e) in enumerate(zip(starts, ends)):
        ref = [summaries[j] for j in range(max(0, d - days), d)
               if summaries[j] is not None and day_no[s] - day_no[starts[j]] <= days + MAX_DAY_GAP_DAYS]
        if len(ref) == days:
            pooled = np.sort(np.concatenate(ref))
            out[s:e + 1] = np.searchsorted(pooled, rvol[s:e + 1], side="right") / len(pooled)
    out[~np.isfinite(rvol)] = np.nan
    return out


def _daily_quantiles(ctx: BarContext, values: np.ndarray) -> list:
    """Per day: REGIME_QUANTILES nearest-rank quantiles of its finite ``values`` on the bars opened
    on a multiple of REGIME_SAMPLE_MINUTES (None for none). A 60-bar volatility moves slowly: the
    sample loses nothing of its distribution and costs a fifth of the sort; being chosen by the
    clock, it is the same sample in a request's bars as in the whole file."""
    row = _days(ctx)[0]
    n_days = len(_days(ctx)[1])
    taken = np.flatnonzero(((ctx.stamps // NS_PER_MINUTE) % REGIME_SAMPLE_MINUTES == 0) & np.isfinite(values))
    day_of = row[taken]
    counts = np.bincount(day_of, minlength=n_days)
    firsts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    grid = np.full((n_days, max(1, int(counts.max(initial=0)))), np.nan)
    grid[day_of, np.arange(len(taken)) - firsts[day_of]] = values[taken]
    grid.sort(axis=1)  # NaN last
    probes = np.linspace(0.0, 1.0, REGIME_QUANTILES)
    return [grid[d, np.rint(probes * (n - 1)).astype(np.int64)] if n else None for d, n in enumerate(counts)]


def session_history(days: int) -> int:
    """Bars the serving path keeps so a feature reading ``days`` previous trading days is exact:
    those whole days and today's, at most BARS_PER_DAY_MAX bars each."""
    return (days + 1) * BARS_PER_DAY_MAX + 1


__all__ = [
    "higher_return", "higher_range", "higher_trend", "minutes_since_open", "opening_range_distance",
    "overnight_distance", "previous_day_distance", "volatility_percentile", "session_history",
]
