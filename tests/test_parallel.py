"""Independent jobs on Ray (issue 16): a walk-forward with --workers 2 trades exactly as with
--workers 1, a tune with --workers 2 runs on a local Ray, and --ray-address joins a cluster
started with `ray start --head`. Skipped, with the reason, where Ray cannot start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from trademl.data.dataset import dataset_from_bars
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.parallel import RAY_MISSING, run_jobs, threads_per_worker, with_threads

from tests.test_walkforward import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

try:
    import ray  # noqa: F401

    NO_RAY = None
except ImportError:
    NO_RAY = RAY_MISSING


def _square(x, *, offset):
    return x * x + offset


def test_jobs_in_process_keep_their_order_and_threads_are_shared_out():
    assert run_jobs(_square, [(3,), (1,), (2,)], shared={"offset": 1}) == [10, 2, 5]
    assert threads_per_worker(1) == (os.cpu_count() or 1)
    assert threads_per_worker(2, "10.0.0.1:6379") == 1
    cfg = with_threads(tiny_config(lstm={"TORCH_THREADS": 4}), 1)
    assert (cfg.lgbm.num_threads, cfg.lstm.TORCH_THREADS, cfg.ppo.torch_threads) == (1, 1, 1)


@pytest.mark.slow
@pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))
def test_walk_forward_on_two_ray_workers_trades_as_in_process():
    """Same folds, same models, same trades and P&L to the cent: only where they were trained differs."""
    from trademl.backtest.walkforward import walk_forward_backtest

    cfg = tiny_config(backtest={"n_folds": 2})
    dataset = dataset_from_bars(synthetic_bars(12_000, seed=21, edge_ic=0.15, symbol="NQ"), cfg)
    one = walk_forward_backtest(dataset, cfg)
    two = walk_forward_backtest(dataset, cfg, workers=2)
    assert [sorted(f.versions) for f in one.folds] == [sorted(f.versions) for f in two.folds]
    assert one.signals.equals(two.signals)
    for name, run in one.runs.items():
        other = two.runs[name]
        np.testing.assert_array_equal(run.trade_qty, other.trade_qty, err_msg=name)
        np.testing.assert_allclose(run.pnl, other.pnl, rtol=0, atol=1e-9, err_msg=name)
    assert one.to_json()["runs"] == two.to_json()["runs"]


@pytest.mark.slow
@pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))
def test_tune_on_two_ray_workers_finishes(tmp_path):
    from tests.test_lgbm import small_config
    from trademl.tune import tune

    cfg = small_config(n_estimators=40)
    cfg.tune.storage = str(tmp_path / "studies.db")
    dataset = dataset_from_bars(synthetic_bars(10_000, seed=3, edge_ic=0.2), cfg)
    result = tune("lgbm", dataset, cfg, trials=3, workers=2, report=False)
    assert result.backend == "ray" and result.trials == 3 and result.completed == 3
    assert result.best_value == min(v for _, _, v in result.history)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))
def test_ray_address_joins_a_cluster_started_with_ray_start(tmp_path):
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists() and shutil.which("ray") is None:
        pytest.skip("the `ray` command is not installed")
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    # a short temp folder: Ray's socket paths must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    started = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                              f"--temp-dir={temp}"], capture_output=True, text=True, env=env, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"`ray start --head` failed here: {started.stderr.strip()[-300:]}")
    try:
        script = ("from tests.test_parallel import _square; from trademl.parallel import run_jobs; "
                  f"print(run_jobs(_square, [(2,), (3,)], workers=2, address='127.0.0.1:{port}', shared={{'offset': 0}}))")
        joined = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180,
                                cwd=Path(__file__).resolve().parents[1])
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert joined.stdout.strip().splitlines()[-1] == "[4, 9]"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))
def test_a_wrong_ray_address_is_a_clear_error():
    with pytest.raises(TradeMLError, match="nothing answers at 127.0.0.1:1"):
        run_jobs(_square, [(1,), (2,)], workers=2, address="127.0.0.1:1", shared={"offset": 0})
    with pytest.raises(TradeMLError, match="not a Ray address"):
        run_jobs(_square, [(1,), (2,)], workers=2, address="nohost", shared={"offset": 0})


@pytest.mark.slow
@pytest.mark.skipif(NO_RAY is not None, reason=str(NO_RAY))
def test_train_all_each_trains_one_store_per_symbol_on_two_workers(tmp_path):
    """Two instruments' files, --each --workers 2: a store per symbol under the model root, each
    holding the kinds trained on that file alone, served by its own predictor."""
    from typer.testing import CliRunner

    from trademl.cli import app
    from trademl.models.store import ModelStore
    from trademl.predict.ensemble import EnsemblePredictor

    for symbol, seed in (("NQ", 1), ("ES", 2)):
        bars = synthetic_bars(6_000, seed=seed, edge_ic=0.2, symbol=symbol)
        bars.drop(columns="edge").rename_axis("timestamp").reset_index().to_csv(tmp_path / f"{symbol}_1min.csv", index=False)
    cfg_file = tmp_path / "trademl.toml"
    cfg_file.write_text(f'[paths]\nmodel_root = "{tmp_path / "models"}"\n'
                        '[lgbm]\nn_estimators = 30\nn_folds = 2\nmin_child_samples = 200\n'
                        '[lstm]\nHIDDEN_SIZE = 8\nNUM_LAYERS = 1\nEPOCHS = 1\nSEQUENCE_LENGTH = 20\nN_FOLDS = 2\n'
                        'BATCH_SIZE = 256\nTORCH_THREADS = 1\n'
                        '[ppo]\ntotal_timesteps = 2048\nn_envs = 8\nn_steps = 64\nbatch_size = 256\nn_epochs = 1\n'
                        '[ensemble]\nmethod = "vote"\n')
    runner = CliRunner()
    done = runner.invoke(app, ["train", "all", str(tmp_path / "NQ_1min.csv"), str(tmp_path / "ES_1min.csv"), "--each",
                               "--workers", "2", "--config", str(cfg_file)])
    assert done.exit_code == 0, done.output
    for symbol in ("NQ", "ES"):
        store = ModelStore(tmp_path / "models" / symbol)
        assert {"lgb_5m", "lgb_30m"} <= set(store.kinds())
        assert store.latest("lgb_5m").manifest["model"]["symbol"] == symbol
        assert EnsemblePredictor(store.root, record=False).models.symbol == symbol
    refused = runner.invoke(app, ["train", "all", str(tmp_path / "NQ_1min.csv"), "--each", "--symbol", "NQ",
                                  "--config", str(cfg_file)])
    assert refused.exit_code == 2 and "--each" in refused.output
