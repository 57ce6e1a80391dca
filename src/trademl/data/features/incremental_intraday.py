"""Incremental steps of the intraday features (trademl.data.features.intraday), one bar at a time.

The batch functions see the whole frame: they group bars into higher-timeframe bars and
trading days with numpy and read any of them. A live stream sees one closed bar at a time,
so each step here keeps only what the batch reads of the past: the higher bar being built
and the last few completed ones, today's running levels and yesterday's final ones, the
previous days' quantile summaries of the volatility. Every ``update`` is O(1) amortised
(a day's sort of its volatility sample is paid once, at the day's end) and returns the
value the batch gives at that bar; ``tests/test_incremental_intraday.py`` compares both.

The rules are the batch's, restated per bar:

- the session clock is Chicago's (DST included), its UTC offset asked once per new UTC hour;
- a trading day breaks on a new session day or a new contract run, and the day before may be
  read only within one contract run and at most MAX_DAY_GAP_DAYS calendar days back;
- a higher bar breaks on a new clock bucket or a new segment, and is read from the first bar
  after it, never across a segment start.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import deque
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np

from trademl.data.features import intraday
from trademl.data.features.context import NS_PER_DAY, NS_PER_MINUTE
from trademl.data.features.incremental import StreamBar
from trademl.data.features.intraday import (
    DAY_START_MINUTE, MAX_DAY_GAP_DAYS, REGIME_QUANTILES, REGIME_SAMPLE_MINUTES, SESSION_TIMEZONE,
)
from trademl.data.features.rolling import _BLOCK  # where the batch's prefix sums restart: ours must too

NS_PER_HOUR = 60 * NS_PER_MINUTE
# minute of the trading day (0 = 17:00 Chicago) of the regular session's open and close
RTH_OPEN_IN_DAY, RTH_CLOSE_IN_DAY = intraday._rth_minute_bounds()
_ZONE = ZoneInfo(SESSION_TIMEZONE)


# Shared machinery ------------------------------------------------------------------------------


class SessionClock:
    """(trading day number, minute in the trading day) of each stamp, as ``intraday._session_clock``.

    UTC offsets change only on whole UTC hours, so the zone is asked once per new hour."""

    def __init__(self):
        self._hour: int | None = None
        self._shift_ns = 0

    def at(self, stamp: int) -> tuple[int, int]:
        hour = stamp // NS_PER_HOUR
        if hour != self._hour:
            self._hour = hour
            self._shift_ns = _utc_offset_ns(hour * 3600) + (1440 - DAY_START_MINUTE) * NS_PER_MINUTE
        shifted = stamp + self._shift_ns  # 17:00 Chicago -> midnight of the next day
        return shifted // NS_PER_DAY, (shifted % NS_PER_DAY) // NS_PER_MINUTE


def _utc_offset_ns(utc_seconds: int) -> int:
    offset = datetime.fromtimestamp(utc_seconds, tz=timezone.utc).astimezone(_ZONE).utcoffset()
    return int(offset.total_seconds()) * 1_000_000_000


class TradingDays:
    """The trading day of each bar, as ``intraday._days``: a new day on a new session day or a new
    contract run; ``prev_ok`` says whether the day before today may be read."""

    def __init__(self):
        self.clock = SessionClock()
        self.day_no: int | None = None
        self.minute = 0
        self.new_day = False
        self.prev_ok = False

    def roll(self, today: float) -> float:
        """Yesterday's level once today's is ``today``: it, on a new day that may read the day before
        (NaN where it may not); call after ``advance``, only when ``new_day``."""
        return today if self.prev_ok else math.nan

    def advance(self, bar: StreamBar) -> None:
        day_no, self.minute = self.clock.at(bar.stamp)
        first = self.day_no is None
        self.new_day = first or bar.new_contract or day_no != self.day_no
        if self.new_day:
            self.prev_ok = not first and not bar.new_contract and day_no - self.day_no <= MAX_DAY_GAP_DAYS
        self.day_no = day_no


class BlockWindowSum:
    """Sum of the last ``window`` values pushed, rounded exactly as ``rolling.BlockPrefix`` rounds it.

    The batch subtracts prefix sums that restart every ``_BLOCK`` rows (counted from the frame's
    first bar); a plain running sum would differ in the last bits, and where the batch gets an
    exact 0 (a flat window) it would get 1e-22, flipping a ``> 0`` test or a percentile tie. So
    the same prefixes are kept here (the last ``window`` + 1 of them): the same operations on the
    same doubles, the same result, as long as the stream starts at the batch frame's first bar."""

    def __init__(self, window: int):
        if not 1 <= window <= _BLOCK:
            raise ValueError(f"window must be in 1..{_BLOCK}, got {window}")
        self.window = window
        self._row = 0  # prefix row of the last value (the prefix's row 0 is a leading 0)
        self._prefixes = deque([0.0], maxlen=window + 1)
        self._previous_block_total = math.nan

    def push(self, x: float) -> float:
        """Add the next value; the sum of the last ``window`` values (NaN before ``window`` of them)."""
        row = self._row + 1
        if row % _BLOCK == 0:  # a new block: its prefix restarts at this value
            self._previous_block_total = self._prefixes[-1]
            prefix = x
        else:
            prefix = self._prefixes[-1] + x
        self._prefixes.append(prefix)
        self._row = row
        if row < self.window:
            return math.nan
        total = prefix - self._prefixes[0]
        if (row - self.window) // _BLOCK != row // _BLOCK:  # the window's start is in the block before
            total += self._previous_block_total
        return total


