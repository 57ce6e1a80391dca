"""`trademl demo` end to end on the bundled ES bars, with an even smaller [demo] budget."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from trademl.config import load_config
from trademl.demo import run_demo
from trademl.models.store import ModelStore

from test_report import CHROMIUM, render, status_of

TINIEST = {
    "lgbm": {"n_estimators": 30, "n_folds": 2, "num_leaves": 7, "min_child_samples": 100},
    "lstm": {"HIDDEN_SIZE": 8, "NUM_LAYERS": 1, "EPOCHS": 1, "SEQUENCE_LENGTH": 20, "N_FOLDS": 2, "TORCH_THREADS": 1},
    "ppo": {"total_timesteps": 1024, "n_envs": 8, "n_steps": 64, "batch_size": 256, "n_epochs": 1, "torch_threads": 1},
    "backtest": {"n_folds": 2},
}


@pytest.mark.slow
def test_demo_builds_trains_backtests_and_reports(tmp_path):
    paths = {"data_dir": str(tmp_path / "data"), "model_root": str(tmp_path / "models"),
             "report_dir": str(tmp_path / "reports")}
    cfg = load_config(None, {"paths": paths, "demo": TINIEST, "lgbm": {"num_threads": 1},
                             "ppo": {"checkpoint_dir": str(tmp_path / "ckpt")}})
    console = Console(file=open(tmp_path / "demo.log", "w"), width=120)
    result = run_demo(cfg, console)
    console.file.close()
    log = (tmp_path / "demo.log").read_text()

    report = result.report_path
    assert report == tmp_path / "reports" / "demo_backtest.html" and report.is_file()
    page = report.read_text()
    for heading in ("Equity and drawdown", "Trade P&amp;L", "Daily P&amp;L"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count('class="plotly-graph-div"') >= 3
    assert "<script src=\"http" not in page  # plotly.js inlined: opens offline
    # equity, trades, days; the reliability diagram of the stacked probabilities; the suggested
    # sizes when the ensemble said BUY or SELL
    assert "Reliability of the ensemble" in page
    sizes = result.walk_forward.suggested_sizes()
    plots = 4 + int(sizes is not None and len(sizes) > 0)
    assert page.count('class="plotly-graph-div"') == plots
    if CHROMIUM.exists():  # it renders offline in a real browser, without console errors
        dom, _log = render(report, tmp_path)
        status = status_of(dom)
        assert status["errors"] == "0" and status["plots"] == str(plots)
        assert int(status["rendered-svgs"]) >= plots

    store = ModelStore(tmp_path / "models")
    for kind in ("lgb_5m", "lgb_30m", "lstm", "ppo"):
        stored = store.latest(kind)
        assert stored is not None and stored.manifest["training_span"], kind
        assert kind in result.stored
    assert (tmp_path / "data" / "es_1min_lean" / "manifest.json").is_file()
    assert str(report) in " ".join(log.split()) or report.name in log
    assert "models:" in log and "took" in log
    # The walk-forward table holds the ensemble, the baselines and each model alone.
    assert {"ensemble", "flat", "buy_and_hold", "lstm alone", "ppo alone"} <= set(result.walk_forward.table.index)


@pytest.mark.slow
def test_cli_train_all_stores_every_kind_with_its_table(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trademl.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trademl.toml").write_text(
        '[lgbm]\nn_estimators = 30\nnum_leaves = 7\nn_folds = 2\nmin_child_samples = 100\nnum_threads = 1\n'
        '[lstm]\nHIDDEN_SIZE = 8\nNUM_LAYERS = 1\nEPOCHS = 1\nSEQUENCE_LENGTH = 20\nN_FOLDS = 2\nTORCH_THREADS = 1\n'
        '[ppo]\ntotal_timesteps = 1024\nn_envs = 8\nn_steps = 64\nbatch_size = 256\nn_epochs = 1\n'
        f'checkpoint_dir = "{tmp_path / "ckpt"}"\n'
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\n'
    )
    from test_lgbm import assert_lgbm_tables_match_the_store
    from test_lstm import assert_lstm_summary_matches
    from test_ppo_train import assert_ppo_summary_matches

    from trademl.data.bars import bundled_sample_path

    runner = CliRunner(env={"COLUMNS": "250"})  # one table row per line
    result = runner.invoke(app, ["train", "all"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "lgb_5m" in out and "lgb_30m" in out and "OOS" in out  # the LightGBM tables
    assert "stored lstm" in out and "PPO agent, held-out span" in out
    assert "trained in lgbm" in out
    store = ModelStore(tmp_path / "models")
    assert all(store.latest(kind) is not None for kind in ("lgb_5m", "lgb_30m", "lstm", "ppo"))
    # One model of each kind, on the one dataset (the bundled ES bars, one feature schema), with
    # trademl.toml's budgets; each trainer's printed table holds its stored model's figures.
    kinds = ("lgb_5m", "lgb_30m", "lstm", "ppo")
    assert {k: len(store.versions(k)) for k in kinds} == dict.fromkeys(kinds, 1)
    assert len({store.latest(k).manifest["feature_schema"]["hash"] for k in kinds}) == 1
    assert store.latest("lgb_5m").manifest["training_span"]["dataset"] == str(bundled_sample_path())
    assert store.latest("lgb_5m").manifest["config"]["lgbm"]["n_estimators"] == 30
    assert store.latest("ppo").manifest["metrics"]["timesteps"] >= 1024
    assert store.latest("ppo").manifest["config"]["total_timesteps"] == 1024
    assert_lgbm_tables_match_the_store(result.output, store)
    assert_lstm_summary_matches(result.output, store.latest("lstm"))
    assert_ppo_summary_matches(result.output, store.latest("ppo"))
    assert re.fullmatch(r"trained in lgbm \d+ s, lstm \d+ s, ppo \d+ s, stacker \d+ s",
                        result.output.splitlines()[-1].strip())
    missing = runner.invoke(app, ["train", "all", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "no such dataset" in missing.output
    assert {k: len(store.versions(k)) for k in kinds} == dict.fromkeys(kinds, 1)  # nothing stored
