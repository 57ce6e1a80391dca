"""Incremental features: one closed bar in, its feature row out, equal to the batch row.

The batch code (``compute_features`` over a whole frame) stays the reference; this module
keeps, for one instrument, the running state every feature needs (its EMAs, the windows of
its rolling sums, the session's running sums, the day's levels) so that a live stream pays
O(1) (or O(the feature's window)) per bar instead of recomputing thousands of bars of
history. Every registered feature has a step (``FeatureSpec.step``): a factory
``step(tick_size, **params)`` of an object whose ``update(bar, shared)`` returns the value the
batch gives at that bar, before the engine's warm-up masking. ``tests/test_incremental_features.py``
runs both over whole files and compares them to float32 precision.

What a step may read is a ``StreamBar`` (the bar and its segment facts, computed once per
bar by ``SegmentTracker`` with the rule of ``trademl.segments.segment_ids``) and ``Shared``
(the intermediates several features read: EMAs, rolling windows, the session's sums), each
updated once per bar however many features read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from trademl.data.features.context import NS_PER_DAY, TRADING_DAY_SHIFT_NS



@dataclass
class StreamBar:
    """One closed bar as the stream sees it, with the facts about its place every step shares."""

    stamp: int  # bar open, ns since the epoch, UTC
    open: float
    high: float
    low: float
    close: float
    volume: float  # NaN when the bars carry no volume
    new_segment: bool  # first bar of a segment: the first bar, a gap over max_gap_minutes, or a roll
    new_contract: bool  # first bar of a run of one contract: the first bar or a roll (BarContext.contract_run)
    since: int  # bars of its segment before it (0 when new_segment)
    log_close: float
    ret1: float  # one-bar log return; 0 when new_segment (no return across a gap or a roll)
    close_change: float  # close - previous close; 0 when new_segment
    prev_close: float  # the previous close; this bar's own close when new_segment
    context_close: float = math.nan  # the context instrument's close as of this bar, NaN when none or stale


class SegmentTracker:
    """Turns bars, one at a time, into StreamBars: the segment rule of ``segment_ids`` (a gap longer
    than ``max_gap_minutes`` or a new contract starts a segment) applied to the newest bar only."""

    def __init__(self, max_gap_minutes: float):
        self.max_gap_ns = int(max_gap_minutes * 60e9)
        self.last_stamp: int | None = None
        self.last_contract = None
        self.last_close = math.nan
        self.last_log_close = math.nan
        self.since = 0

    def bar(self, stamp: int, open_: float, high: float, low: float, close: float, volume: float = math.nan,
            contract=None, context_close: float = math.nan) -> StreamBar:
        first = self.last_stamp is None
        new_contract = first or contract != self.last_contract
        new_segment = first or new_contract or stamp - self.last_stamp > self.max_gap_ns
        self.since = 0 if new_segment else self.since + 1
        log_close = math.log(close)
        if new_segment:
            ret1, change, prev = 0.0, 0.0, close
        else:
            ret1, change, prev = log_close - self.last_log_close, close - self.last_close, self.last_close
        self.last_stamp, self.last_contract = stamp, contract
        self.last_close, self.last_log_close = close, log_close
        return StreamBar(stamp, open_, high, low, close, volume, new_segment, new_contract, self.since, log_close,
                         ret1, change, prev, context_close)


def stream_bars(bars, max_gap_minutes: float, context_close: np.ndarray | None = None) -> Iterator[StreamBar]:
    """The StreamBars of a bars frame, in order (what a stream fed those bars one by one sees);
    ``context_close``: the context's close as of each bar (``aligned_context_close``), if any."""
    tracker = SegmentTracker(max_gap_minutes)
    stamps = bars.index.tz_convert("UTC").as_unit("ns").asi8
    cols = [bars[c].to_numpy(np.float64) for c in ("open", "high", "low", "close")]
    volume = bars["volume"].to_numpy(np.float64) if "volume" in bars.columns else np.full(len(bars), np.nan)
    contract = bars["contract"].to_numpy() if "contract" in bars.columns else [None] * len(bars)
    ctx = context_close if context_close is not None else np.full(len(bars), np.nan)
    for i in range(len(bars)):
        yield tracker.bar(int(stamps[i]), float(cols[0][i]), float(cols[1][i]), float(cols[2][i]),
                          float(cols[3][i]), float(volume[i]), contract[i], float(ctx[i]))


