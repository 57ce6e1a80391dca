"""The bar stream: per-symbol state so that a bot sends one closed bar a minute, not 1,500.

``POST /v1/bars`` (``EnsemblePredictor.push_bars``) hands each new bar to the symbol's
``SymbolStream``: the incremental features (``trademl.data.features.incremental``) take it in
O(1) and the last feature rows the models read (the LSTM's window) are kept. The prediction
is then made by the same ``predict_with`` as ``/v1/predict``, on the same feature rows a
request carrying the whole history would give: stream and batch cannot disagree.

Rules a live feed needs:
- bars must come in time order; a bar older than the stream's last one, or one with the last
  one's stamp but other values, is refused (409, kind ``stream_conflict``); the same bar sent
  again (a retry) is taken as already seen and changes nothing;
- a gap or a roll starts a new segment exactly as the dataset's rule does (SegmentTracker);
- the state belongs to one loaded model set: when a reload changes the features, the contract
  or the gap rule, the stream is rebuilt from the raw bars it kept (as many as an exact
  ``/v1/predict`` needs), and the answer warns once;
- the state lives in memory: after a restart it is rebuilt from the next call's history (or
  ``warm_up`` from a bars file), and ``drop`` forgets a symbol.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from trademl.predict.features_online import OnlineFeatures
from trademl.predict.request import RequestError


@dataclass(frozen=True)
class RawBar:
    """One bar as the stream keeps it: what decides equality (a retry) and what a rebuild replays."""

    stamp: int  # ns since the epoch, UTC
    open: float
    high: float
    low: float
    close: float
    volume: float  # NaN: the feed has no volume
    extras: tuple  # ((name, value), ...) of the bar's extra numeric fields, sorted

    @classmethod
    def of(cls, bar) -> "RawBar":
        stamp = int(bar.timestamp.timestamp() * 1e6) * 1000  # microseconds are what a datetime holds
        volume = math.nan if bar.volume is None else float(bar.volume)
        extras = tuple(sorted((k, float(v)) for k, v in (bar.model_extra or {}).items()))
        return cls(stamp, float(bar.open), float(bar.high), float(bar.low), float(bar.close), volume, extras)

    def same_values(self, other: "RawBar") -> bool:
        mine, theirs = (self.open, self.high, self.low, self.close, self.volume), (
            other.open, other.high, other.low, other.close, other.volume)
        return all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(mine, theirs)) and \
            self.extras == other.extras


@dataclass(frozen=True)
class StreamKey:
    """What a stream's state depends on: a loaded set with another key needs a rebuilt state."""

    feature_names: tuple
    tick_size: float
    max_gap_minutes: float
    rows: int  # feature rows kept: the longest window a model reads
    bars: int  # raw bars kept: enough for an exact rebuild


