"""Labels: hand-computed trades at both horizons, costs included; nothing crosses a gap."""

import numpy as np
import pandas as pd
import pytest

from trademl.data.labels import BUY, HOLD, SELL, label_columns, make_labels
from trademl.segments import segment_ids
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel


def _bars(opens, closes=None, start="2024-03-04 14:30", gaps_after=()):
    n = len(opens)
    closes = np.asarray(closes if closes is not None else opens, float)
    opens = np.asarray(opens, float)
    minutes = np.arange(n, dtype=float)
    for g in gaps_after:  # a 60-minute hole after bar g
        minutes[g + 1 :] += 60
    idx = pd.DatetimeIndex(pd.Timestamp(start, tz="UTC") + pd.to_timedelta(minutes, "min"), name="timestamp")
    hi = np.maximum(opens, closes) + 0.25
    lo = np.minimum(opens, closes) - 0.25
    return pd.DataFrame({"open": opens, "high": hi, "low": lo, "close": closes, "volume": 100.0}, index=idx)


NQ = ExecutionModel(contract_spec("NQ"), commission_per_side=2.0, slippage_ticks=1.0, max_position=5)
ES = ExecutionModel(contract_spec("ES"), commission_per_side=2.0, slippage_ticks=1.0, max_position=5)


def test_round_trip_cost_is_commission_and_slippage_both_sides():
    # NQ: tick value $5 -> (2 + 5) * 2 = 14; ES: tick value $12.50 -> (2 + 12.5) * 2 = 29
    assert NQ.round_trip_cost == pytest.approx(14.0)
    assert ES.round_trip_cost == pytest.approx(29.0)


def test_hand_computed_long_and_short_at_horizon_2():
    # Decision at close of bar 0: enter at open[1] = 100, exit at open[3] = 101 (h = 2).
    bars = _bars([99.0, 100.0, 100.5, 101.0, 101.0, 101.0])
    lab = make_labels(bars, segment_ids(bars), NQ, horizons=(2,), signal_cost_multiple=1.0)
    # gross long = (101 - 100) * $20 = $20; net = 20 - 14 = 6 > 0 -> win long; short = -20 - 14 < 0
    assert lab["pnl_long_2"].iloc[0] == pytest.approx(6.0)
    assert lab["win_long_2"].iloc[0] == 1 and lab["win_short_2"].iloc[0] == 0
    # $20 gross > 1.0 x $14 round trip -> buy
    assert lab["signal_2"].iloc[0] == BUY
    # movement is close-to-close over h bars: log(close[2] / close[0])
    assert lab["movement_2"].iloc[0] == pytest.approx(np.log(100.5 / 99.0))


def test_costs_turn_a_small_winner_into_a_loser_on_es():
    # ES: one tick up ($12.50 gross) does not cover $29 round trip: both sides lose.
    bars = _bars([5000.0, 5000.0, 5000.25, 5000.25, 5000.25, 5000.25, 5000.25])
    lab = make_labels(bars, segment_ids(bars), ES, horizons=(1,), signal_cost_multiple=1.0)
    assert lab["pnl_long_1"].iloc[0] == pytest.approx(12.5 - 29.0)
    assert lab["win_long_1"].iloc[0] == 0 and lab["win_short_1"].iloc[0] == 0
    assert lab["signal_1"].iloc[0] == HOLD


def test_short_signal_and_both_default_horizons():
    opens = np.r_[np.full(3, 16000.0), np.linspace(16000, 15980, 40)]
    bars = _bars(opens)
    lab = make_labels(bars, segment_ids(bars), NQ, horizons=(5, 30))
    assert list(lab.columns) == label_columns((5, 30))
    t = 5
    for h in (5, 30):
        entry, exit_ = opens[t + 1], opens[t + h + 1]
        gross = (exit_ - entry) * 20
        assert lab[f"pnl_long_{h}"].iloc[t] == pytest.approx(gross - 14.0)
        assert lab[f"win_short_{h}"].iloc[t] == float(-gross - 14.0 > 0)
        assert lab[f"signal_{h}"].iloc[t] == SELL


def test_last_h_plus_one_bars_of_a_segment_have_no_label():
    bars = _bars(np.linspace(100, 110, 20), gaps_after=(9,))  # segments: bars 0-9, 10-19
    seg = segment_ids(bars, max_gap_minutes=15)
    assert list(np.unique(seg)) == [0, 1]
    lab = make_labels(bars, seg, NQ, horizons=(3,))
    labelled = lab["win_long_3"].notna().to_numpy()
    # in each segment of 10 bars, rows 0..5 are labelled (need t+4 inside), 6..9 are not
    expected = np.r_[np.ones(6), np.zeros(4), np.ones(6), np.zeros(4)].astype(bool)
    assert (labelled == expected).all()
    for col in label_columns((3,)):
        assert lab[col].notna().to_numpy()[~expected].sum() == 0 or col.startswith("risk")


def test_label_ignores_prices_beyond_its_window():
    bars = _bars(np.linspace(100, 120, 50))
    seg = segment_ids(bars)
    lab = make_labels(bars, seg, NQ, horizons=(5,))
    t = 20
    changed = bars.copy()
    changed.iloc[t + 7 :, :4] *= 3.0  # everything after the exit bar (t + 6)
    lab2 = make_labels(changed, seg, NQ, horizons=(5,))
    for col in ["win_long_5", "win_short_5", "signal_5", "movement_5", "pnl_long_5", "risk_5"]:
        assert lab[col].iloc[t] == pytest.approx(lab2[col].iloc[t], nan_ok=True)


def test_risk_is_adverse_excursion_over_three_atr():
    opens = np.full(40, 100.0)
    bars = _bars(opens)
    bars.iloc[25, bars.columns.get_loc("low")] = 99.0  # a 1-point spike down inside the window of t=22
    lab = make_labels(bars, segment_ids(bars), NQ, horizons=(5,))
    atr = 0.5  # every bar's true range is 0.5 before bar 25
    assert lab["risk_5"].iloc[22] == pytest.approx(min(1.0, 1.0 / (3 * atr)))
    # at t=30 the ATR window (bars 17..30) holds the spike bar: TR 1.25 instead of 0.5
    atr_30 = (13 * 0.5 + 1.25) / 14
    assert lab["risk_5"].iloc[30] == pytest.approx(0.25 / (3 * atr_30))


def test_a_flat_stretch_leaves_risk_unknown_without_a_numpy_warning():
    """A market that did not move for 20 bars (ATR 0): the risk label is NaN there, said by no RuntimeWarning."""
    import warnings

    opens = np.r_[np.linspace(100, 105, 20), np.full(40, 105.0), np.linspace(105, 101, 20)]
    bars = _bars(opens)
    flat = (bars.index >= bars.index[20]) & (bars.index <= bars.index[59])
    bars.loc[flat, ["high", "low"]] = 105.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lab = make_labels(bars, segment_ids(bars), NQ, horizons=(3,), signal_cost_multiple=1.0)
    atr_zero = np.arange(len(bars))[20 + 13: 60]  # the last 14 bars' true range is 0 from bar 33 on
    assert lab["risk_3"].iloc[atr_zero].isna().all()
    assert lab["risk_3"].iloc[15:17].notna().all()  # the moving stretch has its risk label
    assert lab["win_long_3"].iloc[atr_zero[:-5]].notna().all()  # the other labels are there
