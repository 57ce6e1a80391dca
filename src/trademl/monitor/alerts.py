"""Alerts: drift or calibration beyond the [monitor] thresholds, as lines a cron job can act on.

``trademl monitor`` prints each alert on stderr and exits with ``EXIT_ALERT`` (3) when
there is any, so that cron or CI fails loudly while an undisturbed day exits 0.
"""

from __future__ import annotations

import math

import pandas as pd

from trademl.monitor.outcomes import NATIVE_HORIZON

EXIT_ALERT = 3
_SHOWN_FEATURES = 5


def drift_alerts(drift: dict, threshold: float) -> list[str]:
    """One line per model version with flagged features, the worst first."""
    lines = []
    for (kind, version), table in drift.items():
        flagged = table[table["flagged"]].sort_values("psi", ascending=False)
        if flagged.empty:
            continue
        shown = ", ".join(f"{r.feature} {r.psi:.2f}" for r in flagged.head(_SHOWN_FEATURES).itertuples())
        more = f" and {len(flagged) - _SHOWN_FEATURES} more" if len(flagged) > _SHOWN_FEATURES else ""
        lines.append(f"drift: {kind} {version}: {len(flagged)} of {len(table)} features have PSI > {threshold:g} "
                     f"({shown}{more})")
    return lines


def calibration_alerts(scores: pd.DataFrame, threshold: float, min_samples: int, models) -> list[str]:
    """One line per model of ``models`` whose calibration error at its own horizon is beyond
    the threshold, judged on at least ``min_samples`` outcomes (fewer: too noisy to alert on)."""
    lines = []
    for row in scores.itertuples():
        if row.model not in models or NATIVE_HORIZON.get(row.model) != row.horizon:
            continue
        if row.calibrated_on < min_samples:
            continue
        if math.isfinite(row.calibration_error) and row.calibration_error > threshold:
            lines.append(f"calibration: {row.model} at {row.horizon} bars: stated {row.mean_confidence:.2f} on average, "
                         f"calibration error {row.calibration_error:.3f} > {threshold:g} over {row.calibrated_on} outcomes")
    return lines
