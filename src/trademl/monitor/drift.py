"""Feature drift: the live feature distribution against the one a model was trained on.

A model's trainer stores ``trademl.data.reference.feature_reference(X_train, names)`` in its manifest (key
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


# A bin with no rows would make ln(0) or a division by zero; this floor keeps PSI finite
# while still scoring an emptied or a new bin as a large shift.
_FLOOR = 1e-4


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
