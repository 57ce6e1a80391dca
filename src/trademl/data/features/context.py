"""The bars as float64 numpy arrays, their segments, and intermediates shared by features.

Many features read the same intermediate (one-bar returns, true range, Wilder ATR, an
EMA of the close, the session of each bar): the context computes each once per call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from trademl.data.features import rolling
from trademl.segments import segment_ids
from trademl.errors import DataError
from trademl.segments import segment_start_mask

PRICE_COLUMNS = ("open", "high", "low", "close")
NS_PER_MINUTE = 60_000_000_000
NS_PER_DAY = 1440 * NS_PER_MINUTE
# CME's trading day rolls at 17:00 Chicago: 22:00 UTC in summer, 23:00 UTC in winter.
# 22:00 UTC falls in the daily halt in both seasons, so shifting stamps by 2 h puts every
# Globex session (Sunday evening included) on the calendar date it settles on.
TRADING_DAY_SHIFT_NS = 2 * 60 * NS_PER_MINUTE


def _finite_column(bars: pd.DataFrame, name: str, where: str) -> np.ndarray:
    values = bars[name].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isfinite(values.sum()):  # one read-only pass; a NaN or inf anywhere makes it non-finite
        return values
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"column {name!r} holds {values[row]} at row {row} ({bars.index[row]}); {int(bad.sum())} such rows",
            where=where,
            hint="load the bars with load_bars(..., repair=True) to drop them",
        )
    return values


class BarContext:
    """Arrays of one bars frame plus a cache of the intermediates features share."""

    def __init__(self, bars: pd.DataFrame, tick_size: float, max_gap_minutes: float | None = None,
                 market_context: pd.DataFrame | None = None):
        where = str(bars.attrs.get("source") or "bars")
        if not isinstance(bars.index, pd.DatetimeIndex) or bars.index.tz is None:
            raise DataError("bars need a tz-aware DatetimeIndex (UTC bar-open times)", where=f"{where}: index")
        missing = [c for c in PRICE_COLUMNS if c not in bars.columns]
        if missing:
            raise DataError(f"bars lack the column(s) {missing}", where=where)
        self.open, self.high, self.low, self.close = (_finite_column(bars, c, where) for c in PRICE_COLUMNS)
        self.has_volume = "volume" in bars.columns
        self.volume = _finite_column(bars, "volume", where) if self.has_volume else None
        self.stamps = bars.index.tz_convert("UTC").as_unit("ns").asi8
        backwards = np.flatnonzero(np.diff(self.stamps) <= 0)
        if len(backwards):
            row = int(backwards[0]) + 1
            raise DataError(
                f"timestamps must increase: row {row} ({bars.index[row]}) does not come after the one before",
                where=f"{where}: index",
                hint="sort the bars and drop duplicated stamps (load_bars does, with repair=True)",
            )
        self.seg = segment_ids(pd.DataFrame(index=bars.index, data=_contract_column(bars)), max_gap_minutes)
        self.segs = rolling.SegmentIndex(self.seg)
        contract = _contract_column(bars).get("contract")
        # runs of one contract, time gaps ignored: session levels of the day before may be read across
        # the daily halt but never across a roll
        self.contract_run = (np.cumsum(segment_start_mask(contract)) if contract is not None
                             else np.zeros(len(self.stamps), dtype=np.int64))
        # another instrument's bars (--context): its close as of each of our bars, NaN where stale
        self.context_close = (None if market_context is None
                              else aligned_context_close(market_context, self.stamps, max_gap_minutes))
        self.since = self.segs.since
        self.tick_size = float(tick_size)
        self._cache: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.close)

    def cached(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The intermediate named ``key``, computed on first use. Callers must not modify it."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # Intermediates ------------------------------------------------------------------

    @property
    def first_rows(self) -> np.ndarray:
        return self.segs.first_rows

    @property
    def prev_close(self) -> np.ndarray:
        """close[t-1] within the segment; at a segment start the bar's own open (no gap return)."""

        def make():
            prev = np.empty_like(self.close)
            prev[1:] = self.close[:-1]
            prev[self.first_rows] = self.open[self.first_rows]
            return prev

        return self.cached(("prev_close",), make)

    @property
    def close_change(self) -> np.ndarray:
        """close[t] - close[t-1] within the segment; 0 at a segment start."""

        def make():
            change = np.empty_like(self.close)
            change[0] = 0.0
            np.subtract(self.close[1:], self.close[:-1], out=change[1:])
            change[self.first_rows] = 0.0
            return change

        return self.cached(("close_change",), make)

    @property
    def log_close(self) -> np.ndarray:
        return self.cached(("log_close",), lambda: np.log(self.close))

    @property
    def ret1(self) -> np.ndarray:
        """One-bar log return; 0 at a segment start (no return across a gap or a roll)."""

        def make():
            r = np.empty_like(self.close)
            r[0] = 0.0
            np.subtract(self.log_close[1:], self.log_close[:-1], out=r[1:])
            r[self.first_rows] = 0.0
            return r

        return self.cached(("ret1",), make)

    @property
    def close_ref(self) -> np.ndarray:
        """First close of each bar's segment: the centre for precise rolling variances."""
        return self.cached(("close_ref",), lambda: self.segs.per_bar(self.close[self.first_rows]))

    def window_sum(self, key: str, values_fn: Callable[[], np.ndarray], window: int, x_first_valid: int = 0):
        """Rolling sum of the series ``key``; its prefix sums are shared by every window length."""
        prefix = self.cached(("prefix", key), lambda: rolling.BlockPrefix(values_fn()))
        return prefix.window_sum(window, self.segs, x_first_valid)

    def ema_of(self, key: str, values_fn: Callable[[], np.ndarray], alpha: float) -> np.ndarray:
        return self.cached(("ema", key, alpha), lambda: rolling.ema(values_fn(), alpha, self.segs))

    def ema_close(self, span: int) -> np.ndarray:
        return self.ema_of("close", lambda: self.close, 2.0 / (span + 1))

    @property
    def true_range(self) -> np.ndarray:
        """max(high, prev close) - min(low, prev close); the bar's own range at a segment start."""

        def make():
            prev = np.empty_like(self.close)
            prev[1:] = self.close[:-1]
            prev[self.first_rows] = self.close[self.first_rows]  # inside [low, high]: TR = high - low
            return np.maximum(self.high, prev) - np.minimum(self.low, prev)

        return self.cached(("true_range",), make)

    def atr(self, period: int) -> np.ndarray:
        """Wilder's ATR: EMA of the true range with alpha 1/period, seeded with the first TR."""
        return self.ema_of("true_range", lambda: self.true_range, 1.0 / period)

    @property
    def bar_range(self) -> np.ndarray:
        return self.cached(("bar_range",), lambda: self.high - self.low)

    @property
    def close_location(self) -> np.ndarray:
        """((close - low) - (high - close)) / (high - low) in [-1, 1]; 0 for a bar with no range."""

        def make():
            rng = self.bar_range
            num = (self.close - self.low) - (self.high - self.close)
            return np.divide(num, rng, out=np.zeros_like(num), where=rng > 0)

        return self.cached(("close_location",), make)

    @property
    def signed_volume(self) -> np.ndarray:
        """OBV increment: +volume on an up close, -volume on a down close, 0 otherwise."""
        return self.cached(("signed_volume",), lambda: np.sign(self.close_change) * self.volume)

    @property
    def obv(self) -> np.ndarray:
        """On-balance volume, 0 at each segment start."""

        def make():
            total = np.cumsum(self.signed_volume)
            return total - self.segs.per_bar(total[self.first_rows])

        return self.cached(("obv",), make)

    @property
    def trading_day(self) -> np.ndarray:
        return self.cached(("trading_day",), lambda: (self.stamps + TRADING_DAY_SHIFT_NS) // NS_PER_DAY)

    @property
    def sessions(self) -> rolling.SegmentIndex:
        """VWAP sessions: a new one at each segment start and each new trading day."""
        if "sessions" not in self._cache:
            day = self.trading_day
            new = segment_start_mask(day)  # a new trading day, or a new segment
            new[self.first_rows] = True
            self._cache["sessions"] = rolling.SegmentIndex(np.cumsum(new))
        return self._cache["sessions"]


def aligned_context_close(market_context: pd.DataFrame, stamps: np.ndarray, max_gap_minutes: float | None) -> np.ndarray:
    """The context instrument's close as of each of ``stamps`` (an as-of join: its last bar opened at
    or before ours, which closes when ours does, so nothing later is ever read); NaN where that bar
    is more than ``max_gap_minutes`` old or there is none."""
    from trademl.config import resolve_config

    if max_gap_minutes is None:
        max_gap_minutes = resolve_config().data.max_gap_minutes
    where = str(market_context.attrs.get("source") or "context bars")
    if not isinstance(market_context.index, pd.DatetimeIndex) or market_context.index.tz is None:
        raise DataError("context bars need a tz-aware DatetimeIndex (UTC bar-open times)", where=f"{where}: index")
    theirs = market_context.index.tz_convert("UTC").as_unit("ns").asi8
    if len(theirs) > 1 and (np.diff(theirs) <= 0).any():
        raise DataError("context bar timestamps must increase", where=f"{where}: index")
    close = _finite_column(market_context, "close", where)
    if not len(close):
        return np.full(len(stamps), np.nan)
    at = np.searchsorted(theirs, stamps, side="right") - 1
    ok = at >= 0
    ok[ok] = stamps[ok] - theirs[at[ok]] <= int(max_gap_minutes * NS_PER_MINUTE)
    return np.where(ok, close[np.maximum(at, 0)], np.nan)


def _contract_column(bars: pd.DataFrame) -> dict:
    """Only the ``contract`` column matters to segment_ids (a roll starts a segment)."""
    return {"contract": bars["contract"].to_numpy()} if "contract" in bars.columns else {}
