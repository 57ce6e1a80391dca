"""Rolling volume profile and its point of control (POC), vectorised.

The profile of bar t puts the volume of each of the last ``window`` bars of the segment
into the price bin (``bin_size`` wide, a multiple of the tick) of that bar's typical price
(high + low + close) / 3. The POC is the bin holding the most volume (ties: the lowest
price), reported as the bin's centre.

How it stays fast: every window spans only a few bins, so each bar gets a dense
histogram as wide as its own window's price range (rounded up to a power of two, rows
of similar width processed together), filled by one ``np.bincount`` per batch:
O(n * (window + range)) work in C and no Python loop per bar.
"""

from __future__ import annotations

import numpy as np

from trademl.data.features.rolling import SegmentIndex, lagged_windows, window_min_max, window_sum

_CELLS_PER_BATCH = 1 << 16  # histogram cells per bincount call: 512 KB stays in cache (measured fastest)


def price_bins(price: np.ndarray, bin_size: float) -> np.ndarray:
    """Integer bin of each price; the tiny nudge keeps exact multiples in their own bin."""
    return np.floor(price / bin_size + 1e-9).astype(np.int64)


def rolling_poc(price: np.ndarray, volume: np.ndarray, segs: SegmentIndex, window: int, bin_size: float) -> np.ndarray:
    """Centre price of the POC bin of the last ``window`` bars; NaN in warm-up or with no volume."""
    n = len(price)
    poc = np.full(n, np.nan)
    if n < window:
        return poc
    bins = price_bins(price, bin_size)
    lowest, highest = window_min_max(bins, window)
    traded = window_sum(volume, window, segs) > 0  # NaN (warm-up) compares False
    rows = np.flatnonzero(traded)
    width = highest[rows] - lowest[rows] + 1
    width_class = np.ceil(np.log2(width)).astype(np.int64)
    bin_windows = lagged_windows(bins, window)  # row t - window + 1 holds bins[t-window+1 .. t]
    volume_windows = lagged_windows(volume, window)
    for cls in np.unique(width_class):
        cls_rows = rows[width_class == cls]
        cells = 1 << int(cls)
        batch = max(1, _CELLS_PER_BATCH // max(cells, window))
        for lo in range(0, len(cls_rows), batch):
            t = cls_rows[lo : lo + batch]
            base = lowest[t]
            offsets = bin_windows[t - (window - 1)] - base[:, None]
            offsets += (np.arange(len(t)) * cells)[:, None]
            hist = np.bincount(
                offsets.ravel(), weights=volume_windows[t - (window - 1)].ravel(), minlength=len(t) * cells
            ).reshape(len(t), cells)
            poc[t] = (base + hist.argmax(axis=1) + 0.5) * bin_size
    return poc
