"""Walk-forward backtest over trained models: no look-ahead, the PPO agent sees the traded
account, honesty on a random walk and on a planted edge, the CLI."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.walkforward import ENSEMBLE, backtest_segments, budget_config, trial_actions, walk_forward_backtest
from trademl.config import load_config
from trademl.models.stacker import NO_EDGE, THRESHOLD_GRID
from trademl.data.dataset import dataset_from_bars
from trademl.data.splits import label_window_overlap
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.market.contracts import contract_spec
from trademl.market.actions import direction_of
from trademl.market.broker import Broker
from trademl.market.execution import ExecutionModel
from trademl.models.train_all import check_families

# Tiny budgets: a 3-fold walk-forward of all three models on 30k bars in ~40 s on two shared cores.
TINY = {
    "data": {"extra_feature_columns": ["edge"]},
    "lgbm": {"n_estimators": 60, "n_folds": 2, "num_leaves": 15, "min_child_samples": 200, "learning_rate": 0.1,
             "feature_fraction": 1.0, "early_stopping_rounds": 20, "num_threads": 1},
    "lstm": {"HIDDEN_SIZE": 16, "NUM_LAYERS": 1, "EPOCHS": 2, "SEQUENCE_LENGTH": 20, "N_FOLDS": 2, "BATCH_SIZE": 256,
             "TORCH_THREADS": 1},
    "ppo": {"total_timesteps": 2048, "n_envs": 8, "n_steps": 64, "batch_size": 256, "n_epochs": 1, "torch_threads": 1},
    # These tests trade above 0.2: the vote's confidence, P[recommendation] x agreement, stays far
    # below the guide's 0.7 with weak, disagreeing votes; with the stacker, a win probability of 0.2
    # with a positive expected P&L.
    "backtest": {"n_folds": 3, "confidence_threshold": 0.2},
}


def config_with(base: dict, **sections):
    """The config of ``base``'s sections, each updated by the same section of ``sections``."""
    overrides = {k: dict(v) for k, v in base.items()}
    for k, v in sections.items():
        overrides.setdefault(k, {}).update(v)
    return load_config(None, overrides)


def tiny_config(**sections):
    return config_with(TINY, **sections)


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
        check_families(("lgbm", "xgboost"))
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
    broker = Broker(ExecutionModel(es, commission_per_side=2.25, slippage_ticks=1, max_position=5), 1, 100_000.0)
    broker.signal(np.array([1]), np.array([True]))
    broker.fill_target(False, prev_close=4000.0, open_=4001.0, close=4003.0)
    assert broker.position.tolist() == [1] and broker.avg_price.tolist() == [4001.25]
    # bar P&L: (4003 - 4001) * 50 - 12.50 slippage - 2.25 commission
    assert broker.equity[0] == pytest.approx(100 - 12.5 - 2.25)
    state = broker.state(4003.0)
    assert state.position.tolist() == [1.0]
    assert state.unrealized_pnl[0] == pytest.approx((4003.0 - 4001.25) * 50)
    assert state.balance[0] == pytest.approx(100_000 - 2.25)  # cash: only the commission is realized
    assert state.recent_actions[0, -1] == 1
    broker.signal(np.array([2]), np.array([False]))  # a SELL that did not count: recorded as hold, no move
    assert broker.target.tolist() == [1] and broker.recent[0, -2:].tolist() == [1, 0]
    broker.signal(np.array([1]), np.array([True]))
    broker.fill_target(True, prev_close=4003.0, open_=4002.0, close=4010.0)  # the segment's last bar: flat
    assert broker.position.tolist() == [0] and broker.avg_price.tolist() == [0.0]


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
    # ... while the later fold did see other bars (its models' outputs; the stacker of these tiny
    # models may give them no weight and answer its base rate on every bar of both runs)
    assert not first.outputs.iloc[n0:].equals(second.outputs.iloc[n0:])


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
    assert "Reliability of the ensemble" in report.read_text()


@pytest.mark.slow
def test_planted_edge_gives_a_significant_out_of_sample_sharpe():
    """The stacked ensemble at its own ("auto") threshold, chosen per fold on the stacker's rows."""
    cfg = tiny_config(backtest={"confidence_threshold": "auto"})
    bars = synthetic_bars(30_000, seed=1, edge_ic=0.15, symbol="NQ")
    result = walk_forward_backtest(dataset_from_bars(bars, cfg), cfg)
    row = result.table.loc[ENSEMBLE]
    assert row["trades"] > 100
    assert row["sharpe"] > 0 and row["psr"] > 0.95, result.table[["sharpe", "trades", "psr", "dsr"]]
    # Every fold was decided by a stacker, at a threshold of the grid chosen on its own rows, or at
    # NO_EDGE where none beat chance there (the first fold's few rows can show none): that fold holds.
    assert all(f.stacker is not None and f.thresholds[ENSEMBLE] in (*THRESHOLD_GRID, NO_EDGE) for f in result.folds)
    assert result.folds[-1].thresholds[ENSEMBLE] in THRESHOLD_GRID
    counted = (result.signals["action"] != 0) & (result.signals["confidence"] > result.signals["threshold"])
    for f in result.folds:
        if f.thresholds[ENSEMBLE] == NO_EDGE:
            assert not counted[result.signals["fold"] == f.number].any()
    # A fold trades exactly as the trial at its threshold does there (the novelty rule's holds too).
    counted_action = np.where(counted, result.signals["action"].to_numpy(), 0)
    for f in result.folds:
        if f.thresholds[ENSEMBLE] in THRESHOLD_GRID:
            in_fold = (result.signals["fold"] == f.number).to_numpy()
            trial = direction_of(trial_actions(result.outputs, f.thresholds[ENSEMBLE]))
            np.testing.assert_array_equal(trial[in_fold], counted_action[in_fold])
    # Every threshold of the grid was tried on every fold: each is a candidate of the DSR.
    assert {f"{ENSEMBLE} at {t:g}" for t in THRESHOLD_GRID} <= set(result.table.index)
    assert row["dsr_trials"] == 5 + len(THRESHOLD_GRID)
    # Calibrated out of sample: 0.032 measured with these tiny models (bench/bench_stacker.py, with the
    # small budget's: 0.012); the ECE of 10 bins of ~4,000 overlapping 5-bar outcomes is ~0.01 noise.
    assert result.calibration["ece"] < 0.05


