"""The tuning page: Optuna's plots of a study, as the backtest and monitor reports are written."""

from __future__ import annotations

import html
from pathlib import Path


def write_report(study, result, path: Path) -> Path:
    """Optimisation history, each fold's running value (what the pruner judged), the settings'
    importances and a slice per setting, with the trials table; written atomically."""
    from trademl.html_page import figures_html, metrics_table, write_page

    page = (f"<p class='note'>{result.trials} trials ({result.completed} complete, {result.pruned} pruned, "
            f"{result.failed} failed); objective: {html.escape(result.metric)}; best "
            f"{'-' if result.best_value is None else f'{result.best_value:.6g}'} with "
            f"{html.escape(str(result.best_params))}. Every trial counts in the deflated Sharpe of a "
            "walk-forward run with the written config.</p>")
    page += figures_html(_figures(study, result))
    rows = [(n, state.lower(), "-" if v is None else f"{v:.6g}") for n, state, v in result.history]
    page += "<h2>Trials</h2>" + metrics_table(("trial", "state", "value"), rows)
    return write_page(path, f"trademl tune {result.kind}: study {result.study}", page)


def _figures(study, result) -> list:
    """The plots the study has enough trials for (importances need two complete ones that differ)."""
    from optuna import visualization as vis

    figures = [("Optimisation history", vis.plot_optimization_history(study))]
    if any(t.intermediate_values for t in study.trials):
        figures.append(("Each fold's running value (what the median pruner compares)", vis.plot_intermediate_values(study)))
    complete = [t.value for t in study.trials if t.value is not None]
    if len(set(complete)) >= 2 and result.best_params:
        try:
            figures.append(("Importance of the settings (fANOVA)", vis.plot_param_importances(study)))
        except (RuntimeError, ValueError):  # too few distinct trials for fANOVA: left out, not an error
            pass
        figures.append(("Value by setting", vis.plot_slice(study)))
    return figures
