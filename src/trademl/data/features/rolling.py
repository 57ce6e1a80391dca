"""Segment-aware rolling machinery on numpy arrays, written once for every feature.

All helpers are causal (the value at t reads x[..t] only) and take ``since``, the number
of bars since the start of each bar's segment (trademl.data.segments.bars_since_start):
a window that would reach back across a segment start yields NaN, and an EMA restarts at
each segment start, so nothing bleeds across a gap or a contract roll.

Precision: window sums come from prefix sums that restart every ``_BLOCK`` rows, so the
rounding error of a window sum is bounded by the block, not by the length of the series
(a 1M-bar global cumsum of squared prices would lose the variance of a flat window).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_BLOCK = 4096
# Largest exponent an EMA block may span: q**-L stays far from float64 overflow (1e308)
# even after multiplying inputs of 1e12 (a price times a large volume).
_MAX_BLOCK_EXPONENT = 500.0


def mask_warmup(values: np.ndarray, since: np.ndarray, first_valid: int) -> np.ndarray:
    """Set NaN where fewer than ``first_valid`` bars of the segment precede (in place)."""
    if first_valid > 0:
        values[since < first_valid] = np.nan
    return values


def window_sum(x: np.ndarray, window: int, since: np.ndarray, x_first_valid: int = 0) -> np.ndarray:
    """Sum of x[t-window+1 .. t]; NaN where that window is not inside the segment.

    ``x_first_valid`` says how many leading bars of each segment hold no value of x
    (1 for a one-bar return): the window must start after them.
    """
    n = len(x)
    if not 1 <= window <= _BLOCK:
        raise ValueError(f"window must be in 1..{_BLOCK}, got {window}")
    out = np.full(n, np.nan)
    if n < window:
        return out
    nb = -(-(n + 1) // _BLOCK)
    prefix = np.zeros(nb * _BLOCK)
    prefix[1 : n + 1] = x
    blocks = prefix.reshape(nb, _BLOCK)
    np.cumsum(blocks, axis=1, out=blocks)  # prefix restarts at every block
    totals = blocks[:, -1].copy()
    # Window of bar t = prefix[t+1] - prefix[t+1-window]; when the two ends fall in
    # adjacent blocks, the earlier block's total is added back.
    out[window - 1 :] = prefix[window : n + 1] - prefix[: n + 1 - window]
    block_starts = np.arange(1, nb) * _BLOCK
    crossing = (block_starts[:, None] + np.arange(window)[None, :] - 1).ravel()  # bar t = a - 1
    addend = np.repeat(totals[:-1], window)
    keep = (crossing >= window - 1) & (crossing < n)
    out[crossing[keep]] += addend[keep]
    return mask_warmup(out, since, window - 1 + x_first_valid)


def window_mean(x, window, since, x_first_valid=0):
    return window_sum(x, window, since, x_first_valid) / window


def window_mean_std(x, window, since, ref, x_first_valid=0):
    """Rolling mean and population std (ddof=0) of x over ``window`` bars.

    ``ref`` is subtracted first (the segment's first value, typically): the variance is
    the same, and the sums of squares stay small enough to keep float64 precise.
    """
    centred = x - ref
    mean_c = window_sum(centred, window, since, x_first_valid) / window
    mean_sq = window_sum(centred * centred, window, since, x_first_valid) / window
    var = np.maximum(mean_sq - mean_c * mean_c, 0.0)
    return mean_c + ref, np.sqrt(var)


def segment_first(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The value of x at the first bar of each bar's segment."""
    return x[starts]


def _linear_filter(z: np.ndarray, q: float) -> np.ndarray:
    """u[t] = q * u[t-1] + z[t] with u[-1] = 0, in closed form block by block.

    Inside a block of length L: u[j] = q**j * cumsum(z[i] * q**-i) + q**(j+1) * carry,
    with L small enough that q**-L stays finite. The carries are a short recursion over
    blocks. The relative rounding error is about eps / (1 - q), as in the plain loop.
    """
    n = len(z)
    if n == 0:
        return np.zeros(0)
    log_q = math.log(q)
    length = int(min(_BLOCK, max(1.0, _MAX_BLOCK_EXPONENT / -log_q))) if log_q < 0 else _BLOCK
    nb = -(-n // length)
    padded = np.zeros(nb * length)
    padded[:n] = z
    blocks = padded.reshape(nb, length)
    j = np.arange(length, dtype=np.float64)
    blocks *= np.exp(-log_q * j)
    np.cumsum(blocks, axis=1, out=blocks)
    blocks *= np.exp(log_q * j)
    carry_in = np.zeros(nb)
    decay = q**length
    carry = 0.0
    ends = blocks[:, -1].tolist()
    for b in range(1, nb):  # a few hundred scalar steps for a million bars
        carry = decay * carry + ends[b - 1]
        carry_in[b] = carry
    blocks += carry_in[:, None] * np.exp(log_q * (j + 1))[None, :]
    return padded[:n]


def ema(x: np.ndarray, alpha: float, since: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Exponential moving average y[t] = alpha*x[t] + (1-alpha)*y[t-1], restarting per segment.

    At a segment start y = x (pandas ``ewm(alpha=..., adjust=False)`` on that segment
    alone). x must be finite. Warm-up masking is the caller's business (see FeatureSpec).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"EMA alpha must be in (0, 1), got {alpha}")
    q = 1.0 - alpha
    z = alpha * x
    is_start = since == 0
    z[is_start] = x[is_start]  # alpha * (x / alpha): the filter then starts at x itself
    u = _linear_filter(z, q)
    # Remove what the previous segment carried in: q**(since+1) * u[start-1].
    before = starts - 1
    carried = np.where(before >= 0, u[np.maximum(before, 0)], 0.0)
    return u - carried * np.exp(math.log(q) * (since + 1.0))


def ema_memory(alpha: float, tolerance: float = 1e-9) -> int:
    """Bars after which an EMA has forgotten its start to ``tolerance`` (for exact tails)."""
    q = 1.0 - alpha
    return 1 if q <= 0 else int(math.ceil(math.log(tolerance) / math.log(q)))


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
