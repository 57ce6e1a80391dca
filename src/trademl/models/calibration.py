"""Judging and calibrating win probabilities.

- ``IsotonicCalibrator``: a monotone piecewise-linear map from raw model probability to
  calibrated probability, fitted on out-of-fold predictions by scikit-learn's
  ``IsotonicRegression`` on equal-count bins, stored as JSON knots and applied with
  ``np.interp``; with ``probability=False`` the same map onto any real outcome (the stacker's
  expected P&L in dollars from its probability).
- Scores of a probability forecast: AUC (scikit-learn) with a confidence interval that
  respects serial correlation (clustered DeLong), log-loss and Brier score (scikit-learn),
  expected calibration error and the reliability table behind it.

Serving imports this module for ``IsotonicCalibrator.apply`` only, so scikit-learn is
imported inside the functions that fit or score (training time), never at module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from trademl.errors import ModelStoreError
from trademl.segments import segment_start_mask

# Calibrated probabilities never reach 0 or 1: one surprising outcome must not cost an
# infinite log-loss, and a bin of a few hundred rows cannot justify certainty.
PROB_FLOOR = 1e-4
# Where scikit-learn's log_loss clips float64 probabilities, so row_log_loss agrees with it.
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class IsotonicCalibrator:
    """Knots (x ascending, y non-decreasing); between knots linear, outside them flat."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, max_bins: int = 50, min_bin_rows: int = 200,
            probability: bool = True) -> "IsotonicCalibrator":
        """Isotonic regression (scikit-learn's) of the bins' win rate on their mean raw score;
        ``probability=False``: of the bins' mean outcome (any real value, not clipped).

        Each block that the regression pools becomes one knot, at its rows' mean score: the
        map runs through the blocks' centres rather than along their edges (as sklearn's own
        ``predict`` would), which follows a smooth curve more closely.
        """
        from sklearn.isotonic import IsotonicRegression

        raw = np.asarray(raw, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        if len(raw) == 0:
            raise ValueError("cannot calibrate on no predictions")
        # Equal-count bins first: they keep the fit small and one lucky handful of rows
        # from setting a knot of its own. Rows of one tied score share the bin of its first
        # row, so the map does not depend on the rows' order (a meta-model with no weight
        # scores whole blocks alike; a mirrored fit lists the same rows in another order).
        n_bins = int(max(1, min(max_bins, len(raw) // max(1, min_bin_rows))))
        order = np.argsort(raw, kind="stable")
        edges = np.linspace(0, len(raw), n_bins + 1).astype(int)
        by_position = np.searchsorted(edges, np.arange(len(raw)), side="right") - 1
        first_of_tie = np.searchsorted(raw[order], raw[order], side="left")
        bin_of = np.empty(len(raw), dtype=np.int64)
        bin_of[order] = np.unique(by_position[first_of_tie], return_inverse=True)[1]  # no empty bins
        n_bins = int(bin_of.max()) + 1
        weight = np.bincount(bin_of, minlength=n_bins).astype(np.float64)
        # ascending; rounded so that bins of one tied score get one x (a mean of k equal values
        # can differ from them in the last bit, and the regression would then see distinct
        # scores and alternate between two fits)
        x = np.round(np.bincount(bin_of, weights=raw, minlength=n_bins) / weight, 12)
        y = np.bincount(bin_of, weights=labels, minlength=n_bins) / weight
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y, sample_weight=weight)
        fitted = iso.predict(x)  # bins of one pooled block (ties in x included) share one value
        starts = segment_start_mask(fitted)  # runs of equal fitted values
        block = np.cumsum(starts) - 1
        knots_x = np.bincount(block, weights=weight * x) / np.bincount(block, weights=weight)
        knots_y = np.clip(fitted[starts], PROB_FLOOR, 1 - PROB_FLOOR) if probability else fitted[starts]
        return cls(tuple(float(v) for v in knots_x), tuple(float(v) for v in knots_y))

    def apply(self, raw) -> np.ndarray:
        x, y = self._knots
        return np.interp(np.asarray(raw, dtype=np.float64), x, y)

    @cached_property
    def _knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The knots as arrays, once (np.interp would convert the tuples on every call)."""
        return np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"method": "isotonic-piecewise-linear", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "calibration", probability: bool = True) -> "IsotonicCalibrator":
        try:
            x = np.asarray(d["x"], dtype=np.float64)
            y = np.asarray(d["y"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelStoreError(f"calibration map is malformed: {e}", where=where) from None
        ok = (
            x.ndim == 1 and len(x) >= 1 and len(x) == len(y)
            and np.all(np.isfinite(x)) and np.all(np.isfinite(y))
            and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
            and (not probability or np.all((y >= 0) & (y <= 1)))
        )
        if not ok:
            raise ModelStoreError("calibration map is not a monotone map" + (" into [0, 1]" if probability else ""),
                                  where=where)
        return cls(tuple(x.tolist()), tuple(y.tolist()))


# --- scores ---------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # ranks taken by smaller values
    return (first + (counts + 1) / 2.0)[inverse]


def roc_auc(scores, labels) -> float:
    """ROC AUC (scikit-learn); NaN when the labels hold one class only."""
    from sklearn.metrics import roc_auc_score

    pos = np.asarray(labels) > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, np.asarray(scores, dtype=np.float64)))


def auc_with_ci(scores, labels, clusters=None, z: float = 1.96) -> tuple[float, float, float]:
    """ROC AUC (scikit-learn's) and its ~95% confidence interval.

    scikit-learn has no interval for it. The variance is DeLong's, summed by cluster
    (Obuchowski 1997): rows of one cluster (e.g. one block of consecutive bars, whose
    overlapping label windows make their outcomes move together) count as one draw, so the
    interval does not pretend that correlated rows are independent evidence.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels) > 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    ranks = average_ranks(scores)
    v10 = (ranks[pos] - average_ranks(scores[pos])) / n  # share of negatives below each positive
    v01 = 1.0 - (ranks[~pos] - average_ranks(scores[~pos])) / m  # share of positives above each negative
    auc = roc_auc(scores, pos)  # equals v10.mean() up to rounding
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
    """Each row's log-loss (scikit-learn gives only their mean or sum), clipped as sklearn clips."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def log_loss(p, y) -> float:
    """Mean log-loss of win probabilities ``p`` for outcomes ``y`` (scikit-learn)."""
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64), labels=[0.0, 1.0]))


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
    """Brier score, the mean squared error of win probabilities (scikit-learn)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64), labels=[0.0, 1.0]))


