"""Feature drift: the live feature distribution against the one a model was trained on.

A model's trainer stores ``feature_reference(X_train, names)`` in its manifest (key
``feature_reference``): per feature, inner quantile edges of the training values and the
share of training rows in each bin. Live values fall in the same bins, and the Population
Stability Index

    PSI = sum over bins of (live% - train%) * ln(live% / train%)

measures the shift: < 0.1 steady, 0.1-0.2 moving, > 0.2 (the default threshold) a
distribution the model has not seen. Missing values (warm-up) are left out of the bins
and reported as a share, since their rate depends on how often a segment restarts, not on
the market.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trademl.errors import TradeMLError

DEFAULT_BINS = 10
# A bin with no rows would make ln(0) or a division by zero; this floor keeps PSI finite
# while still scoring an emptied or a new bin as a large shift.
_FLOOR = 1e-4


def feature_reference(X, names, bins: int = DEFAULT_BINS) -> dict:
    """Training distribution of each feature column of ``X`` [n, F], for the manifest.

    Returns ``{"bins": bins, "n_rows": n, "features": {name: {"edges": [...],
    "proportions": [...], "missing": share}}}``: ``edges`` are the distinct inner quantiles
    (observed values, below the maximum), so bin i holds edges[i-1] < x <= edges[i] (open at
    both ends), and a constant or discrete feature gets as many bins as it has distinct values
    among its quantiles.
    """
    X = np.asarray(X, dtype=np.float64)
    names = list(names)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise TradeMLError(f"X has shape {X.shape}; expected [rows, {len(names)}] for the names given",
                           where="feature_reference")
    if bins < 2:
        raise TradeMLError(f"bins must be at least 2, got {bins}", where="feature_reference")
    features = {}
    for j, name in enumerate(names):
        column = X[:, j]
        finite = column[np.isfinite(column)]
        if len(finite) == 0:
            features[name] = {"edges": [], "proportions": [], "missing": 1.0}
            continue
        # Observed values as edges (no interpolation between the two values of a binary
        # feature), and none at the maximum, which would leave the top bin empty.
        edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins, method="inverted_cdf"))
        edges = edges[edges < finite.max()]
        counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
        features[name] = {
            "edges": [float(e) for e in edges],
            "proportions": [float(c) for c in counts / len(finite)],
            "missing": float(1.0 - len(finite) / len(column)) if len(column) else 0.0,
        }
    return {"bins": int(bins), "n_rows": int(X.shape[0]), "features": features}


def psi(entry: dict, values) -> tuple[float, int]:
    """(PSI, number of finite live values) of ``values`` against one feature's reference."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    expected = np.asarray(entry.get("proportions") or [], dtype=np.float64)
    if len(finite) == 0 or len(expected) == 0:
        return float("nan"), int(len(finite))
    edges = np.asarray(entry["edges"], dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    actual = np.maximum(counts / len(finite), _FLOOR)
    expected = np.maximum(expected, _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected))), int(len(finite))


def drift_table(reference: dict, live: pd.DataFrame, *, threshold: float, min_samples: int) -> pd.DataFrame:
    """One row per reference feature: psi, live count, missing shares, flagged.

    A feature is flagged when its PSI is above ``threshold`` with at least ``min_samples``
    live values: with fewer, sampling noise alone pushes PSI up (about bins/n), so the row
    is reported but not flagged. A feature the live data lacks is reported, unflagged.
    """
    rows = []
    for name, entry in (reference.get("features") or {}).items():
        if name in live.columns:
            column = live[name].to_numpy(dtype=np.float64, na_value=np.nan)
            value, n = psi(entry, column)
            live_missing = float(np.mean(~np.isfinite(column))) if len(column) else float("nan")
        else:
            value, n, live_missing = float("nan"), 0, float("nan")
        flagged = bool(n >= min_samples and math.isfinite(value) and value > threshold)
        rows.append({"feature": name, "psi": value, "n_live": n, "train_missing": entry.get("missing", 0.0),
                     "live_missing": live_missing, "flagged": flagged})
    columns = ["feature", "psi", "n_live", "train_missing", "live_missing", "flagged"]
    return pd.DataFrame(rows, columns=columns)
