"""Backtests through the shared execution model: engine, metrics, baselines and the HTML report."""
