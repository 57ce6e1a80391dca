"""Walk-forward backtest over trained models: no look-ahead, the PPO agent sees the traded
account, honesty on a random walk and on a planted edge, the CLI."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from trademl.backtest.walkforward import (
    ENSEMBLE,
    Accounts,
    backtest_segments,
    budget_config,
    check_models,
    walk_forward_backtest,
)
from trademl.config import load_config
from trademl.data.dataset import dataset_from_bars
from trademl.data.splits import label_window_overlap
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel

# Tiny budgets: a 3-fold walk-forward of all three models on 30k bars in ~40 s on two shared cores.
TINY = {
    "data": {"extra_feature_columns": ["edge"]},
    "lgbm": {"n_estimators": 60, "n_folds": 2, "num_leaves": 15, "min_child_samples": 200, "learning_rate": 0.1,
             "feature_fraction": 1.0, "early_stopping_rounds": 20, "num_threads": 1},
    "lstm": {"HIDDEN_SIZE": 16, "NUM_LAYERS": 1, "EPOCHS": 2, "SEQUENCE_LENGTH": 20, "N_FOLDS": 2, "BATCH_SIZE": 256,
             "TORCH_THREADS": 1},
    "ppo": {"total_timesteps": 2048, "n_envs": 8, "n_steps": 64, "batch_size": 256, "n_epochs": 1, "torch_threads": 1},
    # The ensemble's confidence is P[recommendation] x agreement: with weak, disagreeing votes it
    # stays far below the guide's 0.7 (see README, Backtest), so these tests trade above 0.2.
    "backtest": {"n_folds": 3, "confidence_threshold": 0.2},
}


def tiny_config(**sections):
    overrides = {k: dict(v) for k, v in TINY.items()}
    for k, v in sections.items():
        overrides.setdefault(k, {}).update(v)
    return load_config(None, overrides)


# ----------------------------------------------------------------------------- units


def test_budget_and_models_are_checked():
    cfg = load_config()
    assert budget_config(cfg, "full") is cfg
    small = budget_config(cfg, "small")
    assert small.lstm.EPOCHS == cfg.demo.lstm["EPOCHS"] and small.ppo.total_timesteps == cfg.demo.ppo["total_timesteps"]
    assert small.backtest.n_folds == cfg.demo.backtest["n_folds"]
    with pytest.raises(TradeMLError, match="--budget"):
        budget_config(cfg, "huge")
    with pytest.raises(TradeMLError, match="xgboost"):
        check_models(("lgbm", "xgboost"))
    bad = load_config(None, {"demo": {"lstm": {"HIDDEN": 4}}})
    with pytest.raises(TradeMLError, match=r"\[demo\].*lstm.HIDDEN"):
        budget_config(bad, "small")


def test_fold_boundaries_are_segment_breaks():
    data_segments = np.array([0, 0, 0, 1, 1, 1, 1])
    folds = np.array([0, 0, 1, 1, 1, 2, 2])
    assert backtest_segments(data_segments, folds).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_account_hand_computed_es():
    """A BUY at bar 0's close fills at bar 1's open plus one tick; state as the PPO env defines it."""
    es = contract_spec("ES")  # tick 0.25 = $12.50, $50 a point
    accounts = Accounts(1, ExecutionModel(es, commission_per_side=2.25, slippage_ticks=1, max_position=5), 100_000.0)
    accounts.decide(np.array([1.0]), np.array([1]), 5)
    accounts.fill(False, prev_close=4000.0, open_=4001.0, close=4003.0)
    assert accounts.position.tolist() == [1.0] and accounts.avg_price.tolist() == [4001.25]
    # bar P&L: (4003 - 4001) * 50 - 12.50 slippage - 2.25 commission
    assert accounts.equity[0] == pytest.approx(100 - 12.5 - 2.25)
    position, balance, unrealized = accounts.state(4003.0)
    assert unrealized[0] == pytest.approx((4003.0 - 4001.25) * 50)
    assert balance[0] == pytest.approx(100_000 - 2.25)  # cash: only the commission is realized
    assert accounts.recent[0, -1] == 1
    accounts.decide(np.array([1.0]), np.array([1]), 5)
    accounts.fill(True, prev_close=4003.0, open_=4002.0, close=4010.0)  # the segment's last bar: flat
    assert accounts.position.tolist() == [0.0] and accounts.avg_price.tolist() == [0.0]


def test_random_twin_of_a_strategy_that_never_traded_stays_flat():
    from trademl.backtest.baselines import random_target

    assert random_target(np.array([0, 0, 0, 1, 1, 1]), 0, seed=0).tolist() == [0.0] * 6


# ----------------------------------------------------------------------------- no look-ahead


def _changed_after(bars: pd.DataFrame, first_row: int, seed: int) -> pd.DataFrame:
    """The same bars up to ``first_row`` - 1, another market (rescaled to join) from there on."""
    other = synthetic_bars(len(bars), seed=seed, edge_ic=0.1, symbol="NQ")
    out = bars.copy()
    scale = bars["close"].iloc[first_row - 1] / other["close"].iloc[first_row - 1]
    for col in ("open", "high", "low", "close"):
        out.iloc[first_row:, out.columns.get_loc(col)] = other[col].iloc[first_row:].to_numpy() * scale
    out.iloc[first_row:, out.columns.get_loc("edge")] = other["edge"].iloc[first_row:].to_numpy()
    out.attrs.update(bars.attrs)
    return out


@pytest.mark.slow
def test_later_bars_change_nothing_in_earlier_folds_and_ppo_sees_the_traded_position():
    cfg = tiny_config(backtest={"n_folds": 2})
    bars = synthetic_bars(14_000, seed=5, edge_ic=0.1, symbol="NQ")
    first = walk_forward_backtest(dataset_from_bars(bars, cfg), cfg)
    fold = first.folds[0]
    horizon = first.horizon
    test = np.arange(fold.test_rows[0], fold.test_rows[1] + 1)
    train = np.arange(fold.train_rows[0], fold.train_rows[1] + 1)

    # No training row's label window (t .. t + horizon + 1) reaches the test span, and no
    # stored model was trained on a bar later than the last training row.
    for f in first.folds:
        rows = np.arange(f.train_rows[0], f.train_rows[1] + 1)
        assert label_window_overlap(rows, np.arange(f.test_rows[0], f.test_rows[1] + 1), horizon) == 0
        assert f.train_rows[1] + horizon + 1 < f.test_rows[0]
        assert set(f.versions) == {"lgb_5m", "lgb_30m", "lstm", "ppo"}
        for kind, span in f.training_spans.items():
            assert pd.Timestamp(span["end"]) <= bars.index[f.train_rows[1]], kind

    # The PPO agent observed exactly the position the engine then traded, bar by bar.
    run = first.ensemble
    np.testing.assert_array_equal(first.outputs["ppo_seen_ensemble_position"].to_numpy(), run.position)
    np.testing.assert_array_equal(first.outputs["ppo_alone_position"].to_numpy(), first.runs["ppo alone"].position)
    assert np.abs(run.position).max() > 0, "the ensemble must trade for this check to mean anything"

    changed = _changed_after(bars, int(test[-1]) + 1, seed=99)
    second = walk_forward_backtest(dataset_from_bars(changed, cfg), cfg)
    n0 = len(test)
    assert len(train) > 0 and (second.bars.index[:n0] == first.bars.index[:n0]).all()
    pd.testing.assert_frame_equal(first.signals.iloc[:n0], second.signals.iloc[:n0])
    pd.testing.assert_frame_equal(first.outputs.iloc[:n0], second.outputs.iloc[:n0])
    pd.testing.assert_frame_equal(first.ensemble.frame().iloc[:n0], second.ensemble.frame().iloc[:n0])
    for name, signals in first.model_signals.items():
        pd.testing.assert_frame_equal(signals.iloc[:n0], second.model_signals[name].iloc[:n0], obj=name)
    # ... while the later fold did see other bars.
    assert not first.signals.iloc[n0:].equals(second.signals.iloc[n0:])


# ----------------------------------------------------------------------------- honesty


def _candidates(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[[r for r in table.index if r == ENSEMBLE or r.endswith(" alone")]]


@pytest.mark.slow
def test_random_walk_shows_no_significant_edge(tmp_path):
    cfg = tiny_config()
    bars = synthetic_bars(30_000, seed=11, edge_ic=0.0, symbol="NQ")
    result = walk_forward_backtest(dataset_from_bars(bars, cfg), cfg)
    candidates = _candidates(result.table)
    assert set(candidates.index) == {ENSEMBLE, "lgb_5m alone", "lgb_30m alone", "lstm alone", "ppo alone"}
    assert (candidates["dsr_trials"] == len(candidates)).all()
    for run, row in candidates.iterrows():
        assert not (row["dsr"] > 0.95), f"{run} claims an edge on a random walk: DSR {row['dsr']:.3f}"
    assert (candidates["trades"] > 0).sum() >= 2, "the claim must rest on models that traded"
    report = result.write_report(tmp_path / "rw.html")
    assert "Confidence vs realized hit rate" in report.read_text()


@pytest.mark.slow
def test_planted_edge_gives_a_significant_out_of_sample_sharpe():
    cfg = tiny_config()
    bars = synthetic_bars(30_000, seed=1, edge_ic=0.15, symbol="NQ")
    result = walk_forward_backtest(dataset_from_bars(bars, cfg), cfg)
    row = result.table.loc[ENSEMBLE]
    assert row["trades"] > 100
    assert row["sharpe"] > 0 and row["psr"] > 0.95, result.table[["sharpe", "trades", "psr", "dsr"]]
    # Weights came from each fold's validation skill, never from the test span.
    assert all(set(f.weights) == set(f.versions) for f in result.folds)


# ----------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_backtest_and_script(tmp_path, monkeypatch):
    """`trademl backtest` on the bundled ES bars (LightGBM only, 2 folds): progress per fold,
    the table, the verdict, the report; bad options are one clear line and exit code 2."""
    import subprocess
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from trademl.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trademl.toml").write_text(
        '[lgbm]\nn_estimators = 30\nnum_leaves = 7\nn_folds = 2\nmin_child_samples = 100\nnum_threads = 1\n'
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\nreport_dir = "{tmp_path / "reports"}"\n'
    )
    runner = CliRunner()
    result = runner.invoke(app, ["backtest", "--folds", "2", "--models", "lgbm", "--out", "wf.html"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "fold 1/2" in out and "fold 2/2 done" in out
    for row in ("ensemble", "buy_and_hold", "random", "lgb_5m alone", "lgb_30m alone"):
        assert row in out
    assert "DSR" in out and "report:" in out
    assert (tmp_path / "wf.html").is_file() and "Equity and drawdown" in (tmp_path / "wf.html").read_text()
    assert not (tmp_path / "models").exists(), "fold models live in temporary stores, not in the model store"

    bad = runner.invoke(app, ["backtest", "--budget", "huge"])
    assert bad.exit_code == 2 and "--budget" in bad.output
    unknown = runner.invoke(app, ["backtest", "--models", "lgbm,xgboost"])
    assert unknown.exit_code == 2 and "xgboost" in unknown.output
    script = Path(__file__).resolve().parents[1] / "scripts" / "backtest_models.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--folds" in shown.stdout and "--budget" in shown.stdout
