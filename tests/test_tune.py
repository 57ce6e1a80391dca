"""`trademl tune` (issue 16): Optuna's search finds settings at least as good as the defaults on a
planted market, a killed study resumes, the written config counts its trials in the
walk-forward's deflated Sharpe, and bad arguments are clear errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trademl.config import load_config
from trademl.data.dataset import dataset_from_bars
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.tune import tune
from trademl.tune.objectives import lgbm_value

from tests.test_lgbm import small_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _FixedTrial:
    """What lgbm_value needs of an Optuna trial, to score the settings in force outside a study."""

    def report(self, value, step):
        pass

    def should_prune(self):
        return False


def test_tune_lgbm_on_a_planted_market_beats_or_equals_the_defaults(tmp_path):
    """IC 0.25: the best of 8 trials has a walk-forward log-loss no worse than the settings in force
    (which are the study's first trial), the config written holds its settings and trial count,
    and the page of plots is written."""
    cfg = small_config()
    cfg.tune.storage = str(tmp_path / "studies.db")
    dataset = dataset_from_bars(synthetic_bars(30_000, seed=4, edge_ic=0.25), cfg)
    defaults = lgbm_value(_FixedTrial(), dataset, cfg, 5)
    result = tune("lgbm", dataset, cfg, trials=8)
    assert result.trials == 8 and result.completed + result.pruned + result.failed == 8
    assert result.best_value <= defaults + 1e-12
    assert result.history[0][2] == pytest.approx(defaults, abs=1e-9)  # trial 0: the settings in force
    tuned = load_config(result.config_path)
    for name, value in result.best_params.items():
        assert getattr(tuned.lgbm, name) == pytest.approx(value)
    assert tuned.tune.trials == {"lgbm": 8}
    page = result.report_path.read_text()
    assert "Optimisation history" in page and "js-plotly-plot" in page or "plotly" in page
    assert result.to_json()["backend"] == "local" and set(result.to_json()["best"]) == {"params", "value"}


def test_written_config_extends_the_one_it_was_tuned_with(tmp_path):
    """The file `tune` writes lays the best settings over yours: your other settings stay."""
    mine = tmp_path / "mine.toml"
    mine.write_text('[lgbm]\nn_estimators = 60\nn_folds = 2\nmin_child_samples = 300\n'
                    '[data]\nextra_feature_columns = ["edge"]\n'
                    f'[tune]\nstorage = "{tmp_path / "t" / "studies.db"}"\ntrials = {{lstm = 4}}\n')
    cfg = load_config(mine)
    dataset = dataset_from_bars(synthetic_bars(12_000, seed=2, edge_ic=0.2), cfg)
    result = tune("lgbm", dataset, cfg, trials=2, config_file=mine, report=False)
    tuned = load_config(result.config_path)
    assert tuned.lgbm.n_estimators == 60 and tuned.data.extra_feature_columns == ["edge"]
    assert tuned.tune.trials == {"lstm": 4, "lgbm": 2}


def _count_trials(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return dict(con.execute("select state, count(*) from trials group by state").fetchall())


def _running_has_settings(db: Path) -> bool:
    """The running trial has been given all its settings, as many as the first complete trial has:
    it is training. (Optuna draws them one by one; a kill between two draws leaves a trial with some
    of them, whose retry keeps those and draws the rest: the race a clean CI run met.)"""
    with sqlite3.connect(db) as con:
        def settings(state: str) -> int:
            return con.execute("select count(*) from trial_params where trial_id = (select min(trial_id) from "
                               "trials where state = ?)", (state,)).fetchone()[0]

        complete = settings("COMPLETE")
        return complete > 0 and settings("RUNNING") == complete


@pytest.mark.slow
def test_a_killed_study_resumes_and_retries_the_interrupted_trial(tmp_path):
    """SIGKILL during trial 2, then the same command: the interrupted trial runs again with the
    same settings, and the study ends with exactly the trials asked for, each point counted once."""
    cfg_file = tmp_path / "trademl.toml"
    cfg_file.write_text('[data]\nextra_feature_columns = ["edge"]\n'
                        '[lgbm]\nn_estimators = 150\nlearning_rate = 0.02\nearly_stopping_rounds = 150\nn_folds = 3\n'
                        'num_threads = 1\n'
                        f'[tune]\nstorage = "{tmp_path / "studies.db"}"\n')
    bars = tmp_path / "bars.parquet"
    frame = synthetic_bars(25_000, seed=5, edge_ic=0.2)
    frame.to_parquet(bars)
    command = [sys.executable, "-m", "trademl.cli", "tune", "lgbm", str(bars), "--symbol", "NQ", "--trials", "3",
               "--config", str(cfg_file), "--json", str(tmp_path / "tune.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "studies.db"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if db.exists():
            try:
                states = _count_trials(db)
                ready = states.get("COMPLETE", 0) >= 1 and states.get("RUNNING", 0) == 1 and _running_has_settings(db)
            except sqlite3.OperationalError:  # tables not made yet, or locked: look again
                ready = False
            if ready:
                break
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before it could be killed: " + first.stderr.read().decode()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert _count_trials(db).get("RUNNING") == 1
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    out = json.loads((tmp_path / "tune.json").read_text())
    assert out["trials"] == 3 and out["best"]["value"] is not None
    import optuna

    study = optuna.load_study(study_name="lgbm", storage=f"sqlite:///{db}")
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") is not None]
    assert len(killed) == 1 and len(retry) == 1 and killed[0].params
    assert retry[0].params == killed[0].params  # every setting the killed trial had, kept
    assert retry[0].state != optuna.trial.TrialState.FAIL


def test_same_study_name_on_other_data_is_refused(tmp_path):
    cfg = small_config(n_estimators=20)
    cfg.tune.storage = str(tmp_path / "studies.db")
    tune("lgbm", dataset_from_bars(synthetic_bars(9_000, seed=1, edge_ic=0.2), cfg), cfg, trials=1, report=False)
    with pytest.raises(TradeMLError, match="other data") as e:
        tune("lgbm", dataset_from_bars(synthetic_bars(9_500, seed=1, edge_ic=0.2), cfg), cfg, trials=1, report=False)
    assert "--study" in e.value.hint


@pytest.mark.parametrize("kind, kwargs, message", [
    ("bogus", {"trials": 1}, "unknown kind"),
    ("lgbm", {"trials": 0}, "--trials"),
    ("lgbm", {"trials": 2, "timeout": -1.0}, "--timeout"),
    ("lgbm", {"trials": 2, "workers": 0}, "--workers"),
])
def test_bad_arguments_are_clear_errors(tmp_path, kind, kwargs, message):
    cfg = small_config()
    cfg.tune.storage = str(tmp_path / "studies.db")
    dataset = dataset_from_bars(synthetic_bars(3_000, seed=1), cfg)
    with pytest.raises(TradeMLError, match=message):
        tune(kind, dataset, cfg, **kwargs)


def test_search_space_errors_name_the_setting():
    with pytest.raises(TradeMLError, match=r"\[tune.lgbm\] searches \['num_trees'\]"):
        load_config(None, {"tune": {"lgbm": {"num_trees": {"low": 1, "high": 5}}}})
    with pytest.raises(TradeMLError, match="log range needs low > 0"):
        load_config(None, {"tune": {"ppo": {"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}}})
    with pytest.raises(TradeMLError, match="whole numbers"):
        load_config(None, {"tune": {"trials": {"lgbm": -3}}})


def test_the_backtest_deflates_by_the_trials_tuning_spent():
    """A walk-forward run whose config records 25 tuning trials of lgbm counts them in dsr_trials
    (and its DSR can only fall); trials of a family not traded do not count."""
    from trademl.backtest.walkforward import walk_forward_backtest

    from tests.test_walkforward import tiny_config

    cfg = tiny_config(backtest={"n_folds": 2})
    dataset = dataset_from_bars(synthetic_bars(12_000, seed=7, edge_ic=0.15, symbol="NQ"), cfg)
    plain = walk_forward_backtest(dataset, cfg, models=("lgbm",))
    tuned_cfg = cfg.model_copy(deep=True)
    tuned_cfg.tune.trials = {"lgbm": 25, "ppo": 100}
    tuned = walk_forward_backtest(dataset, tuned_cfg, models=("lgbm",))
    a, b = plain.to_json(), tuned.to_json()
    assert b["dsr_trials"] == a["dsr_trials"] + 25
    assert b["runs"]["ensemble"]["sharpe"] == pytest.approx(a["runs"]["ensemble"]["sharpe"])
    dsr_a, dsr_b = a["runs"]["ensemble"]["dsr"], b["runs"]["ensemble"]["dsr"]
    assert dsr_a is None or dsr_b <= dsr_a + 1e-12
    assert np.isfinite(b["dsr_trials"])


@pytest.mark.parametrize("kind", ["lstm", "ppo"])
def test_tune_the_sequence_model_and_the_agent(tmp_path, kind):
    """Two trials of each on tiny budgets: finite objectives (a validation loss; a held-out Sharpe,
    maximised), recorded per trial, nothing written to the model store."""
    from tests.test_walkforward import tiny_config

    # the tiny nets stay tiny: the width is not searched here
    space = {"lstm": {"LEARNING_RATE": {"low": 1e-4, "high": 3e-3, "log": True}, "DROPOUT": {"low": 0.0, "high": 0.5}}}
    cfg = tiny_config(tune={"storage": str(tmp_path / "studies.db"), **(space if kind == "lstm" else {})},
                      paths={"model_root": str(tmp_path / "models")})
    dataset = dataset_from_bars(synthetic_bars(8_000, seed=6, edge_ic=0.2, symbol="NQ"), cfg)
    result = tune(kind, dataset, cfg, trials=2, report=False)
    assert result.trials == 2 and result.completed == 2
    values = [v for _, _, v in result.history]
    assert all(np.isfinite(values))
    assert result.best_value == (max(values) if kind == "ppo" else min(values))
    if kind == "lstm":
        assert 0 < result.best_value < 10  # a multi-task loss, not a sentinel
    assert not (tmp_path / "models").exists()