def reliability_table(p, y, n_bins: int = 10) -> list[dict]:
    """Equal-count bins of predicted probability: mean prediction vs observed win rate.

    Equal-count rather than equal-width bins, because win probabilities crowd around the
    base rate: fixed-width bins would put nearly every row into one or two of them.
    (scikit-learn's calibration_curve gives neither the row counts nor the bins' edges.)
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
    return table_calibration_error(reliability_table(p, y, n_bins))


def table_calibration_error(table: list[dict]) -> float:
    """The ECE of a reliability table (``reliability_table``'s rows): count-weighted mean gap."""
    total = sum(r["count"] for r in table)
    if total == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["mean_predicted"] - r["observed"]) for r in table) / total)


def confidence_bins(prob, won, bins: int):
    """``reliability_table`` as a DataFrame (confidence, hit_rate, count) of the finite pairs:
    the shape the backtest report and the monitor draw."""
    import pandas as pd

    prob, won = np.asarray(prob, np.float64), np.asarray(won, np.float64)
    ok = np.isfinite(prob) & np.isfinite(won)
    rows = reliability_table(prob[ok], won[ok], bins)
    return pd.DataFrame([(r["mean_predicted"], r["observed"], r["count"]) for r in rows],
                        columns=["confidence", "hit_rate", "count"])
