"""`trademl demo`: the whole flow on the bundled real ES bars, on two CPU cores.

build the dataset -> train LightGBM (5m, 30m), the LSTM and the PPO agent into the model
store -> walk-forward backtest (every fold trains them again on its past only) -> HTML
report. The training budgets are the config's [demo] section (``small_budget``): small
enough for a few minutes on two cores, and the report says honestly what they found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trademl.config import Config


@dataclass
class DemoResult:
    dataset_path: Path
    model_root: Path
    report_path: Path
    stored: dict  # kind -> StoredModel
    walk_forward: object  # WalkForwardResult
    seconds: dict = field(default_factory=dict)


def run_demo(config: Config, console, *, bars_path=None, budget: str = "small", report_path=None) -> DemoResult:
    """Run the four steps with the ``budget`` ("small": the [demo] settings); returns what was written."""
    from trademl.models.train_all import print_trained, train_models
    from trademl.backtest.walkforward import (
        budget_config, results_table, verdict, walk_forward_backtest,
    )
    from trademl.data.dataset import build_dataset, load_dataset, print_summary

    cfg = budget_config(config, budget)
    seconds = {}
    started = time.perf_counter()

    console.rule("1. dataset: bundled ES 1-minute bars -> features + labels")
    built = build_dataset(bars_path, config=cfg, progress=True)
    print_summary(built, console)
    dataset = load_dataset(built.path)
    seconds["dataset"] = time.perf_counter() - started

    console.rule(f"2. train all three ({budget} budget) into {cfg.paths.model_root}")
    step = time.perf_counter()
    trained = train_models(dataset, cfg, cfg.paths.model_root, progress=True, console=console)
    print_trained(trained, console)
    seconds["train"] = time.perf_counter() - step

    console.rule(f"3. walk-forward backtest, {cfg.backtest.n_folds} folds: each trains on its past, trades its future")
    step = time.perf_counter()
    result = walk_forward_backtest(dataset, cfg, progress=console.print)
    seconds["backtest"] = time.perf_counter() - step

    console.rule("4. report")
    report = result.write_report(report_path or Path(cfg.paths.report_dir) / "demo_backtest.html",
                                 title=f"trademl demo: walk-forward backtest on {dataset.symbol} ({built.path.name})")
    console.print(results_table(result.table))
    console.print(verdict(result))
    seconds["total"] = time.perf_counter() - started
    console.print(f"dataset: {built.path}")
    console.print(f"models:  {Path(cfg.paths.model_root)} ({', '.join(sorted(trained.stored))})")
    console.print(f"report:  {report}  (open it in a browser; it works offline)")
    console.print("took " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return DemoResult(built.path, Path(cfg.paths.model_root), report, trained.stored, result, seconds)
