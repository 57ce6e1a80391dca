"""Where a retraining round trains and where it judges: rows of the dataset from durations of bar time.

The held-out span is the newest ``holdout`` of bar time. The training window ends ``gap`` rows
before it (the walk-forward's purge + embargo: the longest label horizon + 1 + the embargo), so
the last training label's window closes before the first held-out bar, and it reaches
``window`` of bar time back from its own end. The challenger has then never seen a bar it is
judged on, nor a label that looked at one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trademl.config import Config, parse_duration
from trademl.errors import InsufficientDataError

MIN_HOLDOUT_ROWS = 100  # fewer bars than this cannot tell two models apart


@dataclass(frozen=True)
class RetrainSpans:
    """Rows (positions in the dataset frame) of one round: train on ``train``, judge on ``holdout``."""

    train: np.ndarray
    holdout: np.ndarray
    gap_rows: int

    def describe(self, index: pd.DatetimeIndex) -> dict:
        """The spans as the decision record holds them: first and last bar time, rows."""
        return {"train": _span(index, self.train), "gap_rows": self.gap_rows, "holdout": _span(index, self.holdout)}


def _span(index: pd.DatetimeIndex, rows: np.ndarray) -> dict:
    return {"start": index[int(rows[0])].isoformat(), "end": index[int(rows[-1])].isoformat(), "rows": int(len(rows))}


def purge_gap(horizons, config: Config) -> int:
    """Rows between the last training row and the first held-out one: the walk-forward's
    ``horizon + 1 + embargo`` (``trademl.data.splits.walk_forward_splits``), horizon the longest."""
    horizon = max(horizons)
    embargo = horizon if config.lgbm.embargo_bars is None else config.lgbm.embargo_bars
    return int(horizon + 1 + embargo)


def plan_spans(index: pd.DatetimeIndex, window: str, holdout: str, gap_rows: int) -> RetrainSpans:
    """The round's rows over ``index`` (the dataset's bar times, increasing); see the module doc.
    Too little data for either span is an InsufficientDataError saying how much there is."""
    window_s = parse_duration(window, "--window")
    holdout_s = parse_duration(holdout, "--holdout")
    n = len(index)
    if n == 0:
        raise InsufficientDataError("no bars to retrain on", where="retrain")
    holdout_start = int(index.searchsorted(index[-1] - pd.Timedelta(seconds=holdout_s), side="left"))
    holdout_rows = np.arange(holdout_start, n)
    train_stop = holdout_start - gap_rows  # exclusive
    if len(holdout_rows) < MIN_HOLDOUT_ROWS or train_stop < 1:
        raise InsufficientDataError(
            f"{n} bars from {index[0]} to {index[-1]} are too few for a held-out span of {holdout} "
            f"({len(holdout_rows)} bars, at least {MIN_HOLDOUT_ROWS}) after a training window and a purge gap of "
            f"{gap_rows} bars", where="retrain", hint="give more bars or a shorter --holdout")
    train_start = int(index.searchsorted(index[train_stop - 1] - pd.Timedelta(seconds=window_s), side="right"))
    return RetrainSpans(np.arange(train_start, train_stop), holdout_rows, gap_rows)
