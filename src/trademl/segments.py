"""Segments: runs of bars with no gap and no contract roll inside.

Every causal computation (features, labels, sequences, episodes) restarts at a segment
boundary, so nothing ever bleeds across a weekend, a session break or a roll; the broker
flattens the account before one. This module sits on the lowest floor (numpy only) so that
the data, market and model code all share one definition of a segment and its masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from trademl.config import resolve_config

if TYPE_CHECKING:  # annotations only: the serving path (PPO runtime -> env -> here) stays pandas-free
    import pandas as pd


def segment_ids(bars: pd.DataFrame, max_gap_minutes: float | None = None) -> np.ndarray:
    """Segment number (0, 1, 2, ...) of every bar.

    A new segment starts where the time since the previous bar exceeds
    ``max_gap_minutes`` (None: [data] max_gap_minutes) or where the ``contract`` column
    (if present) changes.
    """
    if max_gap_minutes is None:
        max_gap_minutes = resolve_config().data.max_gap_minutes
    n = len(bars)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    stamps = bars.index.as_unit("ns").asi8  # ns since epoch (pandas 3 may store s or us)
    breaks = np.zeros(n, dtype=bool)
    breaks[1:] = np.diff(stamps) > int(max_gap_minutes * 60e9)
    if "contract" in bars.columns:
        breaks[1:] |= segment_start_mask(bars["contract"].to_numpy())[1:]  # a roll
    return np.cumsum(breaks, dtype=np.int32)  # int32 straight away: no 8-byte pass over 1M bars


def segment_start_mask(seg) -> np.ndarray:
    """True at the first bar of every segment (and at bar 0): where a new run of ids begins."""
    seg = np.asarray(seg)
    mask = np.ones(len(seg), dtype=bool)
    mask[1:] = seg[1:] != seg[:-1]
    return mask


def segment_end_mask(seg) -> np.ndarray:
    """True at the last bar of every segment (and at the last bar)."""
    seg = np.asarray(seg)
    mask = np.ones(len(seg), dtype=bool)
    mask[:-1] = seg[1:] != seg[:-1]
    return mask


def segment_starts(seg: np.ndarray) -> np.ndarray:
    """Index of the first bar of each bar's segment (same length as ``seg``)."""
    is_start = segment_start_mask(seg)
    if not len(is_start):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(is_start)[np.cumsum(is_start) - 1]


def segment_ends(seg: np.ndarray) -> np.ndarray:
    """Index of the last bar of each bar's segment (same length as ``seg``)."""
    if not len(seg):
        return np.zeros(0, dtype=np.int64)
    # the segment index of each bar in order of appearance
    order = np.cumsum(segment_start_mask(seg)) - 1
    return np.flatnonzero(segment_end_mask(seg))[order]


def bars_since_start(seg: np.ndarray) -> np.ndarray:
    """0 for the first bar of a segment, 1 for the next, ..."""
    return np.arange(len(seg)) - segment_starts(seg)


def bars_to_end(seg: np.ndarray) -> np.ndarray:
    """How many bars follow in the same segment (0 for the last bar)."""
    return segment_ends(seg) - np.arange(len(seg))
