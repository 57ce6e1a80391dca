"""Segment-aware rolling machinery on numpy arrays, written once for every feature.

All helpers are causal (the value at t reads x[..t] only) and take a SegmentIndex: a
window that would reach back across a segment start yields NaN, and an EMA restarts at
each segment start, so nothing bleeds across a gap or a contract roll.

Precision: window sums come from prefix sums that restart every ``_BLOCK`` rows, so the
rounding error of a window sum is bounded by the block, not by the length of the series
(a 1M-bar global cumsum of squared prices would lose the variance of a flat window).
Speed: each helper makes as few full passes over the data as it can, writing into its
own buffers, because at a million bars the cost is memory traffic, not arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trademl.segments import segment_start_mask

_BLOCK = 4096
# Largest exponent an EMA block may span: q**-L stays far from float64 overflow (1e308)
# even after multiplying inputs of 1e12 (a price times a large volume).
_MAX_BLOCK_EXPONENT = 500.0


class SegmentIndex:
    """Where the segments of a series start, and per-bar positions inside them."""

    def __init__(self, seg: np.ndarray):
        n = len(seg)
        is_start = segment_start_mask(seg)
        self.first_rows = np.flatnonzero(is_start)
        self.lengths = np.diff(np.append(self.first_rows, n))
        self.since = np.arange(n) - self.per_bar(self.first_rows)
        self._young: dict[int, np.ndarray] = {}
        self._since_plus_one: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.since)

    def per_bar(self, per_segment: np.ndarray) -> np.ndarray:
        """Spread one value per segment over the segment's bars."""
        return np.repeat(per_segment, self.lengths)

    @property
    def starts(self) -> np.ndarray:
        """Index of the first bar of each bar's segment."""
        return self.per_bar(self.first_rows)

    def young(self, k: int) -> np.ndarray:
        """Rows with fewer than k bars of their segment before them (cached)."""
        if k not in self._young:
            self._young[k] = np.flatnonzero(self.since < k)
        return self._young[k]

    def since_plus_one(self) -> np.ndarray:
        if self._since_plus_one is None:
            self._since_plus_one = self.since + 1.0
        return self._since_plus_one


def mask_warmup(values: np.ndarray, segs: SegmentIndex, first_valid: int) -> np.ndarray:
    """Set NaN where fewer than ``first_valid`` bars of the segment precede (in place)."""
    if first_valid > 0:
        values[segs.young(first_valid)] = np.nan
    return values


