"""Backtest metrics, the Sharpe statistics that keep them honest, and the baselines."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.baselines import comparison_table, random_target, run_baselines
from trademl.backtest.engine import run_backtest
from trademl.backtest.metrics import (
    deflate_all, deflated_sharpe_ratio, drawdowns, expected_max_sharpe,
    hit_rate_by_confidence, probabilistic_sharpe_ratio, session_dates,
)
from trademl.config import CostsConfig
from trademl.segments import bars_to_end
from trademl.data.synthetic import synthetic_bars

from test_backtest_engine import ACTION, CONFIDENCE, hand_bars

NO_COSTS = CostsConfig(commission_per_side=0.0, slippage_ticks=0.0)


def test_session_dates_follow_globex():
    stamps = pd.DatetimeIndex(["2024-03-03 23:00", "2024-03-04 13:30", "2024-03-04 21:59",
                               "2024-03-04 23:00", "2024-03-08 21:00"], tz="UTC")
    got = [d.strftime("%Y-%m-%d") for d in session_dates(stamps)]
    # Sunday 23:00 opens Monday's session; Monday 23:00 opens Tuesday's.
    assert got == ["2024-03-04", "2024-03-04", "2024-03-04", "2024-03-05", "2024-03-08"]


def test_sharpe_and_sortino_come_from_daily_session_pnl():
    bars = synthetic_bars(6000, seed=4, symbol="ES")
    result = run_backtest(bars, target=np.sign(np.sin(np.arange(len(bars)) / 37.0)))
    by_day: dict = {}
    for stamp, pnl in zip(bars.index, result.pnl):
        day = (stamp + pd.Timedelta(hours=1)).date()
        by_day[day] = by_day.get(day, 0.0) + pnl
    r = np.array(list(by_day.values())) / 100_000
    m = result.metrics
    assert m["sessions"] == len(by_day) == 5
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(252))
    assert m["total_pnl"] == pytest.approx(result.pnl.sum())
    assert math.isnan(m["cagr"]) and math.isnan(m["calmar"])  # 5 sessions are too few to annualise


def _daily_result(pnl_per_day: list[float], initial: float = 100_000.0):
    """A backtest result with one bar per weekday session (15:00 UTC) earning the given dollars."""
    from types import SimpleNamespace

    index = pd.bdate_range("2024-01-02 15:00", periods=len(pnl_per_day), tz="UTC")
    pnl = np.array(pnl_per_day, dtype=np.float64)
    zeros = np.zeros(len(pnl))
    trades = pd.DataFrame({"pnl": [pnl.sum()], "qty": [1], "bars_held": [len(pnl)]})
    return SimpleNamespace(initial_balance=initial, equity=initial + np.cumsum(pnl), pnl=pnl, index=index,
                           trade_qty=zeros, position=zeros + 1, costs=zeros, trades=trades)


def test_cagr_and_calmar_annualise_only_a_long_enough_span():
    from trademl.backtest.metrics import MIN_SESSIONS_TO_ANNUALISE, compute_metrics

    # 100 sessions: +$100 a day but -$400 on day 10 and +$600 on day 11: $100,000 -> $110,000.
    days = [100.0] * 100
    days[9], days[10] = -400.0, 600.0
    m = compute_metrics(_daily_result(days))
    assert m["sessions"] == 100 and m["total_return"] == pytest.approx(0.10)
    # by hand: 1.1 ** (252 / 100) - 1 = exp(2.52 * ln 1.1) - 1 = exp(0.2401817) - 1
    assert m["cagr"] == pytest.approx(0.271480, abs=1e-6)
    # the worst drawdown: $400 below the $100,900 peak
    assert m["max_drawdown_pct"] == pytest.approx(400 / 100_900)
    assert m["calmar"] == pytest.approx(0.271480 / (400 / 100_900), rel=1e-5)
    short = compute_metrics(_daily_result(days[:MIN_SESSIONS_TO_ANNUALISE - 1]))
    assert math.isnan(short["cagr"]) and math.isnan(short["calmar"])
    assert short["total_return"] > 0 and math.isfinite(short["sharpe"])  # the unannualised figures stay
    enough = compute_metrics(_daily_result([100.0] * MIN_SESSIONS_TO_ANNUALISE))
    assert enough["cagr"] == pytest.approx(1.063 ** (252 / MIN_SESSIONS_TO_ANNUALISE) - 1)


def test_drawdown_in_dollars_and_percent():
    dd_usd, dd_pct = drawdowns(np.array([100.0, 110.0, 90.0, 120.0, 60.0]), initial_balance=100.0)
    assert list(dd_usd) == [0, 0, 20, 0, 60]
    assert dd_pct[2] == pytest.approx(20 / 110) and dd_pct[4] == pytest.approx(0.5)


def test_trade_metrics_of_the_hand_computed_run():
    result = run_backtest(hand_bars("NQ"), {"action": ACTION, "confidence": CONFIDENCE})
    m = result.metrics
    assert m["trades"] == 3
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx((30.50 + 35.50) / 4.50)
    assert m["avg_trade"] == pytest.approx(61.50 / 3)
    assert m["costs_paid"] == pytest.approx(6 * 7.25)
    assert m["exposure"] == pytest.approx(5 / 8)
    assert m["turnover_contracts"] == 6
    assert m["max_drawdown_usd"] == pytest.approx(7.25)  # the last bar: -7.25 from the peak of 68.75


def test_psr_and_dsr_match_the_published_example():
    """Bailey & Lopez de Prado (2014), 'The Deflated Sharpe Ratio', numerical example:
    annualised SR 2.5 over 1250 days, skew -3, kurtosis 10, 100 trials whose annualised
    Sharpes have variance 0.5 -> expected max SR ~0.1132 per day, DSR ~0.90."""
    sr, t = 2.5 / math.sqrt(252), 1250
    sr0 = expected_max_sharpe(100, 0.5 / 252)
    assert sr0 == pytest.approx(0.1132, abs=5e-4)
    assert deflated_sharpe_ratio(sr, t, -3, 10, n_trials=100, sharpe_variance=0.5 / 252) == pytest.approx(0.9004, abs=2e-3)
    # PSR against zero, normal returns: Phi(SR sqrt(T-1) / sqrt(1 + SR^2 / 2))
    expected = NormalDist().cdf(sr * math.sqrt(t - 1) / math.sqrt(1 + sr**2 / 2))
    assert probabilistic_sharpe_ratio(sr, t, 0, 3) == pytest.approx(expected)
    assert probabilistic_sharpe_ratio(0.0, t) == pytest.approx(0.5)
    assert expected_max_sharpe(1, 0.1) == 0.0  # one trial: nothing to deflate


def test_random_strategies_on_a_random_walk_show_no_significant_edge():
    bars = synthetic_bars(30_000, seed=4, edge_ic=0.0)
    rng = np.random.default_rng(0)
    runs = {k: run_backtest(bars, target=np.sign(rng.standard_normal(len(bars))), costs=NO_COSTS)
            for k in range(20)}
    metrics = deflate_all({k: r.metrics for k, r in runs.items()})
    psr = np.array([m["psr"] for m in metrics.values()])
    dsr = np.array([m["dsr"] for m in metrics.values()])
    assert (dsr < 0.95).all(), dsr
    assert (dsr <= psr).all()  # deflating for 20 trials only ever lowers the evidence
    # without deflation, the luckiest of 20 coin-flip strategies looks significant: why DSR exists
    assert psr.max() > 0.9


@pytest.mark.parametrize("horizon", [1, 5])
def test_a_planted_edge_is_significant(horizon):
    bars = synthetic_bars(30_000, seed=3, edge_ic=0.1, edge_horizon=horizon)
    edge = bars["edge"].to_numpy()
    confidence = 2 * np.vectorize(NormalDist().cdf)(np.abs(edge)) - 1  # |edge| > 1.04 passes 0.7
    result = run_backtest(bars, {"action": np.sign(edge), "confidence": confidence})  # default costs
    assert result.metrics["psr"] > 0.95
    assert result.metrics["total_pnl"] > 0
    # the same rule on shuffled signals (no edge left) has nothing to show after costs
    shuffled = np.random.default_rng(1).permutation(edge)
    noise = run_backtest(bars, {"action": np.sign(shuffled), "confidence": confidence})
    assert noise.metrics["psr"] < 0.95


def test_hit_rate_rises_with_confidence_on_a_planted_edge_only():
    for edge_ic, check in ((0.1, lambda t: t["hit_rate"].iloc[-1] > t["hit_rate"].iloc[0] + 0.05),
                           (0.0, lambda t: (t["hit_rate"] - 0.5).abs().max() < 0.06)):
        bars = synthetic_bars(20_000, seed=6, edge_ic=edge_ic, edge_horizon=5)
        edge = bars["edge"].to_numpy()
        seg = np.zeros(len(bars), dtype=np.int32)
        table = hit_rate_by_confidence(bars["open"], bars["close"], np.sign(edge), np.abs(edge), seg, horizon=5, bins=5)
        assert list(table.columns) == ["confidence", "hit_rate", "count"] and len(table) == 5
        assert table["confidence"].is_monotonic_increasing
        assert check(table), table


def test_hit_rate_windows_never_cross_a_segment_end():
    bars = hand_bars("NQ")
    seg = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    table = hit_rate_by_confidence(bars["open"], bars["close"], np.ones(8), np.ones(8), seg, horizon=2, bins=1)
    assert table["count"].sum() == 4  # bars 0, 1 and 4, 5: a 2-bar window stays in its segment


def test_baselines_share_the_engine_and_the_trade_count():
    bars = synthetic_bars(8000, seed=8, edge_ic=0.1, edge_horizon=5, symbol="MNQ")
    edge = bars["edge"].to_numpy()
    signals = {"action": np.sign(edge), "confidence": np.abs(edge) / 3}
    strategy = run_backtest(bars, signals, confidence_threshold=0.4, name="ensemble")
    other = {"action": -np.sign(edge), "confidence": np.abs(edge) / 3}
    runs = run_baselines(bars, strategy, model_signals={"lgbm": signals, "contrarian": other},
                         confidence_threshold=0.4, seed=3)
    assert list(runs) == ["ensemble", "flat", "buy_and_hold", "random (seed 3)", "lgbm alone", "contrarian alone"]
    assert runs["flat"].pnl.sum() == 0 and runs["flat"].metrics["trades"] == 0
    hold = runs["buy_and_hold"]
    left = bars_to_end(strategy.segments)
    assert (hold.position[(left >= 1) & (np.arange(len(bars)) >= 1)] == 5).sum() > 0.99 * len(bars) - 10
    assert (hold.position[left == 0] == 0).all()
    assert len(runs["random (seed 3)"].trades) == len(strategy.trades)
    assert np.array_equal(runs["lgbm alone"].pnl, strategy.pnl)  # same signals, same engine, same numbers
    table = comparison_table(runs)
    assert list(table.index) == list(runs)
    assert table.loc["ensemble", "total_pnl"] > 0 > table.loc["contrarian alone", "total_pnl"]
    assert (table["dsr_trials"] == 3).all()  # ensemble + two models; baselines are not candidates
    assert table.loc["ensemble", "dsr"] <= table.loc["ensemble", "psr"]


def test_random_target_is_seeded_and_exact():
    seg = np.repeat([0, 1, 2], 400).astype(np.int32)
    a, b = random_target(seg, 50, seed=1), random_target(seg, 50, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, random_target(seg, 50, seed=2))
    starts = np.flatnonzero((a != 0) & (np.r_[0, a[:-1]] == 0))
    assert len(starts) == 50 and set(np.unique(a)) <= {-1.0, 0.0, 1.0}
    assert not random_target(seg, 0, seed=1).any()  # a strategy that never traded: nor does its twin


def test_random_baseline_of_a_strategy_that_trades_every_bar_says_what_fits():
    from trademl.backtest.baselines import random_entries

    bars = synthetic_bars(1500, seed=2)
    flipping = run_backtest(bars, target=np.where(np.arange(len(bars)) % 2, 1.0, -1.0))
    run = random_entries(bars, flipping, seed=0)
    assert len(flipping.trades) > len(bars) / 2
    assert "trades fit" in run.name and len(run.trades) < len(flipping.trades)


def _overlapping(edge: float, n: int, horizon: int, rng, every: int = 1) -> np.ndarray:
    """Per-bar P&L of ``horizon``-bar trades on i.i.d. unit bar returns with mean ``edge``, a
    trade opened on every ``every``-th bar (0 between): neighbouring trades share bars."""
    bars = rng.normal(edge, 1.0, n + horizon)
    trades = np.convolve(bars, np.ones(horizon), "valid")[:n]
    return np.where(np.arange(n) % every == 0, trades, 0.0)


def test_the_overlap_t_statistic_has_its_size_and_counts_sparse_trades_for_what_they_are():
    """``overlapping_mean_t`` (the stacker's significance rule): on overlapping 5-bar trades with
    no edge it rejects at 1.645 about 5% of the time, where the plain t (every bar independent)
    rejects ~4x as often; on trades opened every 5th bar (no overlap) it is the plain t, where
    the old bound (one outcome per 5 bars) would have divided it by sqrt(5)."""
    from trademl.stats import overlapping_mean_t

    rng = np.random.default_rng(0)
    h, n = 5, 2_000
    null = [_overlapping(0.0, n, h, rng) for _ in range(1_000)]
    rejected = np.mean([overlapping_mean_t(x, h) > 1.645 for x in null])
    plain = np.mean([x.mean() / (x.std() / math.sqrt(n)) > 1.645 for x in null])
    assert 0.03 <= rejected <= 0.075 and plain > 0.15
    sparse = _overlapping(0.03, n, h, rng, every=h)
    plain_t = sparse.mean() / (sparse.std() / math.sqrt(n))
    assert overlapping_mean_t(sparse, h) == pytest.approx(plain_t, rel=0.1)
    assert overlapping_mean_t(np.zeros(50), h) == 0.0
