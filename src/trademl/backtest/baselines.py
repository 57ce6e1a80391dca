"""Baselines a strategy must beat, run through the same engine on the same bars.

- flat: never trades (the zero line every cost figure is measured against);
- buy_and_hold: max_position_size contracts long, flattened at every segment end like any
  intraday account, re-entered at the next segment;
- random: as many round trips as the strategy made, one contract each, random side and
  random (non-overlapping) entry and exit bars, seeded;
- each model alone: every model's own signals through the same position rule.

The comparison table deflates every Sharpe for the number of rows compared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trademl.backtest.engine import BacktestResult, run_backtest
from trademl.backtest.metrics import compute_metrics, deflate_all
from trademl.config import fixed_threshold, resolve_config
from trademl.segments import bars_to_end
from trademl.errors import TradeMLError

TABLE_COLUMNS = [
    "total_pnl", "total_return", "cagr", "sharpe", "sortino", "max_drawdown_usd", "max_drawdown_pct",
    "calmar", "trades", "win_rate", "profit_factor", "avg_trade", "exposure", "turnover_contracts",
    "costs_paid", "psr", "dsr",
]


def _like(result: BacktestResult, bars: pd.DataFrame, target, name: str) -> BacktestResult:
    """Run ``target`` with exactly the contract, costs, segments and balance of ``result``."""
    model = result.model
    costs = _costs_of(model)
    return run_backtest(bars, target=target, spec=model.spec, costs=costs, max_position_size=model.max_position,
                        segments=result.segments, initial_balance=result.initial_balance, name=name)


def _costs_of(model):
    from trademl.config import CostsConfig

    return CostsConfig(commission_per_side=model.commission_per_side, slippage_ticks=model.slippage_ticks)


def flat(bars: pd.DataFrame, like: BacktestResult) -> BacktestResult:
    return _like(like, bars, np.zeros(len(bars)), "flat")


def buy_and_hold(bars: pd.DataFrame, like: BacktestResult) -> BacktestResult:
    return _like(like, bars, np.full(len(bars), float(like.model.max_position)), "buy_and_hold")


def random_target(segments: np.ndarray, n_trades: int, seed: int) -> np.ndarray:
    """A target series with exactly ``n_trades`` one-contract round trips at random bars.

    2n distinct entry/exit bars are drawn among those that can still open a position (two
    or more bars before their segment ends) and paired in time order, so trips never
    overlap; a trip is cut at its segment's end, where the execution model flattens anyway.
    """
    seg = np.asarray(segments)
    eligible = np.flatnonzero(bars_to_end(seg) >= 2)
    if 2 * n_trades > len(eligible):
        raise TradeMLError(f"cannot place {n_trades} random trades in {len(eligible)} eligible bars",
                           where="baselines.random")
    if n_trades == 0:  # a strategy that never traded: the random twin never trades either
        return np.zeros(len(seg))
    rng = np.random.default_rng(seed)
    bars = np.sort(rng.choice(eligible, size=2 * n_trades, replace=False))
    entry, exit_ = bars[0::2], bars[1::2]
    side = rng.choice([-1.0, 1.0], size=n_trades)
    # +side from entry to exit-1 via a difference array, then cut at each segment's end.
    delta = np.zeros(len(seg) + 1)
    np.add.at(delta, entry, side)
    np.add.at(delta, exit_, -side)
    target = np.cumsum(delta[:-1])
    trip_of_bar = np.searchsorted(entry, np.arange(len(seg)), side="right") - 1
    same_segment = (trip_of_bar >= 0) & (seg == seg[entry[np.maximum(trip_of_bar, 0)]])
    return np.where(same_segment, target, 0.0)


def random_entries(bars: pd.DataFrame, like: BacktestResult, *, n_trades: int | None = None,
                   seed: int = 0) -> BacktestResult:
    wanted = len(like.trades) if n_trades is None else n_trades
    # Non-overlapping trips need two bars each: a strategy that trades almost every bar gets
    # as many as fit, and the row's name says so.
    fits = int((bars_to_end(np.asarray(like.segments)) >= 2).sum()) // 2
    n = min(wanted, fits)
    name = f"random (seed {seed})" if n == wanted else f"random (seed {seed}, {n} of {wanted} trades fit)"
    return _like(like, bars, random_target(like.segments, n, seed), name)


def model_alone(bars: pd.DataFrame, like: BacktestResult, name: str, signals, *,
                confidence_threshold: float, hold_bars: int | None = None) -> BacktestResult:
    model = like.model
    return run_backtest(bars, signals, spec=model.spec, costs=_costs_of(model), max_position_size=model.max_position,
                        confidence_threshold=confidence_threshold, segments=like.segments,
                        initial_balance=like.initial_balance, name=name, hold_bars=hold_bars)


def run_baselines(bars: pd.DataFrame, result: BacktestResult, *, model_signals: dict | None = None,
                  confidence_threshold: float | None = None, seed: int | None = None,
                  hold_bars: int | None = None) -> dict[str, BacktestResult]:
    """The strategy plus every baseline, keyed by display name (the strategy first).

    ``confidence_threshold`` and ``seed`` left as None are [backtest] confidence_threshold
    and random_baseline_seed."""
    if confidence_threshold is None or seed is None:
        bt = resolve_config().backtest
        confidence_threshold = bt.confidence_threshold if confidence_threshold is None else confidence_threshold
        seed = bt.random_baseline_seed if seed is None else seed
    confidence_threshold = fixed_threshold(confidence_threshold)
    runs = {result.name: result}
    for run in (flat(bars, result), buy_and_hold(bars, result), random_entries(bars, result, seed=seed)):
        runs[run.name] = run
    for name, signals in (model_signals or {}).items():
        runs[f"{name} alone"] = model_alone(bars, result, f"{name} alone", signals,
                                            confidence_threshold=confidence_threshold, hold_bars=hold_bars)
    return runs


BASELINE_NAMES = ("flat", "buy_and_hold", "random")


def is_baseline(name: str) -> bool:
    return name.split(" ")[0] in BASELINE_NAMES


def comparison_table(runs: dict[str, BacktestResult], *, n_trials: int | None = None,
                     sharpe_variance: float | None = None) -> pd.DataFrame:
    """One row per run with the headline metrics.

    Every DSR is deflated for the candidates compared to choose a strategy: the strategy
    and each model alone (baselines are yardsticks, not candidates). Pass ``n_trials`` (and
    ``sharpe_variance``) when more configurations were tried than the table shows.
    """
    metrics = {name: compute_metrics(run) for name, run in runs.items()}
    metrics = deflate_all(metrics, [k for k in runs if not is_baseline(k)], n_trials=n_trials,
                          sharpe_variance=sharpe_variance)
    table = pd.DataFrame.from_dict(metrics, orient="index")
    table.index.name = "run"
    return table[TABLE_COLUMNS + ["dsr_trials"]]
