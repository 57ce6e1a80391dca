"""Segments split at gaps and contract rolls; helpers agree with a plain loop."""

import numpy as np
import pandas as pd

from trademl.segments import bars_since_start, bars_to_end, segment_ends, segment_ids, segment_starts


def _frame(minutes, contract=None):
    idx = pd.DatetimeIndex(pd.Timestamp("2024-01-02", tz="UTC") + pd.to_timedelta(minutes, "min"), name="timestamp")
    df = pd.DataFrame({"close": np.arange(len(minutes), dtype=float)}, index=idx)
    if contract is not None:
        df["contract"] = contract
    return df


def test_gap_and_roll_start_segments():
    minutes = [0, 1, 2, 20, 21, 22, 23]
    contract = ["Z13", "Z13", "Z13", "Z13", "Z13", "H14", "H14"]
    seg = segment_ids(_frame(minutes, contract), max_gap_minutes=15)
    assert seg.tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_gap_threshold_is_strict():
    seg = segment_ids(_frame([0, 15, 31]), max_gap_minutes=15)
    assert seg.tolist() == [0, 0, 1]


def test_helpers_match_a_loop():
    seg = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    assert segment_starts(seg).tolist() == [0, 0, 0, 3, 4, 4, 4, 4]
    assert segment_ends(seg).tolist() == [2, 2, 2, 3, 7, 7, 7, 7]
    assert bars_since_start(seg).tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert bars_to_end(seg).tolist() == [2, 1, 0, 0, 3, 2, 1, 0]


def test_second_resolution_index_is_handled():
    # pandas 3 may keep stamps in seconds; the gap test must not depend on the unit
    df = _frame([0, 1, 40])
    df.index = df.index.as_unit("s")
    assert segment_ids(df, 15).tolist() == [0, 0, 1]
