"""Judging and calibrating win probabilities, in numpy only (serving imports this module).

- ``IsotonicCalibrator``: a monotone piecewise-linear map from raw model probability to
  calibrated probability, fitted on out-of-fold predictions by pool-adjacent-violators on
  equal-count bins, stored as JSON knots and applied with ``np.interp``.
- Scores of a probability forecast: AUC with a confidence interval that respects serial
  correlation (clustered DeLong), log-loss, Brier score, expected calibration error and the
  reliability table behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trademl.errors import ModelStoreError

# Calibrated probabilities never reach 0 or 1: one surprising outcome must not cost an
# infinite log-loss, and a bin of a few hundred rows cannot justify certainty.
PROB_FLOOR = 1e-4
LOG_LOSS_EPS = 1e-15


@dataclass(frozen=True)
class IsotonicCalibrator:
    """Knots (x ascending, y non-decreasing); between knots linear, outside them flat."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, max_bins: int = 50, min_bin_rows: int = 200) -> "IsotonicCalibrator":
        raw = np.asarray(raw, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        if len(raw) == 0:
            raise ValueError("cannot calibrate on no predictions")
        # Equal-count bins first: they make PAV fast and keep one lucky handful of rows from
        # setting a knot of its own.
        n_bins = int(max(1, min(max_bins, len(raw) // max(1, min_bin_rows))))
        order = np.argsort(raw, kind="stable")
        edges = np.linspace(0, len(raw), n_bins + 1).astype(int)
        bin_of = np.empty(len(raw), dtype=np.int64)
        bin_of[order] = np.searchsorted(edges, np.arange(len(raw)), side="right") - 1
        weight = np.bincount(bin_of, minlength=n_bins).astype(np.float64)
        x = np.bincount(bin_of, weights=raw, minlength=n_bins) / weight
        y = np.bincount(bin_of, weights=labels, minlength=n_bins) / weight
        x, y, weight = _merge_equal_x(x, y, weight)
        x, y = _pool_adjacent_violators(x, y, weight)
        y = np.clip(y, PROB_FLOOR, 1 - PROB_FLOOR)
        return cls(tuple(float(v) for v in x), tuple(float(v) for v in y))

    def apply(self, raw) -> np.ndarray:
        return np.interp(np.asarray(raw, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"method": "isotonic-piecewise-linear", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "calibration") -> "IsotonicCalibrator":
        try:
            x = np.asarray(d["x"], dtype=np.float64)
            y = np.asarray(d["y"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelStoreError(f"calibration map is malformed: {e}", where=where) from None
        ok = (
            x.ndim == 1 and len(x) >= 1 and len(x) == len(y)
            and np.all(np.isfinite(x)) and np.all(np.isfinite(y))
            and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
            and np.all((y >= 0) & (y <= 1))
        )
        if not ok:
            raise ModelStoreError("calibration map is not a monotone map into [0, 1]", where=where)
        return cls(tuple(x.tolist()), tuple(y.tolist()))


def _merge_equal_x(x, y, w):
    """Bins that share a mean score (ties in the raw scores) become one knot."""
    keys, inverse = np.unique(x, return_inverse=True)
    wsum = np.bincount(inverse, weights=w)
    return keys, np.bincount(inverse, weights=y * w) / wsum, wsum


def _pool_adjacent_violators(x, y, w):
    """Weighted isotonic regression of y on ascending x; blocks become knots at their mean x."""
    blocks: list[list[float]] = []  # [sum w*x, sum w*y, sum w]
    for xi, yi, wi in zip(x, y, w):
        blocks.append([wi * xi, wi * yi, wi])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            for k in range(3):
                blocks[-1][k] += last[k]
    bx = np.array([b[0] / b[2] for b in blocks])
    by = np.array([b[1] / b[2] for b in blocks])
    return bx, by


# --- scores ---------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # ranks taken by smaller values
    return (first + (counts + 1) / 2.0)[inverse]


def auc_with_ci(scores, labels, clusters=None, z: float = 1.96) -> tuple[float, float, float]:
    """ROC AUC and its ~95% confidence interval.

    The variance is DeLong's, summed by cluster (Obuchowski 1997): rows of one cluster
    (e.g. one block of consecutive bars, whose overlapping label windows make their
    outcomes move together) count as one draw, so the interval does not pretend that
    correlated rows are independent evidence.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels) > 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    ranks = average_ranks(scores)
    v10 = (ranks[pos] - average_ranks(scores[pos])) / n  # share of negatives below each positive
    v01 = 1.0 - (ranks[~pos] - average_ranks(scores[~pos])) / m  # share of positives above each negative
    auc = float(v10.mean())
    clusters = np.arange(len(scores)) if clusters is None else np.asarray(clusters)
    _, cid = np.unique(clusters, return_inverse=True)
    k = int(cid.max()) + 1
    if k < 2:
        return auc, float("nan"), float("nan")
    contrib = np.bincount(cid[pos], weights=(v10 - auc) / m, minlength=k)
    contrib += np.bincount(cid[~pos], weights=(v01 - auc) / n, minlength=k)
    se = math.sqrt(k / (k - 1) * float(np.sum(contrib**2)))
    return auc, auc - z * se, auc + z * se


def row_log_loss(p, y) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def log_loss(p, y) -> float:
    return float(np.mean(row_log_loss(p, y)))


def clustered_mean_ci(values, clusters, z: float = 1.96) -> tuple[float, float, float]:
    """Mean of ``values`` and its ~95% interval, with the rows of a cluster counted as one draw."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    _, cid = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(cid.max()) + 1 if len(cid) else 0
    if k < 2:
        return mean, float("nan"), float("nan")
    sums = np.bincount(cid, weights=values - mean, minlength=k)
    se = math.sqrt(k / (k - 1) * float(np.sum(sums**2))) / len(values)
    return mean, mean - z * se, mean + z * se


def brier(p, y) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def reliability_table(p, y, n_bins: int = 10) -> list[dict]:
    """Equal-count bins of predicted probability: mean prediction vs observed win rate.

    Equal-count rather than equal-width bins, because win probabilities crowd around the
    base rate: fixed-width bins would put nearly every row into one or two of them.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return []
    order = np.argsort(p, kind="stable")
    rows = []
    for chunk in np.array_split(order, min(n_bins, len(p))):
        pb, yb = p[chunk], y[chunk]
        rows.append({
            "p_low": float(pb.min()), "p_high": float(pb.max()),
            "mean_predicted": float(pb.mean()), "observed": float(yb.mean()), "count": int(len(chunk)),
        })
    return rows


def expected_calibration_error(p, y, n_bins: int = 10) -> float:
    """Row-weighted mean |mean predicted - observed| over the reliability table's bins."""
    table = reliability_table(p, y, n_bins)
    total = sum(r["count"] for r in table)
    if total == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["mean_predicted"] - r["observed"]) for r in table) / total)