# ----------------------------------------------------------------------------- the command


def _figure(text: str) -> float:
    """A printed or reported figure ("$17,205", "$-5", "-$5", "44%", "0.941", "-") as a number; "-" is NaN."""
    text = text.strip()
    if text == "-":
        return math.nan
    negative = text.startswith("-") or text.startswith("$-")
    value = float(text.replace("$", "").replace("-", "").replace(",", "").rstrip("%"))
    return (-value if negative else value) / (100.0 if text.endswith("%") else 1.0)


def _report_metrics(page: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The HTML report's metrics table: (runs in order, {metric: {run: cell text}})."""
    table = page[page.index('<table class="metrics">'):]
    table = table[:table.index("</table>")]
    head = re.findall(r"<th>(.*?)</th>", table)
    assert head[0] == "metric"
    runs = [html.unescape(h) for h in head[1:]]
    metrics = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>"):]):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
        metrics[cells[0]] = dict(zip(runs, cells[1:]))
    return runs, metrics


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
    result = runner.invoke(app, ["backtest", "--folds", "2", "--models", "lgbm", "--out", "wf.html"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "fold 1/2" in out and "fold 2/2 done" in out
    for row in ("ensemble", "buy_and_hold", "random", "lgb_5m alone", "lgb_30m alone"):
        assert row in out
    assert "DSR" in out and "report:" in out
    assert (tmp_path / "wf.html").is_file() and "Equity and drawdown" in (tmp_path / "wf.html").read_text()
    assert not (tmp_path / "models").exists(), "fold models live in temporary stores, not in the model store"
    # Each fold trains on a longer past than the one before and reports when it is done, in order.
    trained_to = [int(n.replace(",", "")) for n in re.findall(r"fold \d/2: training on rows 0\.\.([\d,]+)", out)]
    assert len(trained_to) == 2 and trained_to[0] < trained_to[1]
    assert re.findall(r"fold (\d)/2 done", out) == ["1", "2"]
    # The printed table is the report's table: the same runs in the same order, the same figures.
    page = (tmp_path / "wf.html").read_text()
    runs, reported = _report_metrics(page)
    assert runs[:2] == ["ensemble", "flat"] and {"buy_and_hold", "lgb_5m alone", "lgb_30m alone"} <= set(runs)
    printed = {}
    for line in result.output.splitlines():
        tokens = line.split()
        if len(tokens) > 8 and " ".join(tokens[:-8]) in runs:
            printed[" ".join(tokens[:-8])] = tokens[-8:]
    assert list(printed) == runs
    columns = [("total_pnl", 0.5), ("sharpe", 0.0051), ("max_drawdown_usd", 0.5), ("trades", 0), ("win_rate", 0.0051),
               ("costs_paid", 0.5), ("psr", 0.0006), ("dsr", 0.0006)]  # printed precision vs the report's
    for run, cells in printed.items():
        for text, (metric, tol) in zip(cells, columns):
            got, want = _figure(text), _figure(reported[metric][run])
            assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= tol, (run, metric, text, reported[metric][run])
    # The verdict line says what the ensemble's row says.
    verdict = next(line for line in result.output.splitlines() if line.startswith("ensemble: "))
    if _figure(reported["trades"]["ensemble"]) == 0:
        threshold = load_config(tmp_path / "trademl.toml").backtest.confidence_threshold
        assert (verdict.startswith("ensemble: NO edge found") and f"threshold ({threshold:g})" in verdict) or (
            verdict.startswith("ensemble: never traded") and f"the threshold was {threshold:g}" in verdict), verdict
    elif not math.isnan(_figure(reported["dsr"]["ensemble"])):
        assert verdict.startswith(f"ensemble: deflated Sharpe {reported['dsr']['ensemble']} over "
                                  f"{reported['dsr_trials']['ensemble']} candidates")
    assert result.output.splitlines()[-1] == "report: wf.html"
    assert "2 folds" in page[page.index("<title>"):page.index("</title>")]

    bad = runner.invoke(app, ["backtest", "--budget", "huge"])
    assert bad.exit_code == 2 and "--budget" in bad.output
    unknown = runner.invoke(app, ["backtest", "--models", "lgbm,xgboost"])
    assert unknown.exit_code == 2 and "xgboost" in unknown.output
    script = Path(__file__).resolve().parents[1] / "scripts" / "backtest_models.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--folds" in shown.stdout and "--budget" in shown.stdout
    # The script is `trademl backtest`: every option of the command, and no other.
    options = lambda text: sorted(set(re.findall(r"--[a-z][a-z-]*", text)))  # noqa: E731
    assert options(shown.stdout) == options(runner.invoke(app, ["backtest", "--help"]).output)
    assert {"--folds", "--budget", "--out", "--models", "--config"} <= set(options(shown.stdout))
