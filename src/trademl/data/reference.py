"""The training distribution of each feature, stored with every model for drift checks.

Trainers call ``feature_reference(X_train, names)`` and put the result in the model's
manifest under ``feature_reference``; ``trademl.monitor.drift`` compares live features
against it (PSI). It lives in the data layer so that models never import the monitor.
"""

from __future__ import annotations

import numpy as np

from trademl.errors import TradeMLError

DEFAULT_BINS = 10


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