class SymbolStream:
    """One symbol's state: its incremental features, the last feature rows and raw bars."""

    def __init__(self, key: StreamKey):
        from trademl.data.features.incremental import IncrementalFeatures

        self.key = key
        self.features = IncrementalFeatures(list(key.feature_names), key.tick_size, key.max_gap_minutes)
        self.rows: deque = deque(maxlen=key.rows)
        self.segments: deque = deque(maxlen=key.rows)
        self.raw: deque = deque(maxlen=key.bars)  # (RawBar, the context close it was given)
        self.segment = -1
        self.context_stamp, self.context_close = None, math.nan  # the newest context bar seen
        self.has_volume: bool | None = None

    @property
    def last(self) -> RawBar | None:
        return self.raw[-1][0] if self.raw else None

    def take(self, bars: list, context_bars: list | None = None) -> int:
        """Push the bars the stream has not seen (in order); the number taken. Raises RequestError
        (kind stream_conflict) for a bar older than the last one or a changed last bar, before any
        state changes: a refused call leaves the stream as it was."""
        new = self._new_bars([RawBar.of(b) for b in bars])
        context = [RawBar.of(b) for b in context_bars or ()]  # in time order (the request's rule)
        at = 0
        for bar in new:
            at = self._take_context(bar.stamp, context, at)
            self._push(bar, self._context_close(bar.stamp))
        return len(new)

    def _new_bars(self, bars: list[RawBar]) -> list[RawBar]:
        """The bars after the stream's last one. Bars up to it may be sent again (a retry, or a bot
        resending its last few) when they equal what the stream took; a bar it never took, or one
        that differs, is a conflict."""
        last = self.last
        if last is None:
            new = bars
        else:
            known = {b.stamp: b for b, _ in self.raw} if bars[0].stamp <= last.stamp else {}
            oldest_kept = self.raw[0][0].stamp
            # history sent again, leading up to the stream's last bar (a bot that restarted): its bars
            # before the span the stream keeps cannot be checked, and change nothing
            resent = any(b.stamp == last.stamp for b in bars)
            for i, bar in enumerate(bars):
                if bar.stamp > last.stamp:
                    break
                seen = known.get(bar.stamp)
                if seen is None and (bar.stamp >= oldest_kept or not resent):
                    raise RequestError(f"opened at {_iso(bar.stamp)}, before the stream's last bar "
                                       f"({_iso(last.stamp)}), and is not a bar the stream took: bars must come "
                                       "in time order", field=f"bars[{i}]", kind="stream_conflict")
                if seen is not None and not bar.same_values(seen):
                    raise RequestError(f"has the stamp of a bar the stream took ({_iso(bar.stamp)}) but other "
                                       "values: a closed bar does not change (delete the symbol's stream to start "
                                       "it again)", field=f"bars[{i}]", kind="stream_conflict")
            new = [b for b in bars if b.stamp > last.stamp]
        self._check_volume(new)
        return new

    def _check_volume(self, bars: list[RawBar]) -> None:
        """A feed has volume on every bar or on none, and the models' volume features need it."""
        from trademl.data.features import FEATURES

        for i, bar in enumerate(bars):
            has = not math.isnan(bar.volume)
            if self.has_volume is None and not has:
                needing = [n for n in self.key.feature_names if n in FEATURES and FEATURES[n].needs_volume]
                if needing:
                    raise RequestError(f"the bars have no volume and the models read the volume features "
                                       f"{needing[:5]}", field=f"bars[{i}].volume")
            if self.has_volume is not None and has != self.has_volume:
                raise RequestError("volume is given for some bars and not for others", field=f"bars[{i}].volume",
                                   kind="stream_conflict")
            self.has_volume = has

    def _take_context(self, stamp: int, context: list[RawBar], at: int) -> int:
        """Advance through the call's context bars to the last one opened at or before ``stamp``
        (one pass over them for the whole call); the index of the first one not taken."""
        while at < len(context) and context[at].stamp <= stamp:
            if self.context_stamp is None or context[at].stamp > self.context_stamp:
                self.context_stamp, self.context_close = context[at].stamp, context[at].close
            at += 1
        return at

    def _context_close(self, stamp: int) -> float:
        """The context's close as of our bar (aligned_context_close's rule: its last bar opened at or
        before ours, at most max_gap_minutes old), from the context bars seen so far."""
        if self.context_stamp is None or stamp - self.context_stamp > self.key.max_gap_minutes * 60e9:
            return math.nan
        return self.context_close

    def _push(self, bar: RawBar, context_close: float) -> None:
        row = self.features.push(bar.stamp, bar.open, bar.high, bar.low, bar.close, bar.volume,
                                 extras=dict(bar.extras), context_close=context_close)
        if self.features.last_bar.new_segment:
            self.segment += 1
        self.rows.append(row)
        self.segments.append(self.segment)
        self.raw.append((bar, context_close))

    def online(self) -> OnlineFeatures:
        """The kept feature rows as the request path's OnlineFeatures (oldest first)."""
        return OnlineFeatures(np.array(self.rows, dtype=np.float32), np.array(self.segments, dtype=np.int32),
                              _iso(self.last.stamp))

    def rebuilt(self, key: StreamKey) -> "SymbolStream":
        """A stream for another model set, fed the raw bars this one kept."""
        fresh = SymbolStream(key)
        fresh.has_volume = self.has_volume
        fresh.context_stamp, fresh.context_close = self.context_stamp, self.context_close
        for bar, context_close in self.raw:
            fresh._push(bar, context_close)
        return fresh


def _iso(stamp_ns: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(stamp_ns / 1e9, tz=timezone.utc).isoformat()


class BarStreams:
    """Every symbol's stream, for one predictor. One lock per symbol: two pushes of one symbol
    never interleave, pushes of different symbols run side by side."""

    def __init__(self, max_streams: int = 64):
        self.max_streams = max_streams
        self._streams: dict[str, SymbolStream] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, symbol: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(symbol, threading.Lock())

    def stream(self, symbol: str, key: StreamKey, warnings: list[str]) -> SymbolStream:
        """The symbol's stream for ``key`` (call under ``lock(symbol)``): new, kept, or rebuilt."""
        current = self._streams.get(symbol)
        if current is None:
            with self._guard:  # the cap holds however many new symbols arrive at once
                if len(self._streams) >= self.max_streams:
                    raise RequestError(f"the server already keeps {len(self._streams)} streams ([serve] max_streams): "
                                       "delete one of them (DELETE on its bar stream) before starting another",
                                       field="symbol", kind="stream_conflict")
                current = self._streams[symbol] = SymbolStream(key)
        elif current.key != key:
            current = self._streams[symbol] = current.rebuilt(key)
            warnings.append(f"the models changed: the {symbol} stream was rebuilt from its last {len(current.raw)} bars")
        return current

    def drop(self, symbol: str) -> bool:
        with self.lock(symbol):
            return self._streams.pop(symbol, None) is not None

    def symbols(self) -> dict[str, int]:
        """{symbol: bars seen}."""
        return {s: st.features.bars_seen for s, st in list(self._streams.items())}


def stream_key(models, spec, config) -> StreamKey:
    """The state ``models`` read from a stream of ``spec``'s bars."""
    return StreamKey(tuple(models.feature_names), float(spec.tick_size), float(config.data.max_gap_minutes),
                     max(int(models.history), 1), int(models.bars_needed() or models.history))