class RollingWindow:
    """The latest values of one series inside the current segment (a new segment empties it):
    what a rolling sum over the last ``w`` bars reads. Sums are exact (``math.fsum``) over the
    window itself, so a stream of any length never drifts the way a running sum would."""

    __slots__ = ("values", "maxlen", "bar_id")

    def __init__(self):
        self.values: list[float] = []
        self.maxlen = 1
        self.bar_id = -1

    def sum(self, w: int) -> float:
        return math.fsum(self.values[-w:])

    def sum_of_squares(self, w: int) -> float:
        return math.fsum([v * v for v in self.values[-w:]])

    def mean_std(self, w: int) -> tuple[float, float]:
        """Mean and population std (ddof 0) the way ``rolling.window_mean_std`` forms them
        (E[x^2] - E[x]^2, clipped at 0), so a flat window gives exactly the batch's 0."""
        mean = self.sum(w) / w
        var = self.sum_of_squares(w) / w - mean * mean
        return mean, math.sqrt(max(var, 0.0))


class Shared:
    """The intermediates of the newest bar that several features read (BarContext's, one bar at a
    time): each EMA and each rolling window is updated once per bar, whoever asks first."""

    def __init__(self, tick_size: float):
        self.tick_size = float(tick_size)
        self.bar_id = -1
        self._emas: dict[tuple, list] = {}  # (key, alpha) -> [value, bar_id]
        self._windows: dict[str, RollingWindow] = {}
        self.close_ref = math.nan  # first close of the segment: the centre of precise variances
        self.obv = 0.0
        self._session_day = None
        self._session_pv = self._session_volume = 0.0

    def advance(self, bar: StreamBar) -> None:
        """Take the newest bar: its one-bar intermediates, the segment's and the session's sums."""
        self.bar_id += 1
        self.bar = bar
        if bar.new_segment:
            self.close_ref = bar.close
            self.obv = 0.0
            for window in self._windows.values():
                window.values.clear()
        for window in self._windows.values():  # keep what the longest reader needs, amortised O(1)
            if len(window.values) > 2 * window.maxlen:
                del window.values[: -window.maxlen]
        self.bar_range = bar.high - bar.low
        # true range against the previous close; at a segment start the bar's own range
        self.true_range = max(bar.high, bar.prev_close) - min(bar.low, bar.prev_close)
        num = (bar.close - bar.low) - (bar.high - bar.close)
        self.close_location = num / self.bar_range if self.bar_range > 0 else 0.0
        self.typical = (bar.high + bar.low + bar.close) / 3.0
        change = bar.close_change
        self.signed_volume = float((change > 0) - (change < 0)) * bar.volume
        self.obv += self.signed_volume  # 0 at a start: the change there is 0
        self.trading_day = (bar.stamp + TRADING_DAY_SHIFT_NS) // NS_PER_DAY
        self._advance_session(bar)

    def _advance_session(self, bar: StreamBar) -> None:
        """VWAP's session sums: a session restarts at each segment start and each trading day."""
        if bar.new_segment or self.trading_day != self._session_day:
            self._session_day = self.trading_day
            self._session_pv = self._session_volume = 0.0
        if math.isfinite(bar.volume):
            self._session_pv += self.typical * bar.volume
            self._session_volume += bar.volume

    @property
    def session_vwap(self) -> float:
        """The session's VWAP of typical prices; the close before any volume traded."""
        return self._session_pv / self._session_volume if self._session_volume > 0 else self.bar.close

    def ema(self, key: str, alpha: float, value: Callable[[], float]) -> float:
        """EMA of the series ``key``: y = value at a segment start, else alpha*value + (1-alpha)*y."""
        state = self._emas.get((key, alpha))
        if state is None:
            state = self._emas[(key, alpha)] = [math.nan, -1]
        if state[1] != self.bar_id:
            x = value()
            state[0] = x if self.bar.new_segment else alpha * x + (1.0 - alpha) * state[0]
            state[1] = self.bar_id
        return state[0]

    def ema_close(self, span: int) -> float:
        return self.ema("close", 2.0 / (span + 1), lambda: self.bar.close)

    def atr(self, period: int) -> float:
        """Wilder's ATR: EMA of the true range with alpha 1/period."""
        return self.ema("true_range", 1.0 / period, lambda: self.true_range)

    def window(self, key: str, length: int, value: Callable[[], float]) -> RollingWindow:
        """The rolling window of the series ``key``, holding at least ``length`` values once the
        segment has them; the newest bar's value is pushed once."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = RollingWindow()
        window.maxlen = max(window.maxlen, length)
        if window.bar_id != self.bar_id:
            window.values.append(value())
            window.bar_id = self.bar_id
        return window


class IncrementalFeatures:
    """The running state of ``names`` over one instrument's bars: ``push`` one closed bar, get its
    feature row (float32, the models' order), equal to compute_features' row for it over the
    whole history. Names that are not registered features are extra columns passed through from
    each bar (``extras``), as compute_features passes ``extra_columns``."""

    def __init__(self, names: list[str], tick_size: float, max_gap_minutes: float):
        from trademl.data.features.registry import FEATURES

        self.names = list(names)
        self.tracker = SegmentTracker(max_gap_minutes)
        self.shared = Shared(tick_size)
        self._specs = [FEATURES.get(n) for n in self.names]
        self._steps = [spec.step(tick_size, **spec.params) if spec is not None else None for spec in self._specs]
        self.bars_seen = 0

    def push(self, stamp: int, open_: float, high: float, low: float, close: float, volume: float = math.nan,
             contract=None, extras: dict | None = None, context_close: float = math.nan) -> np.ndarray:
        """The feature row of this bar (the next one of the stream; the caller checks the order)."""
        return self.take(self.tracker.bar(int(stamp), float(open_), float(high), float(low), float(close),
                                          float(volume), contract, float(context_close)), extras)

    def take(self, bar: StreamBar, extras: dict | None = None) -> np.ndarray:
        """The feature row of a StreamBar already placed in its segment (``push`` places it; a
        whole frame comes as StreamBars from ``stream_bars``)."""
        self.last_bar = bar
        self.shared.advance(bar)
        self.bars_seen += 1
        row = np.empty(len(self.names), dtype=np.float32)
        for j, (name, spec, step) in enumerate(zip(self.names, self._specs, self._steps)):
            if spec is None:
                row[j] = (extras or {}).get(name, math.nan)
            elif bar.since < spec.warmup:
                step.update(bar, self.shared)  # its state still moves during the warm-up
                row[j] = math.nan
            else:
                row[j] = step.update(bar, self.shared)
        return row


def stepper(fn):
    """A step made of a function ``fn(bar, shared, tick_size, **params) -> float`` whose state all
    lives in ``Shared`` (the registry's steps for the single-timeframe indicators)."""

    class FunctionStep:
        __slots__ = ("tick_size", "params")

        def __init__(self, tick_size: float, **params):
            self.tick_size, self.params = float(tick_size), params

        def update(self, bar: StreamBar, shared: Shared) -> float:
            return fn(bar, shared, self.tick_size, **self.params)

    FunctionStep.__name__ = FunctionStep.__qualname__ = f"{fn.__name__}_step"
    return FunctionStep