def _distance_ticks(close: float, level: float, tick_size: float) -> float:
    return (close - level) / tick_size


# Higher timeframes -----------------------------------------------------------------------------


class _HigherBarStep(ABC):
    """Builds clock-aligned ``minutes`` bars per segment; subclasses say what they read of the
    completed ones. The value is fixed for the whole run of a higher bar: it reads only bars that
    closed before the run began."""

    def __init__(self, tick_size: float, minutes: int, keep: int = 1):
        self.bucket_ns = minutes * NS_PER_MINUTE
        self.completed = deque(maxlen=keep)  # (segment, open, high, low, close) of the last runs
        self.current: list | None = None  # [bucket, segment, open, high, low, close]
        self.segment = -1
        self.value = math.nan

    def update(self, bar: StreamBar, shared=None) -> float:
        if bar.new_segment:
            self.segment += 1
        bucket = bar.stamp // self.bucket_ns
        if self.current is None or bar.new_segment or bucket != self.current[0]:
            if self.current is not None:
                self.completed.append(tuple(self.current[1:]))
            self.current = [bucket, self.segment, bar.open, bar.high, bar.low, bar.close]
            # the run before this one is in an earlier segment exactly when this run opens one
            self.value = math.nan if bar.new_segment else self._read_completed()
        else:
            cur = self.current
            cur[3] = max(cur[3], bar.high)
            cur[4] = min(cur[4], bar.low)
            cur[5] = bar.close
        return self.value

    @abstractmethod
    def _read_completed(self) -> float:
        """The feature's value from ``self.completed`` (the last completed higher bars)."""


class HigherReturnStep(_HigherBarStep):
    """log(close / open) of the last completed ``minutes`` bar (intraday.higher_return)."""

    def _read_completed(self) -> float:
        _, open_, _, _, close = self.completed[-1]
        return math.log(close / open_)


class HigherRangeStep(_HigherBarStep):
    """log(high / low) of the last completed ``minutes`` bar (intraday.higher_range)."""

    def _read_completed(self) -> float:
        _, _, high, low, _ = self.completed[-1]
        return math.log(high / low)


class HigherTrendStep(_HigherBarStep):
    """log close-to-close return over the last ``bars`` completed bars (intraday.higher_trend)."""

    def __init__(self, tick_size: float, minutes: int, bars: int):
        super().__init__(tick_size, minutes, keep=bars + 1)
        self.bars = bars

    def _read_completed(self) -> float:
        if len(self.completed) <= self.bars:
            return math.nan
        first, last = self.completed[0], self.completed[-1]
        if first[0] != last[0]:  # the older close is in an earlier segment
            return math.nan
        return math.log(last[4]) - math.log(first[4])


# Session structure -----------------------------------------------------------------------------


class MinutesSinceOpenStep:
    """Minutes since 08:30 Chicago; negative in the overnight (intraday.minutes_since_open)."""

    def __init__(self, tick_size: float):
        self.clock = SessionClock()

    def update(self, bar: StreamBar, shared=None) -> float:
        return float(self.clock.at(bar.stamp)[1] - RTH_OPEN_IN_DAY)


def _extreme(level: float, value: float, take_max: bool) -> float:
    """The running max (min) with ``value``; NaN means none yet."""
    if math.isnan(level):
        return value
    return max(level, value) if take_max else min(level, value)


class OpeningRangeDistanceStep:
    """close - the opening range's high or low in ticks (intraday.opening_range_distance): today's
    once its ``minutes`` are over, before that the previous day's."""

    def __init__(self, tick_size: float, minutes: int, side: str):
        self.tick_size, self.minutes, self.take_max = tick_size, minutes, side == "high"
        self.days = TradingDays()
        self.today = math.nan  # today's range so far (its bars come before the range is read)
        self.yesterday = math.nan  # the previous day's whole range, NaN where it may not be read

    def update(self, bar: StreamBar, shared=None) -> float:
        days = self.days
        days.advance(bar)
        if days.new_day:
            self.yesterday = days.roll(self.today)
            self.today = math.nan
        if RTH_OPEN_IN_DAY <= days.minute < RTH_OPEN_IN_DAY + self.minutes:
            self.today = _extreme(self.today, bar.high if self.take_max else bar.low, self.take_max)
        level = self.today if days.minute >= RTH_OPEN_IN_DAY + self.minutes else self.yesterday
        return _distance_ticks(bar.close, level, self.tick_size)


