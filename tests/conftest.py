"""Shared fixtures. ``trained_store``: a model store holding all four kinds (lgb_5m, lgb_30m,
lstm, ppo), trained once per session on synthetic bars with tiny budgets (~15 s on two
shared cores). Reuse it wherever a test needs real stored models; never write into it
(copy it with ``copy_store`` first)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

TINY_OVERRIDES = {
    # The planted edge column is a feature, so the models have something real to learn.
    "data": {"extra_feature_columns": ["edge"]},
    "lgbm": {"n_estimators": 60, "n_folds": 2, "num_leaves": 15, "min_child_samples": 200, "learning_rate": 0.1,
             "feature_fraction": 1.0, "early_stopping_rounds": 20, "num_threads": 1},
    "lstm": {"HIDDEN_SIZE": 8, "NUM_LAYERS": 1, "EPOCHS": 1, "SEQUENCE_LENGTH": 20, "N_FOLDS": 2, "BATCH_SIZE": 256,
             "TORCH_THREADS": 1},
    "ppo": {"total_timesteps": 2048, "n_envs": 8, "n_steps": 64, "batch_size": 256, "n_epochs": 1, "torch_threads": 1},
}


@dataclass
class TrainedStore:
    root: Path  # the model store folder (all four kinds)
    config: object  # the Config they were trained with (paths.model_root = root)
    bars: pd.DataFrame  # the synthetic bars they were trained on (symbol NQ, with `edge`)


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> TrainedStore:
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.lgbm import train_lgbm
    from trademl.models.lstm import train_lstm
    from trademl.models.ppo.train import train_ppo
    from trademl.models.store import ModelStore

    base = tmp_path_factory.mktemp("trained")
    root = base / "models"
    overrides = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    overrides["paths"] = {"model_root": str(root)}
    overrides["ppo"]["checkpoint_dir"] = str(base / "ckpt-ppo")
    cfg = load_config(None, overrides)
    bars = synthetic_bars(20_000, seed=3, edge_ic=0.1, symbol="NQ")
    dataset = dataset_from_bars(bars, cfg)
    train_lgbm(dataset, cfg, store=ModelStore(root))
    train_lstm(dataset, cfg, store_root=root, checkpoint_dir=base / "ckpt-lstm")
    train_ppo(bars, cfg)
    return TrainedStore(root, cfg, bars)


def copy_store(trained: TrainedStore, dest: Path, kinds=None) -> Path:
    """A private copy of the trained store (only ``kinds`` when given) that a test may change."""
    dest = Path(dest) / "models"
    for kind_dir in sorted(p for p in trained.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if kinds is None or kind_dir.name in kinds:
            shutil.copytree(kind_dir, dest / kind_dir.name)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


@pytest.fixture
def store_copy(trained_store, tmp_path):
    """store_copy(kinds=None) -> a fresh private copy of the trained store (a Path)."""
    made = []

    def make(kinds=None) -> Path:
        made.append(None)
        return copy_store(trained_store, tmp_path / f"copy{len(made)}", kinds)

    return make


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(size="64k", name="full") -> a small tmpfs folder to fill (root only: the test is
    skipped with the reason otherwise); every mount is undone after the test."""
    import gc
    import os
    import subprocess

    mounted = []

    def mount(size: str = "64k", name: str = "full") -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None or shutil.which("umount") is None:
            pytest.skip("a full-disk tmpfs needs root and mount/umount")
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    gc.collect()  # a failed writer's file may still be open in a kept traceback
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
