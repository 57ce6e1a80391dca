"""The backtest engine: the guide's position rule, fills through the shared execution model,
FIFO round trips, no look-ahead, and agreement with backtesting.py to the cent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.engine import run_backtest, target_from_signals
from trademl.market.broker import clipped_cumsum
from trademl.config import CostsConfig
from trademl.segments import bars_to_end, segment_ids
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError, TradeMLError
from trademl.market.contracts import contract_spec

# Eight one-minute bars, one segment. Opens differ from the previous close, so a fill at
# the wrong bar or the wrong price shows.
OPEN = [100.00, 101.00, 102.25, 101.50, 103.25, 104.00, 104.50, 104.00]
CLOSE = [100.50, 102.00, 101.75, 103.00, 103.50, 104.25, 104.00, 104.00]
# BUY (conf 0.9), BUY below threshold, BUY, SELL, SELL, SELL, then HOLD.
ACTION = ["BUY", "BUY", "BUY", "SELL", "SELL", "SELL", "HOLD", "HOLD"]
CONFIDENCE = [0.9, 0.5, 0.8, 0.95, 0.9, 0.9, 0.0, 0.0]


def hand_bars(symbol: str) -> pd.DataFrame:
    index = pd.date_range("2024-03-05 14:30", periods=len(OPEN), freq="1min", tz="UTC", name="timestamp")
    bars = pd.DataFrame({"open": OPEN, "high": np.maximum(OPEN, CLOSE) + 0.25,
                         "low": np.minimum(OPEN, CLOSE) - 0.25, "close": CLOSE}, index=index)
    bars.attrs["symbol"] = symbol
    return bars


def loop_position_rule(action, confidence, max_position, threshold, reset):
    """The guide's backtest loop, literally."""
    position, out = 0, []
    for a, c, r in zip(action, confidence, reset):
        if r:
            position = 0
        if c > threshold and a == 1 and position < max_position:
            position += 1
        elif c > threshold and a == -1 and position > -max_position:
            position -= 1
        out.append(position)
    return np.array(out)


def test_clipped_cumsum_matches_the_loop_with_resets():
    rng = np.random.default_rng(5)
    for n in (1, 2, 15, 16, 17, 999, 5003):
        steps = rng.integers(-1, 2, n)
        reset = rng.random(n) < 0.02
        expected = loop_position_rule(steps, np.ones(n), 5, 0.5, reset)
        assert np.array_equal(clipped_cumsum(steps, -5, 5, reset), expected), n


def test_position_rule_threshold_and_cap():
    action = np.array([1] * 8 + [-1] * 13 + [1, 1])
    confidence = np.full(len(action), 0.9)
    confidence[-1] = 0.7  # not strictly above the threshold: ignored
    confidence[-2] = np.nan  # unknown confidence never trades
    target = target_from_signals(action, confidence, max_position_size=5, confidence_threshold=0.7)
    assert target.max() == 5 and target.min() == -5
    assert list(target[:6]) == [1, 2, 3, 4, 5, 5]
    assert target[-1] == target[-3] == -5


def test_hand_computed_trades_nq():
    """NQ: $20/point, tick 0.25 = $5; commission $2.25/side, slippage 1 tick."""
    bars = hand_bars("NQZ5")
    result = run_backtest(bars, {"action": ACTION, "confidence": CONFIDENCE},
                          costs=CostsConfig(commission_per_side=2.25, slippage_ticks=1))
    # bar 0 BUY -> +1 at bar 1's open; bar 1 ignored (0.5); bar 2 BUY -> +2; SELLs -> +1, 0, -1;
    # the last two bars of the segment are forced flat: the short is covered at bar 7's open.
    assert list(result.position) == [0, 1, 1, 2, 1, 0, -1, 0]
    fills = result.fill_price[result.trade_qty != 0]
    assert list(fills) == [101.25, 101.75, 103.00, 103.75, 104.25, 104.25]
    per_bar = [0.0, 12.75, -5.0, 47.75, 7.75, 2.75, 2.75, -7.25]
    assert np.allclose(result.pnl, per_bar)
    trades = result.trades
    assert list(trades["side"]) == [1, 1, -1]
    assert list(trades["entry_price"]) == [101.25, 101.75, 104.25]
    assert list(trades["exit_price"]) == [103.00, 103.75, 104.25]
    assert list(trades["pnl"]) == [30.50, 35.50, -4.50]
    assert list(trades["costs"]) == [14.50, 14.50, 14.50]
    assert list(trades["bars_held"]) == [3, 2, 1]
    assert trades["entry_time"].iloc[0] == bars.index[1] and trades["exit_time"].iloc[0] == bars.index[4]
    assert result.equity[-1] == pytest.approx(100_000 + 61.50)
    assert result.costs.sum() == pytest.approx(6 * 7.25)


