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

_BLOCK = 4096
# Largest exponent an EMA block may span: q**-L stays far from float64 overflow (1e308)
# even after multiplying inputs of 1e12 (a price times a large volume).
_MAX_BLOCK_EXPONENT = 500.0


class SegmentIndex:
    """Where the segments of a series start, and per-bar positions inside them."""

    def __init__(self, seg: np.ndarray):
        n = len(seg)
        is_start = np.ones(n, dtype=bool)
        if n:
            is_start[1:] = seg[1:] != seg[:-1]
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


def window_sum(x: np.ndarray, window: int, segs: SegmentIndex, x_first_valid: int = 0) -> np.ndarray:
    """Sum of x[t-window+1 .. t]; NaN where that window is not inside the segment.

    ``x_first_valid`` says how many leading bars of each segment hold no value of x
    (1 for a one-bar return): the window must start after them.
    """
    n = len(x)
    if not 1 <= window <= _BLOCK:
        raise ValueError(f"window must be in 1..{_BLOCK}, got {window}")
    out = np.empty(n)
    out[: window - 1] = np.nan
    if n < window:
        return out
    nb = -(-(n + 1) // _BLOCK)
    prefix = np.empty(nb * _BLOCK)
    prefix[0] = 0.0
    prefix[1 : n + 1] = x
    prefix[n + 1 :] = 0.0
    blocks = prefix.reshape(nb, _BLOCK)
    np.cumsum(blocks, axis=1, out=blocks)  # prefix restarts at every block
    totals = blocks[:, -1].copy()
    # Window of bar t = prefix[t+1] - prefix[t+1-window]; when the two ends fall in
    # adjacent blocks, the earlier block's total is added back.
    np.subtract(prefix[window : n + 1], prefix[: n + 1 - window], out=out[window - 1 :])
    block_starts = np.arange(1, nb) * _BLOCK
    crossing = (block_starts[:, None] + np.arange(window)[None, :] - 1).ravel()  # bar t = a - 1
    addend = np.repeat(totals[:-1], window)
    keep = (crossing >= window - 1) & (crossing < n)
    out[crossing[keep]] += addend[keep]
    return mask_warmup(out, segs, window - 1 + x_first_valid)


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
    mean_sq = window_mean(centred * centred, window, segs, x_first_valid)
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

    How: u[t] = q*u[t-1] + z[t] with q = 1-alpha, z = alpha*x except z = x at segment
    starts, runs in closed form block by block (u[j] = q**j * (cumsum(z[i] * q**-i) +
    q * carry), blocks short enough that q**-L stays finite; carries are a short scalar
    recursion over blocks). Then y = u - q**(since+1) * u[start-1] removes what the
    previous segment carried in. Relative rounding error ~ eps / alpha, as in a plain loop.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"EMA alpha must be in (0, 1), got {alpha}")
    n = len(x)
    q = 1.0 - alpha
    log_q = math.log(q)
    length = _block_length(log_q)
    nb = max(1, -(-n // length))
    buf = np.empty(1 + nb * length)  # buf[0] = u[-1] = 0, then u
    buf[0] = 0.0
    buf[1 + n :] = 0.0
    z = buf[1 : 1 + n]
    np.multiply(x, alpha, out=z)
    z[segs.first_rows] = x[segs.first_rows]
    blocks = buf[1:].reshape(nb, length)
    j = np.arange(length, dtype=np.float64)
    blocks *= np.exp(-log_q * j)
    np.cumsum(blocks, axis=1, out=blocks)
    ends = (blocks[:, -1] * q ** (length - 1)).tolist()
    carry_in = np.zeros(nb)
    decay, carry = q**length, 0.0
    for b in range(1, nb):  # a few hundred scalar steps for a million bars
        carry = decay * carry + ends[b - 1]
        carry_in[b] = carry
    blocks += (carry_in * q)[:, None]
    blocks *= np.exp(log_q * j)
    u = buf[1 : 1 + n]
    carried = buf[segs.first_rows]  # u[start - 1]; buf[0] = 0 for the first segment
    if len(carried) > 1:
        correction = np.exp(segs.since_plus_one() * log_q)
        correction *= segs.per_bar(carried)
        u -= correction
    return u


def ema_memory(alpha: float, tolerance: float = 1e-9) -> int:
    """Bars after which an EMA has forgotten its start to ``tolerance`` (for exact tails)."""
    return int(math.ceil(math.log(tolerance) / math.log(1.0 - alpha)))


def window_min_max(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of x[t-window+1 .. t] (window clipped at the array start, no masking).

    Doubling: the extreme over 2^k bars from two over 2^(k-1), then two overlapping
    power-of-two windows cover ``window`` exactly: O(n log window) instead of O(n window).
    """
    lo, hi = x.copy(), x.copy()
    span = 1
    while span * 2 <= window:
        lo[span:] = np.minimum(lo[span:], lo[:-span])
        hi[span:] = np.maximum(hi[span:], hi[:-span])
        span *= 2
    rest = window - span
    if rest:
        lo[rest:] = np.minimum(lo[rest:], lo[:-rest])
        hi[rest:] = np.maximum(hi[rest:], hi[:-rest])
    return lo, hi


def lagged_windows(x: np.ndarray, window: int) -> np.ndarray:
    """Read-only (n - window + 1, window) view: row r holds x[r .. r+window-1]."""
    return sliding_window_view(x, window)
