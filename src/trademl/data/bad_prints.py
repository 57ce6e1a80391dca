"""Bad prints: a bar whose open, high, low or close is one bar off the market and back.

This is data validation, not a feature, so it may look at the bars on both sides of a
bar (a centred window): what makes a print bad is that the market did not go there,
which only the next bars tell.

For every bar the *neighbouring range* is spanned by the median close of the
``NEIGHBOURS`` bars before it and of the ``NEIGHBOURS`` bars after it. A genuine fast
move ends with the closes after it staying at the new price, so its bar lies inside
that range; a bad print lies outside it while both sides agree. How far outside is
measured in log price, in units of the local scale: the rolling MAD of the closes in a
centred window of ``window`` bars (Hampel's: the median distance of each close from its
own centred median, times 1.4826, a standard deviation for normal noise), never below
the file's median of it (the instrument's usual volatility) nor below one price step.
The MAD grows with a real move in the window, so a volatile stretch is judged by its
own standard. Only bars past the limit at the usual scale can be bad, so the local MAD
is measured at those alone: 1,000,000 bars take ~0.2-0.3 s (bench/README.md).

The first bar of a segment (after a gap: a session reopen, or a roll) carries the
opening match, whose high and low range wider in real data (bars of the bundled ES
file printed 2.4% wicks on the reopen after the daily halt), so its high and low are
held to ``reopen_mads`` instead of ``mads``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trademl.segments import bars_since_start, bars_to_end, segment_start_mask

PRICE_FIELDS = ("open", "high", "low", "close")
NEIGHBOURS = 3  # closes each side whose median spans the range: two bad bars in a row are still outvoted
# (_median_of_previous is written for exactly three)
_MAD_TO_SIGMA = 1.4826
_USUAL_SAMPLE = 4096  # bars whose spread gives the file's usual one: a median to ~2%, at a fixed cost


@dataclass(frozen=True)
class BadPrintRule:
    """The thresholds of the check ([data] bad_print_*); ``mads=None`` turns it off."""

    mads: float | None = 60.0
    reopen_mads: float = 200.0
    window: int = 31  # an even window is taken as the next odd one (centred)
    repair: str = "clip"
    max_gap_minutes: float = 15.0

    @classmethod
    def from_config(cls, data) -> BadPrintRule:
        """From a ``DataConfig`` ([data] section)."""
        return cls(data.bad_print_mads, data.bad_print_reopen_mads, data.bad_print_window,
                   data.bad_print_repair, data.max_gap_minutes)


@dataclass
class BadPrints:
    """What the check found: the bad bars (positions in the arrays given), why, and the
    prices with every bad field clipped to its neighbouring range."""

    rows: np.ndarray
    reasons: list[str]
    clipped: dict[str, np.ndarray]


def _median_of_previous(log_close: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Median of the up to three (NEIGHBOURS) closes before each bar, never reaching past
    ``available`` bars back (the segment's start: the market before a gap is not this bar's).
    In numpy, not a pandas rolling median: a few shifts are ten times faster."""
    prev = [np.r_[np.full(k, np.nan), log_close[:-k]] for k in (1, 2, 3)]
    a, b, c = prev
    two = (a + b) / 2
    three = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    k = np.minimum(available, NEIGHBOURS)
    return np.select([k == 1, k == 2, k == 3], [a, two, three], np.nan)


