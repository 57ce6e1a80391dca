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
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

NS_PER_MINUTE = 60_000_000_000


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
