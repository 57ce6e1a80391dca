"""Sequence windows over a feature matrix, as strided views, never copies.

A sequence of length T that *ends* at row t holds the feature rows t-T+1 .. t: everything
known at the close of bar t and nothing after it. The window array is a strided view of
the feature matrix (``sliding_window_view``), so 1,000,000 bars x 40 features cost the
feature matrix plus one index array, not 60 copies of it; a batch is copied only when it
is gathered for the model.

A window end t is usable only if the whole window lies in one segment (no gap, no
roll inside: ``bars_since_start(seg)[t] >= T - 1``) and every feature in it is finite.
Normalisation (mean and std per feature) is fitted on the rows that training windows
cover, and on nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trademl.segments import bars_since_start
from trademl.errors import DataError, SchemaError

_FEW = 8  # at most this many windows: slices, not a strided view (the per-request path)
_FIT_CHUNK_ROWS = 16_384  # float64 temporaries of 16k x F: a few MB, whatever n is


def window_view(X: np.ndarray, length: int) -> np.ndarray:
    """Read-only view [n - length + 1, length, F]; entry i holds rows i .. i + length - 1."""
    if X.ndim != 2:
        raise DataError(f"feature matrix must be 2-D [rows, features], got shape {X.shape}", where="sequences")
    if length < 1:
        raise DataError(f"sequence length must be >= 1, got {length}", where="sequences")
    if len(X) < length:
        return np.empty((0, length, X.shape[1]), dtype=X.dtype)
    # sliding_window_view puts the window axis last: [n-T+1, F, T] -> swap to [n-T+1, T, F].
    return sliding_window_view(X, length, axis=0).transpose(0, 2, 1)


def valid_window_ends(
    X: np.ndarray,
    segments: np.ndarray,
    length: int,
    *,
    required: np.ndarray | None = None,
) -> np.ndarray:
    """Rows t (int64, increasing) at which a full, finite, single-segment window ends.

    ``required`` (bool [n]) further restricts the ends, e.g. to rows whose labels exist.
    """
    n = len(X)
    if len(segments) != n:
        raise DataError(f"{len(segments)} segment ids for {n} feature rows", where="sequences")
    long_enough = bars_since_start(np.asarray(segments)) >= length - 1
    # Count non-finite rows in every window with a running sum: O(n), no window copies.
    bad_row = ~np.isfinite(X).all(axis=1)
    bad_so_far = np.concatenate([[0], np.cumsum(bad_row, dtype=np.int64)])
    rows = np.arange(n)
    start = np.maximum(rows - length + 1, 0)
    clean = (bad_so_far[rows + 1] - bad_so_far[start]) == 0
    ok = long_enough & clean
    if required is not None:
        ok &= np.asarray(required, dtype=bool)
    return np.flatnonzero(ok).astype(np.int64)


def complete_windows_at(X: np.ndarray, at: np.ndarray, length: int, segments: np.ndarray | None = None) -> np.ndarray:
    """For each row t of ``at``: is the window of rows t-length+1..t full, finite and in t's segment?

    The rule of :func:`valid_window_ends`, evaluated at the given rows only (O(len(at) x
    length) rather than O(len(X))), so a bar-by-bar caller on a long history stays cheap.
    """
    at = np.asarray(at, dtype=np.int64)
    ok = at >= length - 1
    if segments is not None:
        seg = np.asarray(segments)
        ok &= seg[np.maximum(at - length + 1, 0)] == seg[at]  # ids only grow: equal ends, one segment
    idx = np.flatnonzero(ok)
    if len(idx) <= _FEW:  # one request: plain slices beat building a strided view (~50 us)
        for i in idx:
            t = int(at[i])
            ok[i] = bool(np.isfinite(X[t - length + 1: t + 1]).all())
    else:
        ok[idx] = np.isfinite(window_view(X, length)[at[idx] - (length - 1)]).all(axis=(1, 2))
    return ok


def windows_at(X: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Copy of the windows ending at ``ends``: [len(ends), length, F] (one batch, not all)."""
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and (ends.min() < length - 1 or ends.max() >= len(X)):
        raise DataError(f"window ends must lie in [{length - 1}, {len(X) - 1}]", where="sequences")
    if len(ends) <= _FEW:
        return np.stack([X[t - length + 1: t + 1] for t in ends.tolist()]) if len(ends) else window_view(X, length)[:0]
    return window_view(X, length)[ends - (length - 1)]


def rows_covered(ends: np.ndarray, length: int, n_rows: int) -> np.ndarray:
    """Boolean mask of the rows that at least one window ending at ``ends`` reads."""
    delta = np.zeros(n_rows + 1, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    np.add.at(delta, ends - (length - 1), 1)
    np.add.at(delta, ends + 1, -1)
    return np.cumsum(delta[:-1]) > 0


@dataclass(frozen=True)
class Normalizer:
    """Per-feature mean and std, fitted on training rows, stored as JSON with the model."""

    feature_names: tuple[str, ...]
    mean: np.ndarray  # float32 [F]
    std: np.ndarray  # float32 [F], never 0

    @classmethod
    def fit(cls, X: np.ndarray, rows: np.ndarray, feature_names) -> "Normalizer":
        """Fit on ``X[rows]`` only (a bool mask or index array of training rows).

        Two passes over chunks of rows, so the training rows are never copied whole
        (on 1M x 40 features that copy alone would be most of the feature matrix again).
        Sums are in float64: float32 sums over a million rows lose digits.
        """
        index = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        if len(index) == 0:
            raise DataError("no training rows to fit the normaliser on", where="sequences")
        chunks = [index[i : i + _FIT_CHUNK_ROWS] for i in range(0, len(index), _FIT_CHUNK_ROWS)]
        mean = sum(X[c].sum(axis=0, dtype=np.float64) for c in chunks) / len(index)
        var = sum(np.square(X[c] - mean).sum(axis=0) for c in chunks) / len(index)
        std = np.sqrt(var)
        # A constant feature carries no information; std 1 keeps it finite instead of inf.
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(feature_names), mean.astype(np.float32), std.astype(np.float32))

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """(x - mean) / std over the last axis, as float32."""
        return ((windows - self.mean) / self.std).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {
            "feature_names": list(self.feature_names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "normalizer") -> "Normalizer":
        try:
            names, mean, std = tuple(d["feature_names"]), d["mean"], d["std"]
        except (KeyError, TypeError):
            raise SchemaError("normaliser needs feature_names, mean and std", where=where) from None
        if not (len(names) == len(mean) == len(std)):
            raise SchemaError(f"{len(names)} names, {len(mean)} means, {len(std)} stds", where=where)
        return cls(names, np.asarray(mean, np.float32), np.asarray(std, np.float32))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)  # never a half-written normaliser next to a model

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Normalizer":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), where=str(path))
        except (OSError, json.JSONDecodeError) as e:
            raise SchemaError(f"unreadable normaliser: {e}", where=str(path)) from None