def test_hand_computed_trades_es_with_other_costs():
    """ES: $50/point, tick 0.25 = $12.50; commission $1/side, slippage 2 ticks (0.50 points)."""
    bars = hand_bars("ES")
    result = run_backtest(bars, {"action": ACTION, "confidence": CONFIDENCE},
                          costs=CostsConfig(commission_per_side=1.0, slippage_ticks=2))
    trades = result.trades
    assert list(trades["entry_price"]) == [101.50, 102.00, 104.00]
    assert list(trades["exit_price"]) == [102.75, 103.50, 104.50]
    assert list(trades["pnl"]) == [60.50, 73.00, -27.00]
    assert list(trades["costs"]) == [52.00, 52.00, 52.00]  # 2 x (1.00 + 2 x 12.50)
    assert result.pnl.sum() == pytest.approx(106.50)


def test_reversal_is_matched_fifo():
    bars = hand_bars("NQ")
    target = [2, 2, -3, -3, 0, 0, 0, 0]  # +2 at bar 1, reverse to -3 at bar 3, flat at bar 5
    result = run_backtest(bars, target=target, costs=CostsConfig(commission_per_side=0, slippage_ticks=0))
    trades = result.trades
    assert list(zip(trades["side"], trades["qty"], trades["entry_bar"], trades["exit_bar"])) == [(1, 2, 1, 3), (-1, 3, 3, 5)]
    # long 2 from 101.00 to 101.50, short 3 from 101.50 to 104.00, $20/point
    assert list(trades["pnl"]) == [2 * 0.5 * 20, -3 * 2.5 * 20]
    assert trades["pnl"].sum() == pytest.approx(result.pnl.sum())


def test_segment_end_flattens_and_restarts_the_rule():
    bars = synthetic_bars(3000, seed=2, symbol="NQ")  # > 2 sessions: gaps make segments
    seg = segment_ids(bars)
    assert seg.max() >= 1
    signals = {"action": np.ones(len(bars)), "confidence": np.ones(len(bars))}
    result = run_backtest(bars, signals)
    left = bars_to_end(seg)
    assert (result.position[left == 0] == 0).all()  # flat on the last bar of every segment
    first = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    assert (result.target[first] == 1).all()  # the rule restarts from flat: one BUY = 1 contract
    assert result.trades["pnl"].sum() == pytest.approx(result.pnl.sum())
    assert result.open_position_at_end == 0


def test_a_signal_at_bar_t_never_fills_at_bar_t_prices():
    bars = synthetic_bars(2000, seed=9, symbol="ES")
    rng = np.random.default_rng(0)
    action = rng.choice([-1, 0, 1], size=len(bars))
    confidence = rng.random(len(bars))
    base = run_backtest(bars, {"action": action, "confidence": confidence}, confidence_threshold=0.3)
    traded = np.flatnonzero(base.trade_qty != 0)
    assert len(traded) > 100 and (traded >= 1).all()
    slip = base.model.slippage_ticks * base.model.spec.tick_size
    expected = bars["open"].to_numpy()[traded] + np.sign(base.trade_qty[traded]) * slip
    assert np.array_equal(base.fill_price[traded], expected)  # the open of the bar AFTER the decision
    for k in (500, 1200):
        flipped = action.copy()
        moved_by_base = base.target[k] - base.target[k - 1]
        # the other way from what the rule did at k (or away from the cap): the target must change
        flipped[k] = -np.sign(moved_by_base) if moved_by_base else (-1 if base.target[k - 1] > 0 else 1)
        conf = confidence.copy()
        conf[k] = 0.99
        changed = run_backtest(bars, {"action": flipped, "confidence": conf}, confidence_threshold=0.3)
        assert np.array_equal(changed.position[: k + 1], base.position[: k + 1])
        assert np.array_equal(changed.pnl[: k + 1], base.pnl[: k + 1])
        assert changed.position[k + 1] != base.position[k + 1]
    # prices after bar k never change anything up to bar k
    later = bars.copy()
    later.iloc[1001:, :4] *= 1.01
    moved = run_backtest(later, {"action": action, "confidence": confidence}, confidence_threshold=0.3)
    assert np.array_equal(moved.pnl[:1001], base.pnl[:1001])