class BlockPrefix:
    """Prefix sums of x that restart every ``_BLOCK`` rows: any window sum in one subtraction.

    Built once per series and shared by every window length that reads it.
    """

    def __init__(self, x: np.ndarray):
        n = len(x)
        nb = -(-(n + 1) // _BLOCK)
        prefix = np.empty(nb * _BLOCK)
        prefix[0] = 0.0
        prefix[1 : n + 1] = x
        prefix[n + 1 :] = 0.0
        blocks = prefix.reshape(nb, _BLOCK)
        np.cumsum(blocks, axis=1, out=blocks)
        self.n, self.prefix, self.totals = n, prefix, blocks[:, -1].copy()

    def window_sum(self, window: int, segs: SegmentIndex, x_first_valid: int = 0) -> np.ndarray:
        """Sum of x[t-window+1 .. t]; NaN where that window is not inside the segment.

        ``x_first_valid`` says how many leading bars of each segment hold no value of x
        (1 for a one-bar return): the window must start after them.
        """
        n, prefix = self.n, self.prefix
        if not 1 <= window <= _BLOCK:
            raise ValueError(f"window must be in 1..{_BLOCK}, got {window}")
        out = np.empty(n)
        out[: window - 1] = np.nan
        if n < window:
            return out
        # Window of bar t = prefix[t+1] - prefix[t+1-window]; when the two ends fall in
        # adjacent blocks, the earlier block's total is added back.
        np.subtract(prefix[window : n + 1], prefix[: n + 1 - window], out=out[window - 1 :])
        block_starts = np.arange(1, len(self.totals)) * _BLOCK
        crossing = (block_starts[:, None] + np.arange(window)[None, :] - 1).ravel()  # bar t = a - 1
        addend = np.repeat(self.totals[:-1], window)
        keep = (crossing >= window - 1) & (crossing < n)
        out[crossing[keep]] += addend[keep]
        return mask_warmup(out, segs, window - 1 + x_first_valid)


def window_sum(x: np.ndarray, window: int, segs: SegmentIndex, x_first_valid: int = 0) -> np.ndarray:
    """Sum of x[t-window+1 .. t]; NaN where that window is not inside the segment."""
    return BlockPrefix(x).window_sum(window, segs, x_first_valid)


def window_mean(x, window, segs, x_first_valid=0):
    out = window_sum(x, window, segs, x_first_valid)
    out /= window
    return out


def window_mean_std(x, window, segs, ref=None, x_first_valid=0):
    """Rolling mean and population std (ddof=0) of x over ``window`` bars.

    ``ref`` (per bar: the segment's first value, typically) is subtracted first: the
    variance is the same, and the sums of squares stay small enough to keep it precise.
    """
    centred = x - ref if ref is not None else x
    mean = window_mean(centred, window, segs, x_first_valid)
    if ref is not None:
        np.multiply(centred, centred, out=centred)  # our own copy: square it in place
        mean_sq = window_mean(centred, window, segs, x_first_valid)
    else:
        mean_sq = window_mean(x * x, window, segs, x_first_valid)
    del centred
    mean_sq -= mean * mean
    np.maximum(mean_sq, 0.0, out=mean_sq)
    std = np.sqrt(mean_sq, out=mean_sq)
    if ref is not None:
        mean += ref
    return mean, std


def _block_length(log_q: float) -> int:
    return int(min(_BLOCK, max(1.0, _MAX_BLOCK_EXPONENT / -log_q)))


def ema(x: np.ndarray, alpha: float, segs: SegmentIndex) -> np.ndarray:
    """Exponential moving average y[t] = alpha*x[t] + (1-alpha)*y[t-1], restarting per segment.

    At a segment start y = x (pandas ``ewm(alpha=..., adjust=False)`` on that segment
    alone). x must be finite. Warm-up masking is the caller's business (FeatureSpec).

    How, in five passes over the data: with q = 1 - alpha and z = alpha*x (z = x at a
    segment start), y[j] = q**j * (S[j] + K) inside a block of L rows, where
    S = cumsum(z[i] * q**-i) and K is constant on each run of rows sharing a block and a
    segment: -S[start-1] where the segment starts inside the block, q * y[end of previous
    block] where it carries on from it. Blocks are short enough that q**-L stays finite;
    the carries are a scalar recursion over blocks. Rounding ~ eps / alpha, as a plain loop.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"EMA alpha must be in (0, 1), got {alpha}")
    n = len(x)
    if n == 0:
        return np.zeros(0)
    q = 1.0 - alpha
    log_q = math.log(q)
    length = _block_length(log_q)
    nb = -(-n // length)
    up = np.exp(-log_q * np.arange(length))  # q**-j
    s = np.zeros((nb, length))
    flat = s.ravel()
    full = n // length
    np.multiply(x[: full * length].reshape(full, length), alpha * up, out=s[:full])
    rest = n - full * length
    if rest:
        np.multiply(x[full * length :], alpha * up[:rest], out=s[full, :rest])
    first = segs.first_rows
    flat[first] = x[first] * up[first % length]  # z = x at a segment start
    np.cumsum(s, axis=1, out=s)

    # Runs of rows inside one block and one segment, and the constant K of each.
    run_starts = np.union1d(np.arange(nb) * length, first)
    starts_segment = np.zeros(len(run_starts), dtype=bool)
    starts_segment[np.searchsorted(run_starts, first)] = True
    k = np.zeros(len(run_starts))
    inside = starts_segment & (run_starts % length > 0)
    k[inside] = -flat[run_starts[inside] - 1]
    last_run = (np.searchsorted(run_starts, np.arange(1, nb) * length) - 1).tolist()
    block_end = s[:, -1].tolist()
    continues = (~starts_segment).tolist()
    q_end = q ** (length - 1)
    for b in range(1, nb):  # a few hundred scalar steps for a million bars
        r = last_run[b - 1]
        if continues[r + 1]:  # block b opens inside the segment that ended block b-1
            k[r + 1] = q * q_end * (block_end[b - 1] + k[r])
    flat[:n] += np.repeat(k, np.diff(np.append(run_starts, n)))
    s *= np.exp(log_q * np.arange(length))
    return flat[:n]


def ema_memory(alpha: float, tolerance: float = 1e-9) -> int:
    """Bars after which an EMA has forgotten its start to ``tolerance`` (for exact tails)."""
    return int(math.ceil(math.log(tolerance) / math.log(1.0 - alpha)))


def window_min_max(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of x[t-window+1 .. t] (window clipped at the array start, no masking).

    Doubling: the extreme over 2^k bars from two over 2^(k-1), then two overlapping
    power-of-two windows cover ``window`` exactly: O(n log window) instead of O(n window).
    Two buffers per extreme, swapped at each step: no temporary arrays.
    """
    return _window_extreme(x, window, np.minimum), _window_extreme(x, window, np.maximum)


def _window_extreme(x: np.ndarray, window: int, pick) -> np.ndarray:
    cur, nxt = x.copy(), np.empty_like(x)
    span = 1
    steps = []
    while span * 2 <= window:
        steps.append(span)
        span *= 2
    if window - span:
        steps.append(window - span)
    for step in steps:
        nxt[:step] = cur[:step]
        pick(cur[step:], cur[:-step], out=nxt[step:])
        cur, nxt = nxt, cur
    return cur


def lagged_windows(x: np.ndarray, window: int) -> np.ndarray:
    """Read-only (n - window + 1, window) view: row r holds x[r .. r+window-1]."""
    return sliding_window_view(x, window)
