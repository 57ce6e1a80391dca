"""Walk-forward splits: purged by the label window, embargoed, past-only."""

import numpy as np
import pytest

from trademl.data.splits import label_window_overlap, train_valid_split, walk_forward_splits
from trademl.errors import InsufficientDataError


@pytest.mark.parametrize("horizon,embargo", [(5, 0), (30, 30), (30, 100)])
def test_no_training_label_window_reaches_a_test_fold(horizon, embargo):
    folds = walk_forward_splits(20_000, n_folds=4, horizon=horizon, embargo=embargo)
    assert len(folds) == 4
    for f in folds:
        assert label_window_overlap(f.train, f.test, horizon) == 0
        # train is strictly the past
        assert f.train.max() < f.test.min()
        # the gap between the last train row and the first test row is purge + embargo
        assert f.test.min() - f.train.max() - 1 == horizon + 1 + embargo


def test_folds_cover_the_later_data_once_and_in_order():
    folds = walk_forward_splits(10_000, n_folds=3, horizon=5)
    tests = np.concatenate([f.test for f in folds])
    assert (np.diff(tests) == 1).all()
    assert tests[-1] == 9_999
    # expanding window: each fold trains on more than the last
    assert all(a.train.size < b.train.size for a, b in zip(folds, folds[1:]))


def test_a_leaky_split_is_detected_by_the_overlap_check():
    # the check itself must catch a split with no purge
    train, test = np.arange(0, 1000), np.arange(1000, 1200)
    assert label_window_overlap(train, test, horizon=5) == 6


def test_train_valid_split_is_purged():
    train = np.arange(5000)
    fit, valid = train_valid_split(train, 0.2, horizon=30)
    assert valid[0] - fit[-1] - 1 == 31
    assert label_window_overlap(fit, valid, 30) == 0
    assert len(valid) == 1000


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(InsufficientDataError, match="rows are too few"):
        walk_forward_splits(300, n_folds=4, horizon=30)
