"""Honest statistics of a backtest (issue 12): every candidate is a trial in the deflated Sharpe,
the probability of backtest overfitting (CSCV), and the calibration of a confidence as the
probability that the recommended trade wins after costs; `trademl backtest --synthetic --json`."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.baselines import comparison_table, run_baselines
from trademl.backtest.engine import run_backtest
from trademl.backtest.metrics import (
    EULER_GAMMA, confidence_calibration, deflate_all, probability_of_backtest_overfitting, trade_won,
)
from trademl.data.synthetic import synthetic_bars
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel

PHI = NormalDist().cdf
Q_80 = 0.8416212335729144  # Phi^-1(1 - 1/5)
Q_5E = 1.4496656592240218  # Phi^-1(1 - 1/(5e)) = Phi^-1(0.92642...)


# ----------------------------------------------------------------------------- DSR trials


def _hand_dsr_of_one_trader_among_five(sr: float, t: int, skew: float, kurt: float) -> float:
    """Bailey & Lopez de Prado's DSR for 5 trials with Sharpes (sr, 0, 0, 0, 0): their sample
    variance is sr^2 / 5 (mean sr/5; squared deviations (4sr/5)^2 + 4 (sr/5)^2 = 4 sr^2 / 5, over 4)."""
    expected_max = math.sqrt(sr**2 / 5) * ((1 - EULER_GAMMA) * Q_80 + EULER_GAMMA * Q_5E)
    denominator = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    return PHI((sr - expected_max) * math.sqrt(t - 1) / denominator)


def test_candidates_that_never_traded_are_trials_with_sharpe_zero():
    traded = {"daily_sharpe": 0.2, "sessions": 100, "daily_skew": 0.0, "daily_kurtosis": 3.0, "trades": 40}
    idle = {"daily_sharpe": math.nan, "sessions": 100, "daily_skew": math.nan, "daily_kurtosis": math.nan, "trades": 0}
    out = deflate_all({"ensemble": traded, **{f"m{i} alone": dict(idle) for i in range(4)}})
    psr = PHI(0.2 * math.sqrt(99) / math.sqrt(1 + 0.5 * 0.04))  # Phi(1.9704) = 0.9756
    # E[max SR] = 0.2 / sqrt(5) * (0.4228 * 0.8416 + 0.5772 * 1.4497) = 0.0894 * 1.1926 = 0.1067,
    # DSR = Phi((0.2 - 0.1067) * sqrt(99) / sqrt(1.02)) = Phi(0.9195) = 0.8211
    want = _hand_dsr_of_one_trader_among_five(0.2, 100, 0.0, 3.0)
    assert out["ensemble"]["dsr"] == pytest.approx(want, rel=1e-12)
    assert out["ensemble"]["dsr_trials"] == 5
    assert psr - out["ensemble"]["dsr"] == pytest.approx(0.9756 - 0.8211, abs=2e-4)  # was 0: the DSR equalled the PSR
    assert all(math.isnan(out[f"m{i} alone"]["dsr"]) for i in range(4))  # no Sharpe of its own to deflate


def test_comparison_table_deflates_for_models_that_never_traded():
    """A strategy and four models whose confidence never reaches the threshold: five trials."""
    bars = synthetic_bars(20_000, seed=3, edge_ic=0.1, symbol="ES")
    edge = bars["edge"].to_numpy()
    strategy = run_backtest(bars, {"action": np.sign(edge), "confidence": np.ones(len(bars))}, name="ensemble")
    idle = {"action": np.sign(edge), "confidence": np.zeros(len(bars))}
    runs = run_baselines(bars, strategy, model_signals={f"m{i}": idle for i in range(4)},
                         confidence_threshold=0.7, seed=0)
    table = comparison_table(runs)
    assert (table.loc[[f"m{i} alone" for i in range(4)], "trades"] == 0).all()
    m = strategy.metrics
    want = _hand_dsr_of_one_trader_among_five(m["daily_sharpe"], m["sessions"], m["daily_skew"], m["daily_kurtosis"])
    row = table.loc["ensemble"]
    assert row["dsr_trials"] == 5 and row["dsr"] == pytest.approx(want, rel=1e-9)
    assert row["dsr"] < row["psr"]


# ----------------------------------------------------------------------------- PBO


def test_pbo_of_a_hand_countable_case():
    """T = 4 sessions, S = 4 blocks of one, C(4, 2) = 6 splits. Candidate B never traded (Sharpe 0
    everywhere); A is chosen in sample when its mean there is > 0, and B otherwise. The choice
    ranks below the median out of sample exactly when A's mean changes sign between the halves:
    A = (1, -2, 3, -4): J = {0,1} -> -1/2 vs {2,3} -> -1/2 (kept); {0,2} 4/2 vs {1,3} -6/2;
    {0,3} -3/2 vs {1,2} 1/2; {1,2} vs {0,3}; {1,3} vs {0,2} (4 flips); {2,3} vs {0,1} (kept)."""
    returns = np.array([[1.0, 0.0], [-2.0, 0.0], [3.0, 0.0], [-4.0, 0.0]])
    assert probability_of_backtest_overfitting(returns, n_blocks=4) == pytest.approx(4 / 6)
    # A candidate that earns every session beats the idle one in each half: never overfit.
    returns[:, 0] = [2.0, 3.0, 2.5, 3.5]
    assert probability_of_backtest_overfitting(returns, n_blocks=4) == 0.0


def test_pbo_says_when_it_cannot_be_measured():
    assert math.isnan(probability_of_backtest_overfitting(np.zeros((30, 1))))  # one candidate: no choice
    assert math.isnan(probability_of_backtest_overfitting(np.ones((3, 4))))  # 3 periods: fewer than 4 blocks


def test_pbo_of_pure_noise_is_one_half():
    """Unskilled, exchangeable candidates: the in-sample best's out-of-sample rank is uniform on
    1..N, so E[PBO] = 0.5 exactly (ties at the median count one half). One matrix's PBO is far
    noisier than its C(16, 8) = 12,870 splits suggest (0.5 / sqrt(12,870) = 0.004 only if they
    were independent; they share every session, and one matrix's PBO has a spread of about 0.2),
    so the mean over R = 30 independent matrices is checked, within 4 standard errors of that
    mean, measured from the same draws."""
    pbos = np.array([probability_of_backtest_overfitting(np.random.default_rng(seed).standard_normal((200, 7)))
                     for seed in range(30)])
    standard_error = pbos.std(ddof=1) / math.sqrt(len(pbos))
    assert 0.1 < pbos.std(ddof=1) < 0.35  # the spread the tolerance rests on
    assert abs(pbos.mean() - 0.5) < 4 * standard_error


def test_pbo_of_a_real_drift_among_noise_is_near_zero():
    """One of 10 candidates earns half a standard deviation a period on top of the noise: over any
    100 of the 200 periods its Sharpe is ahead of nine noise ones by about 0.5 / (1 / sqrt(100))
    = 5 standard errors, so it is chosen, and stays top, in practically every split."""
    for seed in range(5):
        r = np.random.default_rng(seed).standard_normal((200, 10))
        r[:, 6] += 0.5
        assert probability_of_backtest_overfitting(r) < 0.02


# ----------------------------------------------------------------------------- calibration


def test_a_trade_wins_only_after_costs():
    """ES: $50 a point, 1 tick ($12.50) slippage a side, $2.25 commission a side: a round trip
    costs $29.50. Horizon 2: a decision at bar t enters at open[t+1] and exits at open[t+3]."""
    es = ExecutionModel(contract_spec("ES"), commission_per_side=2.25, slippage_ticks=1, max_position=5)
    open_ = np.array([100.0, 100.0, 100.25, 101.0, 100.5, 100.0, 100.0, 100.0, 100.0])
    index = pd.date_range("2024-03-05 14:30", periods=len(open_), freq="1min", tz="UTC")
    bars = pd.DataFrame({"open": open_, "high": open_ + 0.5, "low": open_ - 0.5, "close": open_}, index=index)
    segments = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
    action = np.array([1, -1, 1, -1, 0, 1, 1, 1, 1])
    won = trade_won(bars, segments, es, action, horizon=2)
    # t=0 BUY: 100 -> 101, +$50 - 29.50 > 0; t=1 SELL: 100.25 -> 100.5, -$12.50 - 29.50;
    # t=2 BUY: 101 -> 100, a loss; t=3 SELL: 100.5 -> 100 (exit at segment 0's last bar), +$25 - 29.50 < 0:
    # lost after costs although the price moved its way; t=4 HOLD: no trade; t>=5: the exit is past the segment.
    assert won[:4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert np.isnan(won[4:]).all()


def test_ece_is_small_for_calibrated_confidence_and_large_for_an_overconfident_one():
    """Confidence c ~ U(0, 1). Outcomes ~ Bernoulli(c): every bin's hit rate estimates its mean c,
    the ECE is sampling noise only, about sqrt(0.25 / 4,000) * 0.8 = 0.006 over 10 bins of 4,000.
    Outcomes ~ Bernoulli(c^3): c >= c^3 everywhere, so no bin's gap changes sign and the ECE is
    E[c - c^3] = 1/2 - 1/4 = 0.25 whatever the bins."""
    rng = np.random.default_rng(7)
    c = rng.uniform(0, 1, 40_000)
    calibrated = confidence_calibration(c, rng.uniform(0, 1, len(c)) < c)
    assert calibrated["n"] == 40_000 and len(calibrated["bins"]) == 10
    assert calibrated["ece"] < 0.015
    assert sum(b[2] for b in calibrated["bins"]) == 40_000
    over = confidence_calibration(c, rng.uniform(0, 1, len(c)) < c**3)
    assert over["ece"] == pytest.approx(0.25, abs=0.01)
    # Rows with no outcome (no trade, or a window past a segment end) are left out.
    partial = confidence_calibration(np.array([0.6, 0.7, 0.8]), np.array([1.0, np.nan, 0.0]), bins=2)
    assert partial["n"] == 2 and partial["bins"] == [[0.6, 1.0, 1], [0.8, 0.0, 1]] and partial["ece"] == pytest.approx(0.6)
    assert confidence_calibration(np.array([0.5]), np.array([np.nan])) == {"ece": None, "n": 0, "bins": []}


# ----------------------------------------------------------------------------- the command


def _cli_config(tmp_path):
    (tmp_path / "trademl.toml").write_text(
        '[lgbm]\nn_estimators = 30\nnum_leaves = 7\nn_folds = 2\nmin_child_samples = 100\nnum_threads = 1\n'
        '[backtest]\nn_folds = 2\nconfidence_threshold = 0.2\n'
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\nreport_dir = "{tmp_path / "reports"}"\n')


def test_cli_backtest_synthetic_writes_the_json(tmp_path, monkeypatch):
    """`trademl backtest --synthetic N --edge-ic X --seed S --json PATH` (LightGBM only, 2 folds)."""
    from typer.testing import CliRunner

    from trademl.backtest.walkforward import backtest_models
    from trademl.cli import app
    from trademl.config import load_config

    monkeypatch.chdir(tmp_path)
    _cli_config(tmp_path)
    args = ["backtest", "--synthetic", "12000", "--edge-ic", "0.15", "--seed", "3", "--models", "lgbm",
            "--out", "wf.html", "--json", "wf.json"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "wf.json").read_text())
    assert list(tmp_path.glob(".wf.json.*")) == []  # the temporary file was renamed into place
    assert set(got) == {"bars", "dsr_trials", "pbo", "runs", "ensemble_calibration"}
    assert set(got["runs"]) == {"ensemble", "flat", "buy_and_hold", "random", "lgb_5m alone", "lgb_30m alone"}
    assert got["dsr_trials"] == 3  # the ensemble and each model alone; the baselines are yardsticks
    for figures in got["runs"].values():
        assert set(figures) == {"sharpe", "psr", "dsr", "trades", "total_pnl", "exposure"}
    assert got["runs"]["flat"]["sharpe"] is None and got["runs"]["flat"]["trades"] == 0
    # The same run in Python: the JSON is its table, its PBO and its calibration.
    cfg = load_config(tmp_path / "trademl.toml")
    again = backtest_models(None, cfg, models=("lgbm",), synthetic=12_000, edge_ic=0.15, seed=3,
                            out=tmp_path / "again.html")
    assert got["bars"] == len(again.bars) == len(again.signals)
    assert got["runs"]["ensemble"]["sharpe"] == pytest.approx(again.table.loc["ensemble", "sharpe"])
    assert got["runs"]["lgb_5m alone"]["trades"] == again.table.loc["lgb_5m alone", "trades"]
    assert 0.0 <= got["pbo"] <= 1.0 and got["pbo"] == pytest.approx(again.pbo)
    cal = got["ensemble_calibration"]
    # The stacker decided the last fold (the first has too few rows for it): its probability of
    # both sides at every bar of that fold is what the calibration judges.
    assert [f.stacker is not None for f in again.folds] == [False, True]
    assert cal["of"] == "stacker p_win_long and p_win_short"
    stacked = (again.signals["fold"] == 1).sum()
    assert 0.9 * 2 * stacked < cal["n"] <= 2 * stacked and sum(b[2] for b in cal["bins"]) == cal["n"]
    assert cal["ece"] == pytest.approx(again.calibration["ece"])
    out = " ".join(result.output.split())
    assert "PBO over 3 candidates" in out and "ECE" in out and "json: wf.json" in out
    page = (tmp_path / "wf.html").read_text()
    assert "Reliability of the ensemble" in page and "Probability of backtest overfitting" in page


@pytest.mark.parametrize("args, where", [
    (["--synthetic", "0"], "--synthetic"),
    (["--synthetic", "5000", "--edge-ic", "1.5"], "--edge-ic"),
    (["--synthetic", "5000", "some_dataset"], "--synthetic"),
])
def test_cli_backtest_synthetic_bad_input_is_one_clear_line(args, where, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trademl.cli import app

    monkeypatch.chdir(tmp_path)
    _cli_config(tmp_path)
    result = CliRunner().invoke(app, ["backtest", *args, "--models", "lgbm"])
    assert result.exit_code == 2 and where in result.output and "Traceback" not in result.output