class OvernightDistanceStep:
    """close - the overnight's high or low in ticks (intraday.overnight_distance): running during
    the overnight, the whole overnight's after it."""

    def __init__(self, tick_size: float, side: str):
        self.tick_size, self.take_max = tick_size, side == "high"
        self.days = TradingDays()
        self.level = math.nan

    def update(self, bar: StreamBar, shared=None) -> float:
        days = self.days
        days.advance(bar)
        if days.new_day:
            self.level = math.nan
        if days.minute < RTH_OPEN_IN_DAY:
            self.level = _extreme(self.level, bar.high if self.take_max else bar.low, self.take_max)
        return _distance_ticks(bar.close, self.level, self.tick_size)


class PreviousDayDistanceStep:
    """close - the previous trading day's high, low, close or settlement in ticks
    (intraday.previous_day_distance); the settlement is its last close before 15:00 Chicago."""

    def __init__(self, tick_size: float, level: str):
        if level not in ("high", "low", "close", "settle"):
            raise ValueError(f"unknown day level {level!r}")
        self.tick_size, self.level = tick_size, level
        self.days = TradingDays()
        self.today = math.nan
        self.yesterday = math.nan

    def update(self, bar: StreamBar, shared=None) -> float:
        days = self.days
        days.advance(bar)
        if days.new_day:
            self.yesterday = days.roll(self.today)
            self.today = math.nan
        self.today = self._with(bar, days.minute)
        return _distance_ticks(bar.close, self.yesterday, self.tick_size)

    def _with(self, bar: StreamBar, minute: int) -> float:
        """Today's level once ``bar`` is in."""
        if self.level == "high":
            return _extreme(self.today, bar.high, True)
        if self.level == "low":
            return _extreme(self.today, bar.low, False)
        if self.level == "close" or RTH_OPEN_IN_DAY <= minute < RTH_CLOSE_IN_DAY:
            return bar.close
        return self.today  # settle: a close outside the regular session leaves it as it was


# Volatility regime -----------------------------------------------------------------------------


class VolatilityPercentileStep:
    """Where rvol_<window> stands among the previous ``days`` trading days' values, 0..1
    (intraday.volatility_percentile).

    Today's sample (rvol on bars opened on a 5-minute clock multiple) is collected as the day
    runs and summarised by its REGIME_QUANTILES quantiles when the day ends; at each day's start
    the previous summaries are pooled and sorted once, and each bar is one binary search."""

    _PROBES = np.linspace(0.0, 1.0, REGIME_QUANTILES)

    def __init__(self, tick_size: float, window: int, days: int):
        self.window, self.n_days = window, days
        self.squares = BlockWindowSum(window)
        self.days = TradingDays()
        self.sample: list[float] = []
        self.summaries = deque(maxlen=days)  # (day number, quantiles or None) of the previous day rows
        self.pooled: list[float] | None = None

    def update(self, bar: StreamBar, shared=None) -> float:
        rvol = self._rvol(bar)
        days = self.days
        first = days.day_no is None
        previous_day = days.day_no
        days.advance(bar)
        if days.new_day:
            if not first:
                self.summaries.append((previous_day, self._summary(self.sample)))
            self.sample = []
            self.pooled = self._pool(days.day_no)
        if math.isfinite(rvol) and (bar.stamp // NS_PER_MINUTE) % REGIME_SAMPLE_MINUTES == 0:
            self.sample.append(rvol)
        if self.pooled is None or not math.isfinite(rvol):
            return math.nan
        return bisect_right(self.pooled, rvol) / len(self.pooled)

    def _rvol(self, bar: StreamBar) -> float:
        """rvol_<window>: root mean square of the last ``window`` one-bar returns of the segment."""
        total = self.squares.push(bar.ret1 * bar.ret1)
        if bar.since < self.window:
            return math.nan
        return math.sqrt(total / self.window)

    def _summary(self, sample: list[float]):
        if not sample:
            return None
        ordered = np.sort(np.asarray(sample))
        return ordered[np.rint(self._PROBES * (len(ordered) - 1)).astype(np.int64)]

    def _pool(self, today: int) -> list[float] | None:
        """The previous days' quantiles, sorted; None unless all ``days`` are there and recent."""
        ref = [q for day_no, q in self.summaries
               if q is not None and today - day_no <= self.n_days + MAX_DAY_GAP_DAYS]
        if len(ref) != self.n_days:
            return None
        return np.sort(np.concatenate(ref)).tolist()


STEPS = {
    intraday.higher_return: HigherReturnStep,
    intraday.higher_range: HigherRangeStep,
    intraday.higher_trend: HigherTrendStep,
    intraday.minutes_since_open: MinutesSinceOpenStep,
    intraday.opening_range_distance: OpeningRangeDistanceStep,
    intraday.overnight_distance: OvernightDistanceStep,
    intraday.previous_day_distance: PreviousDayDistanceStep,
    intraday.volatility_percentile: VolatilityPercentileStep,
}
