"""Issue 14's small things: the guide's scripts run with the system python3 (they re-exec into
.venv), `data inspect` answers on stdout, PPO checkpoints go beside the configured model root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def _system_python() -> str | None:
    """A python3 that is not the project's venv and lacks its dependencies (typer), if any."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate or not Path(candidate).exists():
            continue
        if Path(candidate).resolve() == VENV_PYTHON.resolve():
            continue
        lacks = subprocess.run([candidate, "-c", "import typer"], capture_output=True).returncode != 0
        if lacks:
            return candidate
    return None


@pytest.mark.skipif(_system_python() is None, reason="no python3 without the project's dependencies on this machine")
@pytest.mark.parametrize("script, words", [("build_dataset.py", "data build"), ("train_ppo_agent.py", "train ppo"),
                                           ("backtest_models.py", "backtest")])
def test_the_guides_scripts_run_with_the_system_python(script, words, tmp_path):
    result = subprocess.run([_system_python(), str(REPO / "scripts" / script), "--help"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Usage: {script} {words}" in " ".join(result.stdout.split())


@pytest.mark.skipif(_system_python() is None, reason="no python3 without the project's dependencies on this machine")
def test_predict_advanced_answers_with_the_system_python(trained_store, tmp_path):
    import json

    request = {"symbol": "NQZ5", "timestamp": "2024-01-01T12:00:00Z",
               "features": {"close": 16500, "volume": 1000, "rsi": 45, "dist_to_poc_ticks": 4}}
    result = subprocess.run([_system_python(), str(REPO / "scripts" / "predict_advanced.py"), "--model-root",
                             str(trained_store.root), "--no-log"], input=json.dumps(request), capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models_used"] == ["lgb_5m", "lgb_30m"]


def test_inspect_prints_its_table_on_stdout(tmp_path):
    # a wide console: the table folds its cells at 80 columns, and the bundled file's path (which
    # names es_1min_lean) is as long as the folder the repository was cloned into
    result = subprocess.run([str(REPO / ".venv" / "bin" / "trademl"), "data", "inspect"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    assert "19,083" in result.stdout and "es_1min_lean" in result.stdout
    assert "19,083" not in result.stderr


def test_ppo_checkpoints_go_beside_the_configured_model_root(tmp_path):
    from trademl.config import load_config
    from trademl.models.ppo.train import checkpoint_folder

    cfg = load_config(None, {"paths": {"model_root": str(tmp_path / "store" / "models")}})
    assert checkpoint_folder(cfg) == tmp_path / "store" / "checkpoints" / "ppo"  # where the LSTM's go
    assert checkpoint_folder(load_config()) == Path("artifacts/checkpoints/ppo")  # the default, as before
    cfg.ppo.checkpoint_dir = str(tmp_path / "mine")
    assert checkpoint_folder(cfg) == tmp_path / "mine"
