"""Prop-firm account rules, hand-computed: the trailing max loss breached intraday, the threshold
rising with end-of-day highs and locking at the starting balance, the daily loss limit, the
15:10 CT flatten across a DST change, the consistency rule, on NQ and MNQ; the Monte Carlo pass
probability against the gambler's-ruin formula; Kelly sizing and VaR with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel
from trademl.risk.account import apply_rules, trading_days
from trademl.risk.montecarlo import drifted_ruin_probability, pass_probability
from trademl.risk.rules import PRESETS, rules_for
from trademl.risk.sizing import atr_stop, contracts, gaussian_var_es, historical_var_es, kelly_fraction

FREE = {"commission_per_side": 0.0, "slippage_ticks": 0.0}  # hand arithmetic without costs


def bars_at(local: list[str], closes, zone: str = "America/Chicago") -> pd.DataFrame:
    """Bars opening at the given local (CT) times; each opens at the previous close."""
    index = pd.DatetimeIndex(pd.to_datetime(local)).tz_localize(zone).tz_convert("UTC")
    closes = np.asarray(closes, dtype=float)
    opens = np.r_[closes[0], closes[:-1]]
    return pd.DataFrame({"open": opens, "close": closes}, index=index)


def minutes(day: str, start: str, n: int) -> list[str]:
    return [str(t) for t in pd.date_range(f"{day} {start}", periods=n, freq="1min")]


def run(bars, target, root="NQ", max_position=50, **rules):
    execution = ExecutionModel(contract_spec(root), max_position=max_position, **FREE)
    r = rules_for("topstep-50k", **rules)
    return apply_rules(bars.index, target, bars["open"], bars["close"], execution, r)


def test_trailing_max_loss_is_breached_intraday_at_the_known_bar_nq_and_mnq():
    # NQ, $20 a point: long 1 from bar 1 at 15000, 10 points lower every bar: equity 50,000 - 200 t,
    # the threshold 48,000 is reached at the close of bar 10.
    bars = bars_at(minutes("2024-03-05", "09:00", 30), 15_000 - 10.0 * np.arange(30))
    result = run(bars, np.ones(30), profit_target=1e9, daily_loss_limit=None)
    assert result.breached == "trailing_max_loss" and result.breach_bar == 10
    assert result.equity[10] == pytest.approx(48_000.0)
    assert np.all(result.execution.pnl[11:] == 0) and np.all(result.execution.position[11:] == 0)
    assert result.summary()["breach_time"] == bars.index[10].isoformat() and not result.passed
    # MNQ, $2 a point, 5 contracts: $10 a point, so 200 points: bar 20.
    bars = bars_at(minutes("2024-03-05", "09:00", 30), 15_000 - 10.0 * np.arange(30))
    result = run(bars, np.full(30, 5.0), root="MNQ", profit_target=1e9, daily_loss_limit=None)
    assert result.breached == "trailing_max_loss" and result.breach_bar == 20
    assert result.execution.position[20] == 5 and result.execution.position[21] == 0
    # The contract cap: 50 micros, 5 minis.
    assert run(bars, np.full(30, 80.0), root="MNQ", max_position=100, profit_target=1e9, trailing_max_loss=1e6,
               daily_loss_limit=None).execution.position.max() == 50
    assert run(bars, np.full(30, 8.0), profit_target=1e9, trailing_max_loss=1e6,
               daily_loss_limit=None).execution.position.max() == 5


def _days(gains: list[float], root="NQ"):
    """One trading day per gain: long 1 NQ from 09:01 CT, the day's close up by gain/20 points."""
    local, closes, price = [], [], 15_000.0
    for d, gain in enumerate(gains):
        day = (pd.Timestamp("2024-03-04") + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
        local += minutes(day, "09:00", 3)
        closes += [price, price + gain / 40, price + gain / 20]
        price += gain / 20
    bars = bars_at(local, closes)
    target = np.ones(len(bars))
    target[2::3] = 0  # flat at each day's last bar: the gain is banked daily
    return bars, target


def test_the_threshold_trails_end_of_day_highs_and_locks_at_the_starting_balance():
    bars, target = _days([1_500, 1_000, 2_000, -500])
    result = run(bars, target, profit_target=1e9, consistency_max_share=None)
    assert result.breached is None
    daily = result.daily
    np.testing.assert_allclose(daily["end_balance"], [51_500, 52_500, 54_500, 54_000])
    # 50,000 - 2,000; then 51,500 - 2,000; then min(52,500 - 2,000, 50,000): locked from there on.
    np.testing.assert_allclose(daily["threshold"], [48_000, 49_500, 50_000, 50_000])
    assert result.threshold[-1] == 50_000


def test_the_daily_loss_limit_is_breached_at_the_known_bar():
    # Long 1 NQ, 10 points ($200) lower each bar: the day's loss reaches $1,000 at bar 5.
    bars = bars_at(minutes("2024-03-05", "09:00", 12), 15_000 - 10.0 * np.arange(12))
    result = run(bars, np.ones(12), profit_target=1e9, trailing_max_loss=5_000)
    assert result.breached == "daily_loss_limit" and result.breach_bar == 5
    # Switched off (TopstepX): the same day goes on until the trailing limit, at 5,000.
    free = run(bars, np.ones(12), profit_target=1e9, trailing_max_loss=5_000, daily_loss_limit=None)
    assert free.breached is None and free.execution.position[-1] == 1


@pytest.mark.parametrize("day, flat_utc", [("2024-03-08", "21:10"), ("2024-03-11", "20:10"),  # CST, then CDT
                                           ("2024-11-01", "20:10"), ("2024-11-04", "21:10")])  # CDT, then CST
def test_positions_are_flat_at_1510_ct_across_the_dst_changes(day, flat_utc):
    bars = bars_at(minutes(day, "15:00", 20) + minutes(day, "17:00", 5), 15_000 + np.arange(25.0))
    result = run(bars, np.ones(25), profit_target=1e9)
    utc = bars.index.strftime("%H:%M")
    first_flat = list(utc).index(flat_utc)
    pos = result.execution.position
    assert pos[first_flat - 1] == 1 and np.all(pos[first_flat:20] == 0)  # closed at 15:10's open
    assert result.execution.trade_qty[first_flat] == -1
    assert pos[21] == 1  # 17:00 CT: the next trading day trades again
    day_of = trading_days(bars.index, result.rules)[0]
    assert day_of[19] + 1 == day_of[20]  # 17:00 CT starts the next day's session


def test_a_pass_needs_the_consistency_rule():
    # Target 3,000: after day 2 the profit is 3,100 but the best day (2,500) is over half of it;
    # after day 3 (5,100) it is not: passed at the end of day 3, nothing traded after.
    bars, target = _days([2_500, 600, 2_000, 1_000])
    result = run(bars, target)
    assert result.passed and result.breached is None
    assert result.pass_bar == 8 and np.all(result.execution.pnl[9:] == 0)
    assert result.final_balance == pytest.approx(55_100)
    without = run(bars, target, consistency_max_share=None)
    assert without.pass_bar == 5  # day 2 would have passed without it
    assert run(bars, target, min_trading_days=4).pass_bar == 11  # four days needed: passed at day 4's end
    assert run(bars, target, min_trading_days=5).passed is False


def test_presets_are_the_issues_table_and_overridable():
    table = {"topstep-50k": (3_000, 2_000, 1_000, 5, 50), "topstep-100k": (6_000, 3_000, 2_000, 10, 100),
             "topstep-150k": (9_000, 4_500, 3_000, 15, 150)}
    for name, values in table.items():
        r = PRESETS[name]
        assert (r.profit_target, r.trailing_max_loss, r.daily_loss_limit, r.max_contracts_minis,
                r.max_contracts_micros) == values
    assert rules_for("TOPSTEP-50K", daily_loss_limit=None).daily_loss_limit is None
    with pytest.raises(Exception, match="unknown account rules"):
        rules_for("ftmo-10k")
    with pytest.raises(Exception, match="trailing_max_loss"):
        rules_for("topstep-50k", trailing_max_loss=-1)


def test_pass_probability_matches_the_gamblers_ruin_of_a_drifted_walk():
    """i.i.d. normal daily P&L, a fixed loss limit: P(+target before -limit) of a drifted random
    walk, with Siegmund's correction for daily steps."""
    rng = np.random.default_rng(7)
    for mu, sigma, target, limit in ((60.0, 500.0, 3_000.0, 2_000.0), (0.0, 400.0, 3_000.0, 2_000.0),
                                     (-30.0, 450.0, 2_000.0, 2_500.0)):
        daily = rng.normal(mu, sigma, 200_000)
        rules = rules_for("topstep-50k", profit_target=target, trailing_max_loss=limit, daily_loss_limit=None,
                          consistency_max_share=None, min_trading_days=0)
        mc = pass_probability(daily, rules, n_paths=20_000, max_days=3_000, block=1, trailing=False, seed=1)
        theory = drifted_ruin_probability(mu, sigma, target, limit)
        assert mc.unresolved < 0.005
        assert abs(mc.probability - theory) <= 0.02, (mu, mc.probability, theory)
        assert mc.interval[0] <= mc.probability <= mc.interval[1]
    # Trailing is harder to pass than a fixed limit of the same size, on the same days.
    rules = rules_for("topstep-50k", daily_loss_limit=None, consistency_max_share=None, min_trading_days=0)
    daily = rng.normal(60.0, 500.0, 50_000)
    fixed = pass_probability(daily, rules, n_paths=5_000, max_days=2_000, block=1, trailing=False).probability
    trailing = pass_probability(daily, rules, n_paths=5_000, max_days=2_000, block=1).probability
    assert trailing < fixed


def test_kelly_sizing_stops_and_var_have_known_answers():
    assert kelly_fraction(0.6, 1.0) == pytest.approx(0.2)
    assert kelly_fraction(0.4, 1.0) == 0.0
    assert kelly_fraction(0.5, 2.0) == pytest.approx(0.25)
    # Half Kelly of a $2,000 budget at $100 a contract: floor(0.1 * 2000 / 100) = 2.
    assert contracts(0.6, 1.0, 100.0, 2_000.0, max_contracts=5) == 2
    assert contracts(0.9, 3.0, 100.0, 50_000.0, max_contracts=5) == 5  # the rules' cap
    # The budget is $250 from the limit: a third contract's stop ($300) would breach it.
    assert contracts(0.9, 3.0, 100.0, 250.0, max_contracts=5, kelly_share=1.0) == 2
    assert contracts(0.9, 3.0, 100.0, 0.0, max_contracts=5) == 0
    assert atr_stop(100.0, 1, 2.0, tick_size=0.25) == (96.0, 106.0)
    assert atr_stop(100.1, -1, 1.0, stop_atr=1.5, target_atr=2.0, tick_size=0.25) == (101.75, 98.0)
    pnl = np.r_[np.full(95, 10.0), [-100.0, -200.0, -300.0, -400.0, -500.0]]
    var, es = historical_var_es(pnl, 0.95)
    assert var == pytest.approx(100.0, abs=1e-9) and es == pytest.approx(300.0, abs=1e-9)
    var, es = gaussian_var_es(1_000.0, 0.95)
    assert var == pytest.approx(1_644.85, abs=0.01) and es == pytest.approx(2_062.71, abs=0.01)
    assert math.isclose(drifted_ruin_probability(0.0, 1.0, 1.0, 1.0), 0.5)


def test_backtest_signals_on_a_losing_series_stops_at_the_breach_and_not_a_bar_later(tmp_path):
    import json

    from typer.testing import CliRunner

    from trademl.backtest.engine import run_backtest
    from trademl.cli import app

    # NQ falling 5 points a bar through one CT morning; the bot buys at 09:00 and again at 09:05.
    bars = bars_at(minutes("2024-03-05", "08:30", 60) + minutes("2024-03-06", "08:30", 60),
                   15_000 - 5.0 * np.arange(120))
    bars["high"], bars["low"], bars["volume"] = bars[["open", "close"]].max(axis=1), bars[["open", "close"]].min(axis=1), 100
    bars[["open", "high", "low", "close", "volume"]].to_csv(tmp_path / "nq.csv", index_label="timestamp")
    signals = pd.DataFrame({"timestamp": [bars.index[30].isoformat(), bars.index[35].isoformat()],
                            "action": ["BUY", "BUY"], "confidence": [0.9, 0.9]})
    signals.to_csv(tmp_path / "signals.csv", index=False)
    out = CliRunner().invoke(app, ["backtest-signals", str(tmp_path / "nq.csv"), str(tmp_path / "signals.csv"),
                                   "--symbol", "NQ", "--account", "topstep-50k", "--threshold", "0.5",
                                   "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "r.html").read_text()
    assert "Account rules: equity against the limits" in page and "failed (daily_loss_limit)" in page
    got = json.loads((tmp_path / "r.json").read_text())
    # The same signals without rules, by hand: the first bar whose equity is $1,000 under the day's start.
    per_bar = pd.DataFrame({"action": np.zeros(120, np.int8), "confidence": np.zeros(120)}, index=bars.index)
    # A signal stamped 09:00 is decided at the close of the bar that closed then: the 08:59 bar.
    per_bar.iloc[[29, 34], 0], per_bar.iloc[[29, 34], 1] = 1, 0.9
    free = run_backtest(bars.assign(), per_bar, spec=contract_spec("NQ"), max_position_size=5,
                        confidence_threshold=0.5, initial_balance=50_000)
    equity = 50_000 + np.cumsum(free.pnl)
    breach = int(np.flatnonzero(equity <= 49_000)[0])
    account = got["account"]
    assert account["rules"] == "topstep-50k" and account["passed"] is False
    assert account["breached"] == "daily_loss_limit" and account["breach_time"] == bars.index[breach].isoformat()
    assert 0.0 <= account["pass_probability"] <= 0.05  # a strategy that only loses does not pass
    from trademl.backtest.signals import backtest_signals, read_signals

    frame = bars[["open", "high", "low", "close", "volume"]].copy()
    frame.attrs["symbol"] = "NQ"
    result = backtest_signals(frame, read_signals(tmp_path / "signals.csv"), account="topstep-50k", threshold=0.5)
    run = result.runs["signals"]
    assert run.position[breach] == 2 and np.all(run.position[breach + 1:] == 0)  # traded up to the breach bar
    np.testing.assert_array_equal(run.pnl[:breach], free.pnl[:breach])
    assert np.all(run.pnl[breach + 1:] == 0)
    assert set(got["runs"]) == {"signals", "flat", "buy_and_hold"}
    assert got["runs"]["signals"]["total_pnl"] == pytest.approx(run.pnl.sum())
    assert set(got["runs"]["signals"]) == {"sharpe", "psr", "dsr", "trades", "total_pnl", "exposure"}
    bad = CliRunner().invoke(app, ["backtest-signals", str(tmp_path / "nq.csv"), str(tmp_path / "signals.csv"),
                                   "--account", "ftmo"])
    assert bad.exit_code == 2 and "unknown account rules" in bad.output and "Traceback" not in bad.output


def test_the_wall_clock_is_pandas_own_conversion_across_dst():
    from trademl.risk.account import wall_clock_minutes

    rng = np.random.default_rng(0)
    stamps = pd.DatetimeIndex(np.sort(rng.integers(pd.Timestamp("2023-01-01").value, pd.Timestamp("2025-12-31").value,
                                                   50_000)).astype("datetime64[ns]"), tz="UTC").floor("min")
    for zone in ("America/Chicago", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"):
        expected = stamps.tz_convert(zone).tz_localize(None).as_unit("ns").asi8 // 60_000_000_000
        np.testing.assert_array_equal(wall_clock_minutes(stamps, zone), expected, err_msg=zone)


def test_walk_forward_through_the_account_rules(tmp_path):
    """`backtest --account`: every run (the ensemble, the baselines, each model alone) is traded
    through the rules; the verdict of each is the rules' own on that run's target."""
    from trademl.backtest.signals import through_rules
    from trademl.backtest.walkforward import walk_forward_backtest
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars

    from conftest import TINY_OVERRIDES

    cfg = load_config(None, {"lgbm": TINY_OVERRIDES["lgbm"], "backtest": {"n_folds": 2, "confidence_threshold": 0.2}})
    ds = dataset_from_bars(synthetic_bars(8_000, seed=3, edge_ic=0.0, symbol="NQ"), cfg)
    plain = walk_forward_backtest(ds, cfg, models=("lgbm",))
    ruled = walk_forward_backtest(ds, cfg, models=("lgbm",), account="topstep-50k")
    assert plain.accounts is None and set(ruled.accounts) == set(ruled.runs)
    rules = rules_for("topstep-50k")
    for name, run in plain.runs.items():
        verdict = through_rules(run, plain.bars, rules)
        np.testing.assert_array_equal(ruled.runs[name].pnl, verdict.execution.pnl)
        assert ruled.accounts[name]["breached"] == verdict.breached and ruled.accounts[name]["passed"] == verdict.passed
        assert np.abs(ruled.runs[name].position).max() <= rules.max_contracts("NQ")
    assert ruled.table.loc["buy_and_hold", "total_pnl"] == pytest.approx(ruled.runs["buy_and_hold"].pnl.sum())


# ----------------------------------------------------------------------------- the predictor's risk block


def test_var_is_parametric_from_the_lstms_risk_head_when_it_ran():
    import math

    # risk 0.5 over the head's 5 bars: sigma = 3 ATR * 0.5 / sqrt(pi / 2) = 11.968 points = $239.37 per NQ
    head = _advise(p_win=0.9, risk_head=(0.5, 5))
    assert head["var_source"] == "lstm_risk_head" and head["suggested_contracts"] == 1
    assert head["var_95"] == pytest.approx(1.6449 * 3 * 10 * 0.5 / math.sqrt(math.pi / 2) * 20, abs=0.05)
    atr = _advise(p_win=0.9)  # no head: the ATR as the per-bar sigma, 10 * sqrt(5) points
    assert atr["var_source"] == "atr" and atr["var_95"] == pytest.approx(1.6449 * 10 * math.sqrt(5) * 20, abs=0.05)
    # a head trained over 20 bars, asked about 5: sigma scales by sqrt(5 / 20)
    long_head = _advise(p_win=0.9, risk_head=(0.5, 20))
    assert long_head["var_95"] == pytest.approx(head["var_95"] / 2, abs=0.05)
    # a clipped risk (an excursion of 3 ATR or more) is a floor: the larger of the two sigmas,
    # here the head's 3 * 10 / sqrt(pi / 2) = 23.94 points over the ATR's 22.36
    clipped = _advise(p_win=0.9, risk_head=(1.0, 5))
    assert clipped["var_95"] == pytest.approx(2 * head["var_95"], abs=0.05) and clipped["var_95"] > atr["var_95"]


def _advise(recommendation="BUY", p_win=0.6, close=15_000.0, atr=10.0, risk_head=None, **account):
    from types import SimpleNamespace

    from trademl.config import RiskConfig
    from trademl.risk.advice import advise

    snapshot = SimpleNamespace(**{"rules": "topstep-50k", "balance": 50_000.0, "start_of_day_balance": None,
                                  "peak_eod_balance": None, "open_contracts": 0, **account})
    return advise(snapshot, recommendation=recommendation, p_win=p_win, close=close, atr=atr, unrealized_pnl=0.0,
                  spec=contract_spec("NQ"), cost_per_contract=7.25, horizon=5, risk_config=RiskConfig(),
                  risk_head=risk_head)


def test_the_risk_block_cuts_or_blocks_a_trade_whose_stop_would_breach():
    # NQ at 15,000, ATR 10 points: the stop 2 ATR = 20 points ($400 + $14.50 of costs) away.
    fresh = _advise()
    assert fresh["stop_price"] == 14_980.0 and fresh["target_price"] == 15_030.0
    assert fresh["loss_to_breach"] == {"trailing_max_loss": 2_000.0, "daily_loss_limit": 1_000.0}
    # Half Kelly at p 0.6, payoff 1.5: 0.5 * (0.6 - 0.4 / 1.5) = 0.1667 of the $1,000 budget -> 0 contracts
    # at $414.50 each: kept honest, not rounded up.
    assert fresh["suggested_contracts"] == contracts(0.6, 1.5, 414.5, 1_000.0, max_contracts=5) == 0
    sure = _advise(p_win=0.9)  # 0.5 * (0.9 - 0.1 / 1.5) = 0.4167 -> floor(0.4167 * 1000 / 414.5) = 1
    assert sure["suggested_contracts"] == 1 and not sure["blocked"]
    # The day is down $700: one contract's stop ($414.50) breaches the daily limit ($300 left): blocked.
    down = _advise(p_win=0.9, balance=49_300.0, start_of_day_balance=50_000.0)
    assert down["blocked"] and "$300.00" in down["reason"] and down["suggested_contracts"] == 0
    # The cap: 5 minis, 5 open: nothing more.
    full = _advise(p_win=0.9, open_contracts=5)
    assert full["blocked"] and full["max_contracts_allowed"] == 0
    # The threshold trailed up to 50,000 (peak 52,000): $900 of room left at 50,900.
    trailed = _advise(balance=50_900.0, start_of_day_balance=50_900.0, peak_eod_balance=52_000.0)
    assert trailed["loss_to_breach"]["trailing_max_loss"] == 900.0
    assert _advise(recommendation="HOLD")["stop_price"] is None
    assert _advise(close=None)["reason"].startswith("no close and ATR")


def test_the_predictor_blocks_a_trade_whose_stop_would_breach_and_refuses_a_bad_account(trained_store):
    from trademl.data.dataset import dataset_from_bars
    from trademl.predict.ensemble import EnsemblePredictor
    from trademl.predict.request import RequestError

    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    ds = dataset_from_bars(trained_store.bars.iloc[-1500:], trained_store.config)
    for row in range(len(ds.frame) - 1, 0, -1):  # a bar the ensemble wants to trade
        plain = predictor.ensemble_predict(ds.snapshot(row))
        if plain["ensemble_recommendation"] != "HOLD":
            break
    assert plain["ensemble_recommendation"] in ("BUY", "SELL") and "risk" not in plain
    snapshot = ds.snapshot(row)
    roomy = predictor.ensemble_predict({**snapshot, "account": {"rules": "topstep-150k", "balance": 150_000.0}})
    assert roomy["ensemble_recommendation"] == plain["ensemble_recommendation"]
    risk = roomy["risk"]
    assert risk["rules"] == "topstep-150k" and risk["max_contracts_allowed"] == 15 and not risk["blocked"]
    assert risk["var_source"] == ("lstm_risk_head" if "lstm" in plain["models_used"] else "atr")
    close, atr = snapshot["features"]["close"], snapshot["features"]["atr_ticks_14"] * 0.25
    side = 1 if plain["ensemble_recommendation"] == "BUY" else -1
    assert (risk["stop_price"], risk["target_price"]) == atr_stop(close, side, atr, tick_size=0.25)
    tight = predictor.ensemble_predict({**snapshot, "account": {"rules": "topstep-50k", "balance": 49_010.0,
                                                                "start_of_day_balance": 50_000.0}})
    assert tight["ensemble_recommendation"] == "HOLD" and tight["risk"]["blocked"]
    assert any("blocked by the account's rules" in w for w in tight["warnings"])
    bad_accounts = [{"rules": "ftmo-10k", "balance": 50_000.0}, {"rules": "topstep-50k"},
                    {"rules": "topstep-50k", "balance": -5.0}, {"rules": "topstep-50k", "balance": "lots"},
                    {"rules": "topstep-50k", "balance": 1e39}, {"rules": "topstep-50k", "balance": 1.0, "x": 1},
                    {"rules": 50, "balance": 1.0}, {"rules": "topstep-50k", "balance": 1.0, "open_contracts": 1e9},
                    {"rules": "topstep-50k", "balance": 1.0, "open_contracts": 2.5}, "topstep-50k", [1, 2], None or 7]
    for account in bad_accounts:
        with pytest.raises(RequestError) as e:
            predictor.ensemble_predict({**snapshot, "account": account})
        assert e.value.kind == "validation" and str(e.value.field).startswith("account"), (account, e.value.field)


def test_atr_stops_and_targets_are_checked_inside_each_bar_stop_first():
    from trademl.market.broker import apply_stops, simulate

    nq = ExecutionModel(contract_spec("NQ"), max_position=5, **FREE)
    # Long 1 from bar 1 (decided at bar 0's close), entry at bar 1's open 100; ATR 1 at bar 0:
    # stop 98, target 103. Bar 2 touches neither; bar 3 reaches both: the stop is taken.
    open_ = np.array([100.0, 100.0, 100.5, 100.0, 99.0, 99.0])
    close = np.array([100.0, 100.5, 100.0, 99.0, 99.0, 99.0])
    high = np.array([100.0, 101.0, 101.0, 103.5, 99.5, 99.5])
    low = np.array([100.0, 99.5, 99.0, 97.5, 98.5, 98.5])
    target = np.ones(6)
    atr = np.ones(6)
    plain = simulate(nq, target, open_, close)
    stopped = apply_stops(plain, nq, open_, high, low, close, atr, stop_atr=2.0, target_atr=3.0)
    assert stopped.position.tolist() == [0, 1, 1, 1, 0, 0]
    assert stopped.pnl.sum() == pytest.approx((98.0 - 100.0) * 20)  # out at the stop, not the target
    assert stopped.fill_price[4] == 98.0 and stopped.trade_qty[4] == -1
    # Only the target inside the bar: out at 103.
    high2 = high.copy()
    low2 = low.copy()
    low2[3] = 99.5
    hit = apply_stops(plain, nq, open_, high2, low2, close, atr, stop_atr=2.0, target_atr=3.0)
    assert hit.pnl.sum() == pytest.approx((103.0 - 100.0) * 20)
    # A bar that opens through the stop fills at its open (97), worse than the stop.
    gap_open, gap_low, gap_close = open_.copy(), low.copy(), close.copy()
    gap_open[3], gap_low[3], gap_close[2] = 97.0, 96.5, 97.5
    gapped = apply_stops(simulate(nq, target, gap_open, gap_close), nq, gap_open, high2, gap_low, gap_close, atr,
                         stop_atr=2.0, target_atr=3.0)
    assert gapped.pnl.sum() == pytest.approx((97.0 - 100.0) * 20)
    # A short: stop above, target below; costs charged on the exit.
    costly = ExecutionModel(contract_spec("NQ"), commission_per_side=2.0, slippage_ticks=1.0, max_position=5)
    short = apply_stops(simulate(costly, -target, open_, close), costly, open_, high, low, close, atr,
                        stop_atr=2.0, target_atr=3.0)
    # Entry 100 (sold), bar 3: high 103.5 >= stop 102 and low 97.5 <= target 97: the stop again.
    assert short.pnl.sum() == pytest.approx((100.0 - 102.0) * 20 - 2 * costly.cost_per_contract)


def test_backtest_signals_with_stops_exits_every_trade_at_its_stop_or_target(tmp_path):
    from trademl.backtest.signals import backtest_signals, read_signals
    from trademl.data.synthetic import synthetic_bars

    bars = synthetic_bars(3_000, seed=4, symbol="NQ")
    rng = np.random.default_rng(0)
    rows = rng.choice(np.arange(100, 2_900), 60, replace=False)
    pd.DataFrame({"timestamp": [bars.index[i].isoformat() for i in sorted(rows)],
                  "action": rng.choice(["BUY", "SELL"], 60), "confidence": 1.0}).to_csv(tmp_path / "s.csv", index=False)
    signals = read_signals(tmp_path / "s.csv")
    plain = backtest_signals(bars, signals, threshold=0.5)
    stopped = backtest_signals(bars, signals, threshold=0.5, stops=True)
    ruled = backtest_signals(bars, signals, threshold=0.5, stops=True, account="topstep-150k")
    a, b = plain.runs["signals"], stopped.runs["signals"]
    assert np.abs(b.position).sum() < np.abs(a.position).sum()  # stops end trades early
    assert (b.position[a.position == 0] == 0).all()  # and never open one
    assert ruled.runs["signals"].account is not None and ruled.account["rules"] == "topstep-150k"
    assert stopped.account is None
