"""Purged, embargoed walk-forward splits.

Rows are in time order. A row's label looks ``horizon + 1`` bars ahead (entry at the next
open, exit at the open after the horizon), so a training row whose label window reaches
into the test fold would leak the test period into training. Each fold therefore:

- trains on rows strictly before the test block, minus the last ``horizon + 1`` rows
  (purge) and minus ``embargo`` more rows (embargo, against slow serial correlation);
- never trains on anything after the test block (walk-forward: the past only).

``train_valid_split`` cuts a validation tail off a training set with the same purge,
for early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trademl.errors import InsufficientDataError


@dataclass(frozen=True)
class Fold:
    number: int
    train: np.ndarray
    test: np.ndarray

    def __repr__(self) -> str:
        return (
            f"Fold({self.number}: train {len(self.train)} rows [..{self.train[-1] if len(self.train) else '-'}], "
            f"test {len(self.test)} rows [{self.test[0]}..{self.test[-1]}])"
        )


def walk_forward_splits(
    n_rows: int,
    n_folds: int,
    horizon: int,
    embargo: int | None = None,
    min_train: int | None = None,
) -> list[Fold]:
    """Expanding-window folds over ``n_rows`` time-ordered rows.

    The rows are cut into ``n_folds + 1`` equal blocks; fold k tests on block k+1 and
    trains on blocks 0..k, purged by ``horizon + 1`` rows and embargoed by ``embargo``
    rows (default: the horizon again).
    """
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    embargo = horizon if embargo is None else embargo
    gap = horizon + 1 + embargo
    min_train = min_train if min_train is not None else max(10 * gap, 100)
    bounds = np.linspace(0, n_rows, n_folds + 2).astype(int)
    folds = []
    for k in range(n_folds):
        test_start, test_end = bounds[k + 1], bounds[k + 2]
        train_end = test_start - gap
        if train_end < min_train:
            continue
        folds.append(Fold(len(folds), np.arange(0, train_end), np.arange(test_start, test_end)))
    if not folds:
        raise InsufficientDataError(
            f"{n_rows} rows are too few for {n_folds} walk-forward folds: each needs at least "
            f"{min_train} training rows after a purge+embargo gap of {gap} rows",
            hint="use more data or fewer folds",
        )
    return folds


def train_valid_split(train: np.ndarray, valid_fraction: float, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Last ``valid_fraction`` of the training rows for validation, purged by ``horizon + 1``."""
    n_valid = max(1, int(len(train) * valid_fraction))
    valid = train[-n_valid:]
    fit = train[: max(0, len(train) - n_valid - (horizon + 1))]
    return fit, valid


def label_window_overlap(train: np.ndarray, test: np.ndarray, horizon: int) -> int:
    """How many training rows have a label window (t .. t+horizon+1) reaching the test span."""
    lo, hi = test.min(), test.max()
    ends = train + horizon + 1
    return int(np.sum((ends >= lo) & (train <= hi)))
