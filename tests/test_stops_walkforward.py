"""ATR stops in the trade list and in the walk-forward (issue 13).

Hand-computed: a long stopped inside a bar and a fresh entry after it are two trades, each
priced at its own fill (the stop's exit at the stop, the entry at its open), and their P&L sums
to the equity curve's; a breach on the bar a stop fired pays that exit once. The walk-forward's
``stops=True`` (``trademl backtest --stops``) trades every run exactly as ``backtest-signals
--stops`` does, with or without an account's rules, and says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.engine import run_backtest
from trademl.backtest.signals import stop_inputs, through_rules, with_exits
from trademl.config import load_config
from trademl.market.contracts import contract_spec
from trademl.risk.rules import rules_for

# NQ: tick 0.25 = $5, a point $20. Costs: $2 a side and 1 tick of slippage, $7 a contract a side.
COSTS = {"costs": {"commission_per_side": 2.0, "slippage_ticks": 1.0}}


def scripted_bars() -> pd.DataFrame:
    """Eight NQ minute bars (08:00 CT on a Tuesday: far from the 15:10 CT flatten)."""
    index = pd.date_range("2024-03-05 14:00", periods=8, freq="1min", tz="UTC")
    bars = pd.DataFrame({
        "open": [100.0, 100.0, 100.5, 98.5, 99.0, 99.5, 100.0, 100.2],
        "high": [100.0, 101.0, 101.0, 99.0, 99.8, 100.2, 100.5, 100.4],
        "low": [100.0, 99.5, 97.5, 98.2, 98.6, 99.1, 99.6, 100.0],
        "close": [100.0, 100.5, 98.5, 99.0, 99.5, 100.0, 100.2, 100.2],
    }, index=index)
    bars.attrs["symbol"] = "NQ"
    return bars


def stopped_run(target, *, account=None):
    """``target`` through the engine, then the ATR stops (1 point ATR: stop 2, target 3 points
    from the entry's open), with or without the account's rules; the run and its exits."""
    cfg = load_config(None, COSTS)
    bars = scripted_bars()
    plain = run_backtest(bars, target=np.asarray(target, float), config=cfg, name="scripted")
    exits = stop_inputs(bars, contract_spec("NQ"), cfg, atr_ticks=np.full(len(bars), 4.0))  # 4 ticks = 1 point
    runs, verdicts = with_exits({"scripted": plain}, bars, rules_for(account) if account else None, exits)
    return runs["scripted"], verdicts.get("scripted")


@pytest.mark.parametrize("account", [None, "topstep-50k"])
def test_a_stopped_long_and_a_fresh_long_after_it_are_two_trades_at_their_own_fills(account):
    # Long 1 from bar 1 (entry at its open 100, bought at 100.25); stop 98, target 103. Bar 2's
    # low 97.5 reaches the stop: out at 98 (sold at 97.75). The signal also goes flat at bar 2's
    # close, so the stop's exit is booked on bar 3, the bar the signal's own close would have used.
    # A fresh long from bar 4 (open 99, bought at 99.25; stop 97, target 102, never touched),
    # closed by the signal at bar 6's open 100 (sold at 99.75).
    run, verdict = stopped_run([1, 1, 0, 1, 1, 0, 0, 0], account=account)
    trades = run.trades
    assert trades[["entry_bar", "exit_bar", "side", "qty"]].values.tolist() == [[1, 3, 1, 1], [4, 6, 1, 1]]
    assert trades["entry_price"].tolist() == [100.25, 99.25]
    assert trades["exit_price"].tolist() == [97.75, 99.75]
    # (97.75 - 100.25) x $20 - $4 commission; (99.75 - 99.25) x $20 - $4.
    assert trades["pnl"].tolist() == pytest.approx([-54.0, 6.0])
    # Per bar: +3 (entry bar: 0.5 point less $7), -57 (to the stop, $7 exit), 0, +3, +10, -7.
    assert run.pnl.tolist() == pytest.approx([0.0, 3.0, -57.0, 0.0, 3.0, 10.0, -7.0, 0.0])
    assert trades["pnl"].sum() == pytest.approx(run.equity[-1] - run.initial_balance) == pytest.approx(-48.0)
    assert run.trade_qty.tolist() == [0, 1, 0, -1, 1, 0, -1, 0]
    assert (verdict is None) == (account is None)
    if verdict is not None:
        assert verdict.breached is None and verdict.final_balance == pytest.approx(50_000 - 48.0)


def test_a_stop_exit_and_a_flip_on_the_same_bar_keep_their_own_prices():
    # The same stopped long, but the signal flips short at bar 2's close: bar 3 books the stop's
    # exit (97.75) and opens the short at its own open 98.5 (sold at 98.25), not at the exit's
    # price. Short stop 100.5, target 95.5: untouched; covered at bar 5's open 99.5 (99.75).
    run, _ = stopped_run([1, 1, -1, -1, 0, 0, 0, 0])
    trades = run.trades
    assert trades[["entry_bar", "exit_bar", "side"]].values.tolist() == [[1, 3, 1], [3, 5, -1]]
    assert trades["entry_price"].tolist() == [100.25, 98.25]
    assert trades["exit_price"].tolist() == [97.75, 99.75]
    assert trades["pnl"].tolist() == pytest.approx([-54.0, (98.25 - 99.75) * 20 - 4.0])
    assert trades["pnl"].sum() == pytest.approx(run.pnl.sum()) == pytest.approx(-88.0)
    # Bar 3 carries both prices: the entry's fill, and the stop's exit for the contracts it closed.
    assert run.fill_price[3] == 98.25 and run.exit_fill[3] == 97.75 and run.trade_qty[3] == -2


def test_a_breach_on_the_bar_a_stop_fired_pays_that_exit_once_at_the_stop():
    from trademl.market.execution import ExecutionModel
    from trademl.risk.account import apply_rules

    # NQ at 15,000, ATR 30 points: long 1 at bar 1's open (bought at 15,000.25), stop 14,940.
    # Bar 2 trades down to 14,930: out at 14,940 (sold at 14,939.75), -$1,214 with costs, past
    # the $1,000 daily loss limit at that bar. The rules must not liquidate a second time.
    index = pd.date_range("2024-03-05 14:00", periods=5, freq="1min", tz="UTC")
    open_ = np.array([15_000.0, 15_000.0, 14_995.0, 14_950.0, 14_960.0])
    close = np.array([15_000.0, 14_995.0, 14_950.0, 14_960.0, 14_970.0])
    high = np.array([15_000.0, 15_005.0, 14_996.0, 14_965.0, 14_975.0])
    low = np.array([15_000.0, 14_990.0, 14_930.0, 14_945.0, 14_955.0])
    execution = ExecutionModel(contract_spec("NQ"), commission_per_side=2.0, slippage_ticks=1.0, max_position=5)
    stops = {"high": high, "low": low, "atr": np.full(5, 30.0), "stop_atr": 2.0, "target_atr": 3.0}
    verdict = apply_rules(index, np.ones(5), open_, close, execution, rules_for("topstep-50k"), stops=stops)
    assert verdict.breached == "daily_loss_limit" and verdict.breach_bar == 2
    ex = verdict.execution
    assert ex.costs.sum() == pytest.approx(2 * 7.0)  # the entry and the stop's exit, nothing more
    assert ex.pnl.sum() == pytest.approx((14_939.75 - 15_000.25) * 20 - 4.0) == pytest.approx(-1_214.0)
    assert ex.trade_qty.tolist() == [0, 1, 0, -1, 0] and ex.fill_price[3] == 14_939.75
    assert verdict.final_balance == pytest.approx(50_000 - 1_214.0)


# ----------------------------------------------------------------------------- the walk-forward


@pytest.fixture(scope="module")
def walk_forwards():
    """One small LightGBM-only walk-forward, plain, with stops, and with stops through the rules."""
    from trademl.backtest.walkforward import walk_forward_backtest
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars

    from conftest import TINY_OVERRIDES

    cfg = load_config(None, {"lgbm": TINY_OVERRIDES["lgbm"], "backtest": {"n_folds": 2, "confidence_threshold": 0.2}})
    ds = dataset_from_bars(synthetic_bars(8_000, seed=3, edge_ic=0.0, symbol="NQ"), cfg)
    run = lambda **kw: walk_forward_backtest(ds, cfg, models=("lgbm",), **kw)  # noqa: E731
    return ds, cfg, run(), run(stops=True), run(stops=True, account="topstep-50k")


def test_walk_forward_stops_trade_every_run_as_backtest_signals_does(walk_forwards):
    ds, cfg, plain, stopped, ruled = walk_forwards
    rows = np.flatnonzero(ds.frame.index.isin(plain.bars.index))
    # The stop inputs backtest-signals builds, with the dataset's own ATR feature on the test bars.
    exits = stop_inputs(plain.bars, ds.spec, cfg, atr_ticks=ds.frame["atr_ticks_14"].to_numpy()[rows])
    rules = rules_for("topstep-50k")
    assert set(stopped.runs) == set(ruled.runs) == set(plain.runs)
    shortened = 0
    for name, run in plain.runs.items():
        alone, _ = with_exits({name: run}, plain.bars, None, exits)
        np.testing.assert_array_equal(stopped.runs[name].pnl, alone[name].pnl, err_msg=name)
        verdict = through_rules(run, plain.bars, rules, exits)
        np.testing.assert_array_equal(ruled.runs[name].pnl, verdict.execution.pnl, err_msg=name)
        assert ruled.accounts[name]["breached"] == verdict.breached and ruled.accounts[name]["passed"] == verdict.passed
        # A stop only ever ends a trade early: never a position the signals did not hold.
        assert (stopped.runs[name].position[run.position == 0] == 0).all()
        shortened += int(np.abs(stopped.runs[name].position).sum() < np.abs(run.position).sum())
        # The trade list prices every exit: its P&L is the equity's, less what is still open.
        trades = stopped.runs[name].trades
        assert trades["exit_price"].notna().all()
        if stopped.runs[name].position[-1] == 0:
            assert trades["pnl"].sum() == pytest.approx(stopped.runs[name].pnl.sum(), abs=1e-6)
    assert shortened >= 1, "some run held a trade that reached its stop or target"
    # The table is the stopped runs' own.
    assert stopped.table.loc["buy_and_hold", "total_pnl"] == pytest.approx(stopped.runs["buy_and_hold"].pnl.sum())


def test_walk_forward_says_stops_were_used(walk_forwards, tmp_path):
    _, cfg, plain, stopped, ruled = walk_forwards
    used = {"atr": "atr_ticks_14", "stop_atr": cfg.risk.stop_atr, "target_atr": cfg.risk.target_atr,
            "both_in_one_bar": "stop"}
    assert plain.stops is None and stopped.stops == used and ruled.stops == used
    assert stopped.accounts is None  # stops alone: no rules, no verdicts
    assert all(a["stops"] == used for a in ruled.accounts.values())
    page = stopped.write_report(tmp_path / "stops.html").read_text()
    assert f"ATR stops {cfg.risk.stop_atr:g} / targets {cfg.risk.target_atr:g}" in page


def test_cli_backtest_stops_with_and_without_an_account(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trademl.cli import app
    from trademl.data.synthetic import synthetic_bars

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trademl.toml").write_text(
        '[lgbm]\nn_estimators = 20\nnum_leaves = 7\nn_folds = 2\nmin_child_samples = 200\nnum_threads = 1\n'
        '[backtest]\nconfidence_threshold = 0.2\n'
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\nreport_dir = "{tmp_path / "reports"}"\n')
    synthetic_bars(6_000, seed=5, symbol="NQ").to_csv(tmp_path / "nq.csv", index_label="timestamp")
    runner = CliRunner()
    result = runner.invoke(app, ["backtest", "nq.csv", "--folds", "2", "--models", "lgbm", "--stops",
                                 "--account", "topstep-50k", "--out", "wf.html"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "every run with ATR stops: stop 2 ATR, target 3 ATR (atr_ticks_14)" in out
    assert "topstep-50k ensemble:" in out and "ATR stops 2 / targets 3" in (tmp_path / "wf.html").read_text()
    # --stops alone: the stops on the runs' own fills, no rules and no verdicts.
    alone = runner.invoke(app, ["backtest", "nq.csv", "--folds", "2", "--models", "lgbm", "--stops", "--out", "a.html"],
                          env={"COLUMNS": "200"})
    assert alone.exit_code == 0, alone.output
    assert "every run with ATR stops" in alone.output and "topstep" not in alone.output
    assert "--stops" in runner.invoke(app, ["backtest", "--help"], env={"COLUMNS": "200"}).output


def test_backtest_signals_json_says_whether_stops_were_used(tmp_path):
    from trademl.backtest.signals import backtest_signals, read_signals
    from trademl.data.synthetic import synthetic_bars

    bars = synthetic_bars(600, seed=4, symbol="NQ")
    pd.DataFrame({"timestamp": [bars.index[i].isoformat() for i in (50, 120, 300)], "action": ["BUY", "SELL", "BUY"]}
                 ).to_csv(tmp_path / "s.csv", index=False)
    signals = read_signals(tmp_path / "s.csv")
    assert backtest_signals(bars, signals, threshold=0.5).to_json()["stops"] is None
    with_stops = backtest_signals(bars, signals, threshold=0.5, stops=True, account="topstep-50k").to_json()
    assert with_stops["stops"] == {"atr": "atr_ticks_14", "stop_atr": 2.0, "target_atr": 3.0, "both_in_one_bar": "stop"}