def test_bad_input_is_named():
    bars = hand_bars("NQ")
    with pytest.raises(DataError, match="row 2, field action"):
        run_backtest(bars, {"action": ["BUY", "HOLD", "BUYY"] + ["HOLD"] * 5, "confidence": [1.0] * 8})
    with pytest.raises(DataError, match="3 signals for 8 bars"):
        run_backtest(bars, {"action": [1, 0, 1], "confidence": [1, 1, 1]})
    with pytest.raises(DataError, match="not a whole number"):
        run_backtest(bars, target=[0, 0.5, 1, 1, 1, 1, 0, 0])
    broken = bars.copy()
    broken.iloc[3, 0] = np.nan
    with pytest.raises(DataError, match="row 3 .*field open"):
        run_backtest(broken, target=np.zeros(8))
    with pytest.raises(TradeMLError, match="either signals or target"):
        run_backtest(bars)
    with pytest.raises(DataError, match="no bars"):
        run_backtest(bars.iloc[:0], target=[])
    shifted = pd.DataFrame({"action": [1] * 8, "confidence": [1.0] * 8}, index=bars.index + pd.Timedelta(minutes=1))
    with pytest.raises(DataError, match="signals row 0"):  # signals one bar late would trade on the future
        run_backtest(bars, shifted)
    aligned = shifted.set_axis(bars.index)
    assert run_backtest(bars, aligned).position[1] == 1


# ----------------------------------------------------------------------------- backtesting.py oracle


def backtesting_py_trades(bars: pd.DataFrame, effective_target: np.ndarray, point_value: float,
                          cost_per_contract_side: float) -> pd.DataFrame:
    """The same target positions traded by backtesting.py 0.6.6.

    How the costs are made equal: prices are multiplied by the point value, so one unit of
    size is one contract and P&L is in dollars; market orders fill at the next bar's open,
    as ours do. backtesting.py's ``spread`` is relative and charged only on entry, so it
    cannot express a fixed slippage in ticks on both sides; instead slippage + commission go
    into its commission callable, charged per contract on entry and on exit. The trade P&L
    is then identical; its prices are the raw opens (ours include the slippage).
    """
    from backtesting import Backtest, Strategy

    frame = pd.DataFrame({c.capitalize(): bars[c] * point_value for c in ("open", "high", "low", "close")})
    frame.index = bars.index.tz_localize(None)
    wanted = effective_target

    class FollowTarget(Strategy):
        def init(self):
            pass

        def next(self):
            delta = int(wanted[len(self.data) - 1] - self.position.size)
            if delta > 0:
                self.buy(size=delta)
            elif delta < 0:
                self.sell(size=-delta)

    bt = Backtest(frame, FollowTarget, cash=1e12, commission=lambda size, price: abs(size) * cost_per_contract_side,
                  margin=1.0, finalize_trades=True)
    stats = bt.run()
    return stats._trades.sort_values(["ExitBar", "EntryBar"]).reset_index(drop=True)