def _neighbour_range(log_close: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high end of the range spanned by the median close before and after each bar,
    within its segment. The first bar of a segment has the closes after it only. The last has
    none after it, so its own close stands in: a move into the end of a file (a live one) cannot
    be told from a bad close, so that close is trusted and only its open, high and low judged."""
    before = _median_of_previous(log_close, bars_since_start(seg))
    after = _median_of_previous(log_close[::-1], bars_to_end(seg)[::-1])[::-1]
    after = np.where(np.isnan(after), log_close, after)
    return np.fmin(before, after), np.fmax(before, after)


def _window_median(values: np.ndarray, at: np.ndarray, window: int) -> np.ndarray:
    """Median of ``values`` in the centred window around each position of ``at`` (cut at the
    array's ends; NaN values are skipped)."""
    half = window // 2
    padded = np.r_[np.full(half, np.nan), values, np.full(half, np.nan)]
    windows = sliding_window_view(padded, 2 * half + 1)[at]
    out = np.empty(len(at))
    full = ~np.isnan(windows).any(axis=1)  # np.median where it can: nanmedian is 3x slower
    out[full] = np.median(windows[full], axis=1)
    if not full.all():
        out[~full] = np.nanmedian(windows[~full], axis=1)
    return out


def _spread(log_close: np.ndarray, at: np.ndarray, window: int) -> np.ndarray:
    """Local spread (as a sigma) at each bar of ``at``: the window's median distance of each
    close from its own centred median (Hampel's MAD), so a steady trend through the window
    is not spread but a jump is. Measured only where asked: it costs a window of medians each."""
    half = window // 2
    near = np.unique((at[:, None] + np.arange(-half, half + 1)).clip(0, len(log_close) - 1))
    distance = np.full(len(log_close), np.nan)
    distance[near] = np.abs(log_close[near] - _window_median(log_close, near, window))
    return _window_median(distance, at, window) * _MAD_TO_SIGMA


def _usual_scale(log_close: np.ndarray, close: np.ndarray, window: int) -> float:
    """The instrument's usual spread: the median spread of ``_USUAL_SAMPLE`` bars evenly
    spread over the file, never below one price step."""
    sample = np.arange(0, len(log_close), max(1, len(log_close) // _USUAL_SAMPLE))
    spread = _spread(log_close, sample, window)
    steps = np.abs(np.diff(close))
    steps = steps[steps > 1e-9 * close[1:]]  # float noise is not a price step
    return max(float(np.median(spread)), float(steps.min() / np.median(close)) if len(steps) else 0.0)


def _scale(log_close: np.ndarray, usual: float, suspects: np.ndarray, window: int) -> np.ndarray:
    """Local scale of every bar: the usual one, or the bar's own spread where larger. Only
    the suspects (bars past the limit at the usual scale) can be flagged, since the local
    scale never falls below the usual one, so only their spread is measured."""
    scale = np.full(len(log_close), usual)
    at = np.flatnonzero(suspects)
    if len(at):
        scale[at] = np.maximum(usual, _spread(log_close, at, window))
    return np.where(scale > 0, scale, np.inf)  # a file whose closes never move: nothing to measure by


def _reopen_mask(stamps_ns: np.ndarray, contract, max_gap_minutes: float) -> np.ndarray:
    """True at the first bar after a gap or a roll (and at the first bar)."""
    first = np.ones(len(stamps_ns), dtype=bool)
    first[1:] = np.diff(stamps_ns) > int(max_gap_minutes * 60e9)
    if contract is not None:
        first |= segment_start_mask(np.asarray(contract, dtype=object))
    return first


def _outside(prices: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
    """How far (log price) each field lies outside the neighbouring range: <= 0 inside, NaN
    where there is no range (a one-bar segment has no neighbours)."""
    with np.errstate(invalid="ignore"):
        return {f: np.maximum(np.log(prices[f]) - hi, lo - np.log(prices[f])) for f in PRICE_FIELDS}


def find_bad_prints(prices: dict[str, np.ndarray], stamps_ns: np.ndarray, rule: BadPrintRule,
                    contract=None) -> BadPrints:
    """Check bars in time order (arrays of valid, positive prices) for bad prints."""
    n = len(stamps_ns)
    clipped = {f: np.asarray(prices[f], dtype=float).copy() for f in PRICE_FIELDS}
    if rule.mads is None or n < 3:
        return BadPrints(np.zeros(0, dtype=np.int64), [], clipped)
    close = clipped["close"]
    log_close = np.log(close)
    reopen = _reopen_mask(stamps_ns, contract, rule.max_gap_minutes)
    lo, hi = _neighbour_range(log_close, np.cumsum(reopen))
    off = _outside(clipped, lo, hi)
    limit = {f: np.where(reopen, rule.reopen_mads, rule.mads) if f in ("high", "low") else np.full(n, rule.mads)
             for f in PRICE_FIELDS}
    usual = _usual_scale(log_close, close, rule.window)
    with np.errstate(invalid="ignore"):
        suspects = np.logical_or.reduce([off[f] > limit[f] * usual for f in PRICE_FIELDS])
    scale = _scale(log_close, usual, suspects, rule.window)
    notes: dict[int, list[str]] = {}
    for field in PRICE_FIELDS:
        with np.errstate(invalid="ignore"):
            bad = off[field] > limit[field] * scale
        for i in np.flatnonzero(bad):
            notes.setdefault(int(i), []).append(
                _describe(field, clipped[field][i], lo[i], hi[i], off[field][i] / scale[i], limit[field][i]))
        clipped[field][bad] = np.clip(clipped[field][bad], np.exp(lo[bad]), np.exp(hi[bad]))
    _restore_bar_shape(clipped)
    rows = np.array(sorted(notes), dtype=np.int64)
    return BadPrints(rows, ["; ".join(notes[i]) for i in rows], clipped)


def _describe(field: str, value: float, lo: float, hi: float, mads: float, limit: float) -> str:
    ref = np.exp(lo) if value < np.exp(lo) else np.exp(hi)
    side = "below" if value < ref else "above"
    return (f"bad print: {field} {value:.10g} is {abs(value / ref - 1):.1%} {side} the neighbouring closes "
            f"({np.exp(lo):.10g} .. {np.exp(hi):.10g}), {mads:.0f} MADs (limit {limit:g})")


def _restore_bar_shape(p: dict[str, np.ndarray]) -> None:
    """After clipping, high and low hold open and close again (a low clipped up may pass the open)."""
    p["high"] = np.maximum(p["high"], np.maximum(p["open"], p["close"]))
    p["low"] = np.minimum(p["low"], np.minimum(p["open"], p["close"]))
