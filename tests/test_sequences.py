"""Strided sequence windows: views not copies, never across a segment, normaliser on training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from trademl.data.sequences import Normalizer, rows_covered, valid_window_ends, window_view, windows_at
from trademl.errors import DataError, SchemaError


def _matrix(n=50, f=3):
    # Row r, feature j holds r * 10 + j: every window's content is checkable by hand.
    return (np.arange(n)[:, None] * 10 + np.arange(f)[None, :]).astype(np.float32)


def test_window_view_is_a_view_with_the_right_rows():
    X = _matrix()
    view = window_view(X, 5)
    assert view.shape == (46, 5, 3)
    assert np.shares_memory(view, X)  # no copy of the feature matrix
    np.testing.assert_array_equal(view[7], X[7:12])  # window i = rows i .. i+4
    assert not view.flags.writeable  # nobody can scribble on the features through it


def test_windows_at_returns_the_rows_up_to_and_including_the_end():
    X = _matrix()
    got = windows_at(X, np.array([4, 20, 49]), 5)
    np.testing.assert_array_equal(got[1], X[16:21])
    np.testing.assert_array_equal(got[2], X[45:50])
    with pytest.raises(DataError):
        windows_at(X, np.array([3]), 5)  # would need row -1


def test_no_window_crosses_a_segment_boundary():
    X = _matrix(40)
    seg = np.repeat([0, 1, 2], [12, 20, 8]).astype(np.int32)  # segments start at rows 0, 12, 32
    T = 6
    ends = valid_window_ends(X, seg, T)
    # First usable end in each segment is start + T - 1; segment 2 (8 rows) has 3.
    expected = np.r_[np.arange(5, 12), np.arange(17, 32), np.arange(37, 40)]
    np.testing.assert_array_equal(ends, expected)
    for t in ends:
        assert len(set(seg[t - T + 1 : t + 1])) == 1


def test_windows_with_any_nan_feature_are_dropped():
    X = _matrix(30)
    X[10, 1] = np.nan
    X[20, 0] = np.inf
    ends = valid_window_ends(X, np.zeros(30, np.int32), 4)
    bad = set(range(10, 14)) | set(range(20, 24))  # every window containing row 10 or 20
    assert set(ends) == set(range(3, 30)) - bad
    assert np.isfinite(windows_at(X, ends, 4)).all()


def test_required_mask_restricts_ends_to_labelled_rows():
    X = _matrix(30)
    labelled = np.ones(30, bool)
    labelled[-5:] = False  # label window runs past the data
    ends = valid_window_ends(X, np.zeros(30, np.int32), 4, required=labelled)
    assert ends.max() == 24


def test_rows_covered_marks_exactly_the_rows_windows_read():
    mask = rows_covered(np.array([5, 6, 20]), 3, 25)
    assert np.flatnonzero(mask).tolist() == [3, 4, 5, 6, 18, 19, 20]


def test_normaliser_uses_training_rows_only():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 2)).astype(np.float32)
    X[600:] += 50.0  # the test period lives elsewhere entirely
    train_ends = np.arange(9, 500)
    norm = Normalizer.fit(X, rows_covered(train_ends, 10, len(X)), ["a", "b"])
    np.testing.assert_allclose(norm.mean, X[:500].mean(0), atol=1e-5)
    assert np.all(np.abs(norm.mean) < 0.2)  # would be ~20 had rows >= 600 leaked in
    z = norm.apply(windows_at(X, train_ends, 10))
    assert z.dtype == np.float32 and abs(float(z.mean())) < 0.1


def test_normaliser_round_trips_through_json_and_survives_constant_features(tmp_path):
    X = np.c_[np.arange(10.0), np.full(10, 3.0)].astype(np.float32)
    norm = Normalizer.fit(X, np.arange(10), ["trend", "flat"])
    assert norm.std[1] == 1.0  # constant feature: finite output, not inf
    norm.save(tmp_path / "normalizer.json")
    back = Normalizer.load(tmp_path / "normalizer.json")
    assert back.feature_names == ("trend", "flat")
    np.testing.assert_array_equal(back.mean, norm.mean)
    assert not list(tmp_path.glob("*.part"))
    (tmp_path / "bad.json").write_text('{"feature_names": ["a"], "mean": [1, 2], "std": [1]}')
    with pytest.raises(SchemaError, match="bad.json"):
        Normalizer.load(tmp_path / "bad.json")


def test_windows_checked_at_given_rows_follow_the_valid_window_rule():
    """complete_windows_at (the per-request path, any number of rows) and valid_window_ends
    (training, every row) are one rule: full, finite, inside one segment."""
    from trademl.data.sequences import complete_windows_at, valid_window_ends, windows_at

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    X[rng.integers(0, 3000, 40), rng.integers(0, 6, 40)] = np.nan
    seg = np.repeat(np.arange(10), 300)
    for length in (1, 4, 60):
        valid = valid_window_ends(X, seg, length)
        batch = complete_windows_at(X, np.arange(3000), length, seg)
        alone = np.array([complete_windows_at(X, [t], length, seg)[0] for t in range(3000)])
        assert np.array_equal(np.flatnonzero(batch), valid) and np.array_equal(alone, batch)
        few, many = valid[:5], valid[:40]  # a request's few windows are the batch's first ones, bit for bit
        assert np.array_equal(windows_at(X, few, length), windows_at(X, many, length)[:5])