@pytest.mark.filterwarnings("ignore:DatetimeIndex.dayofweek")  # inside backtesting.py, with pandas 3
@pytest.mark.parametrize("symbol,costs", [("NQ", (0.0, 0.0)), ("NQ", (2.25, 1.0)), ("ES", (1.5, 2.0))])
def test_same_trades_and_pnl_as_backtesting_py(symbol, costs):
    pytest.importorskip("backtesting", reason="backtesting==0.6.6 is the test oracle (requirements-dev.txt)")
    bars = synthetic_bars(4000, seed=11, symbol=symbol)
    rng = np.random.default_rng(3)
    action = rng.choice([-1, 0, 1], size=len(bars), p=[0.2, 0.6, 0.2])
    confidence = rng.random(len(bars))
    action[0] = 0  # backtesting.py first calls next() on the second bar
    cost_config = CostsConfig(commission_per_side=costs[0], slippage_ticks=costs[1])
    ours = run_backtest(bars, {"action": action, "confidence": confidence}, costs=cost_config)
    spec = contract_spec(symbol)
    effective = np.where(bars_to_end(ours.segments) <= 1, 0.0, ours.target)  # what the execution model trades
    theirs = backtesting_py_trades(bars, effective, spec.point_value, ours.model.cost_per_contract)

    mine = ours.trades.sort_values(["exit_bar", "entry_bar"]).reset_index(drop=True)
    assert len(mine) == len(theirs) > 50
    assert np.array_equal(mine["entry_bar"], theirs["EntryBar"])
    assert np.array_equal(mine["exit_bar"], theirs["ExitBar"])
    assert np.array_equal(mine["side"] * mine["qty"], theirs["Size"])
    slip = costs[1] * spec.tick_size
    assert np.allclose(mine["entry_price"] - mine["side"] * slip, theirs["EntryPrice"] / spec.point_value)
    assert np.array_equal(np.round(mine["pnl"].to_numpy(), 2), np.round(theirs["PnL"].to_numpy(), 2))
    assert round(ours.pnl.sum(), 2) == round(theirs["PnL"].sum(), 2)


def test_real_es_bars_hold_nothing_across_gaps_or_the_roll():
    """Real ES minutes (tests/data: three segments, the last after the ESZ13 -> ESH14 roll):
    5 contracts long, the P&L is exactly each segment's own open-to-open move, so neither
    the multi-week gaps nor the roll's price jump ever reach the account."""
    from pathlib import Path

    from trademl.data.bars import load_bars

    bars = load_bars(Path(__file__).parent / "data" / "es_1min_lean_slice.csv")
    result = run_backtest(bars, target=np.full(len(bars), 5.0))
    seg = result.segments
    assert len(np.unique(seg)) == 3 and bars["contract"].nunique() == 2
    expected = 0.0
    for s in np.unique(seg):
        rows = np.flatnonzero(seg == s)
        entry = bars["open"].iloc[rows[1]] + 0.25  # bought at the segment's second open + 1 tick
        exit_ = bars["open"].iloc[rows[-1]] - 0.25  # sold at its last bar's open - 1 tick
        expected += 5 * (exit_ - entry) * 50 - 2 * 5 * 2.25
        assert result.position[rows[0]] == 0 and result.position[rows[-1]] == 0
    assert result.pnl.sum() == pytest.approx(expected, abs=1e-6)
    assert len(result.trades) == 3 and result.trades["pnl"].sum() == pytest.approx(expected, abs=1e-6)


def test_the_predictors_outputs_drive_the_engine():
    from trademl.models.base import class_vote
    from trademl.predict.decision import decide

    bars = hand_bars("NQ")
    # the guide's JSON names, as logged by the predictor
    logged = pd.DataFrame({"ensemble_recommendation": ACTION, "confidence_score": CONFIDENCE}, index=bars.index)
    assert list(run_backtest(bars, logged).position) == [0, 1, 1, 2, 1, 0, -1, 0]
    # the vectorised vote: codes 0 hold / 1 buy / 2 sell, like the PPO actions
    buy = np.array([0.9, 0.1, 0.1, 0.0, 0.5, np.nan, 0.2, 0.2])
    sell = np.array([0.05, 0.85, 0.1, 0.95, 0.4, np.nan, 0.2, 0.2])
    decision = decide({"lstm": class_vote(1 - buy - sell, buy, sell)}, {"lstm": 1.0})
    signals = {"action": decision.direction, "confidence": np.where(decision.voted, decision.confidence, np.nan)}
    assert list(signals["action"][:5]) == [1, -1, 0, -1, 1]
    assert not decision.voted[5] and np.isnan(signals["confidence"][5])  # nobody voted on bar 5: it never trades
    assert list(run_backtest(bars, signals).position[:5]) == [0, 1, 0, 0, -1]
