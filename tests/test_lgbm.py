"""LightGBM win models: planted edge found, no edge invented, honest folds, calibration,
ONNX parity, the torch/lightgbm-free runtime, the store under failure, clear errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from trademl.config import Config
from trademl.data.dataset import Dataset, dataset_from_bars
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError, InsufficientDataError, ModelStoreError, SchemaError
from trademl.models import lgbm
from trademl.models.calibration import (
    IsotonicCalibrator,
    auc_with_ci,
    expected_calibration_error,
    reliability_table,
)
from trademl.models.store import ModelStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_config(horizons=(5,), **lgbm_overrides) -> Config:
    """Few, shallow trees and one thread: fast on two shared cores, still able to learn."""
    cfg = Config()
    cfg.data.horizons = list(horizons)
    cfg.data.extra_feature_columns = ["edge"]
    settings = dict(n_estimators=300, num_leaves=7, learning_rate=0.2, min_child_samples=1000,
                    feature_fraction=1.0, early_stopping_rounds=20, n_folds=3, num_threads=1)
    settings.update(lgbm_overrides)
    for key, value in settings.items():
        setattr(cfg.lgbm, key, value)
    return cfg


def build(bars, cfg) -> Dataset:
    return dataset_from_bars(bars, cfg)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One stored lgb_5m on 20k synthetic bars with an edge, shared by the store/ONNX tests."""
    cfg = small_config(min_child_samples=200, num_leaves=15)
    dataset = build(synthetic_bars(20_000, seed=11, edge_ic=0.2), cfg)
    store = ModelStore(tmp_path_factory.mktemp("models"))
    report = lgbm.train_win_model(dataset, 5, cfg, store=store)
    return dataset, cfg, store, report


def oracle_auc(dataset, horizon=5) -> float:
    """AUC of the planted edge itself (side * edge) on both sides: the best any model can do."""
    rows = lgbm.win_rows(dataset, horizon)
    edge = rows.X[:, dataset.feature_names.index("edge")] * rows.X[:, -1]
    return auc_with_ci(edge, rows.y)[0]


# --- what the models learn ---------------------------------------------------------------


def test_planted_edge_is_found_out_of_sample():
    """edge_ic 0.1 at 5 bars: the OOS AUC comes close to the edge's own AUC (~0.545).

    A rank correlation of 0.1 caps the AUC of any predictor of the 5-bar win near 0.545
    (bivariate normal: AUC ~ 0.5 + arcsin(rho)/pi-ish), so the issue's ">= 0.6" cannot hold
    at this strength; the next test shows >= 0.6 where the planted edge allows it.
    """
    cfg = small_config()
    dataset = build(synthetic_bars(100_000, seed=3, edge_ic=0.1), cfg)
    report = lgbm.train_win_model(dataset, 5, cfg)
    oos = report.metrics["out_of_sample"]
    best = oracle_auc(dataset)
    assert 0.53 < best < 0.56
    assert oos["auc"] >= 0.53 and oos["auc"] >= best - 0.015
    assert report.importance[0]["feature"] == "edge"
    assert report.metrics["verdict"]["beats_base_rate"] is True
    assert "beats the base rate" in report.metrics["verdict"]["text"]


def test_strong_edge_gives_auc_above_0_6():
    cfg = small_config()
    dataset = build(synthetic_bars(30_000, seed=4, edge_ic=0.25), cfg)
    oos = lgbm.train_win_model(dataset, 5, cfg).metrics["out_of_sample"]
    assert oos["auc"] >= 0.6
    assert oos["auc_ci"][0] > 0.59


def test_no_edge_invents_nothing_and_calibrates_to_the_base_rate():
    """A random walk traded at zero cost: nothing to learn, and the model says so.

    With costs, a quiet market clears them less often than a busy one, so volatility
    features really do predict the win-after-costs a little (AUC ~0.507, a genuine effect);
    without costs a win is the sign of a driftless walk, which nothing can predict.
    """
    cfg = small_config()
    cfg.costs.commission_per_side, cfg.costs.slippage_ticks = 0.0, 0.0
    dataset = build(synthetic_bars(100_000, seed=5, edge_ic=0.0), cfg)
    report = lgbm.train_win_model(dataset, 5, cfg)
    oos = report.metrics["out_of_sample"]
    assert abs(oos["auc"] - 0.5) <= 0.02
    calibrated = report.calibrator.apply(report.oos_raw)
    base_rate = report.oos_labels.mean()
    assert np.abs(calibrated - base_rate).max() <= 0.02
    assert abs(oos["log_loss"] - oos["base_log_loss"]) < 0.002
    assert report.metrics["verdict"]["beats_base_rate"] is False


def test_random_labels_do_not_beat_the_base_rate():
    """Coin-flip outcomes: whatever the features, the verdict must say no."""
    cfg = small_config()
    dataset = build(synthetic_bars(40_000, seed=6, edge_ic=0.3), cfg)
    rng = np.random.default_rng(0)
    for col in ("win_long_5", "win_short_5"):
        labelled = dataset.frame[col].notna()
        dataset.frame.loc[labelled, col] = (rng.random(int(labelled.sum())) < 0.45).astype(float)
    report = lgbm.train_win_model(dataset, 5, cfg)
    assert report.metrics["verdict"]["beats_base_rate"] is False
    assert "does NOT beat" in report.metrics["verdict"]["text"]


def test_bundled_es_data_trains_with_honest_figures(tmp_path):
    from trademl.data.bars import bundled_sample_path, load_bars

    cfg = small_config(horizons=(5, 30), min_child_samples=100, num_leaves=7)
    cfg.data.extra_feature_columns = []
    dataset = build(load_bars(bundled_sample_path()), cfg)
    store = ModelStore(tmp_path)
    reports = lgbm.train_lgbm(dataset, cfg, store=store)
    assert [r.kind for r in reports] == ["lgb_5m", "lgb_30m"]
    for r in reports:
        oos = r.metrics["out_of_sample"]
        # ES costs ~2.4 points a round trip: few 5-bar trades clear them
        assert oos["rows"] > 10_000 and 0.05 < oos["base_rate"] < 0.6
        assert 0.4 < oos["auc"] < 0.7 and np.isfinite(oos["log_loss"])
        assert r.metrics["verdict"]["text"].split(":")[0] in ("beats the base rate", "does NOT beat the base rate")
        assert len(r.metrics["folds"]) >= 2 and len(r.metrics["reliability"]) == 10
        assert store.latest(r.kind).manifest["metrics"]["verdict"] == r.metrics["verdict"]


# --- honesty of the procedure ------------------------------------------------------------


def test_no_training_row_sees_the_test_block(small_run):
    dataset, cfg, _, _ = small_run
    rows = lgbm.win_rows(dataset, 5)
    names = dataset.feature_names + ["side"]
    for fold in lgbm.walk_forward(rows, 5, cfg.lgbm, names):
        first_test_bar = rows.bar[fold.test_rows].min()
        # a row at bar t uses prices up to bar t + h + 1; the embargo adds h more
        assert fold.last_train_bar + 5 + 1 + 5 < first_test_bar


def test_future_labels_do_not_change_earlier_predictions(small_run):
    """Scramble every label of the last test block: the earlier folds predict exactly as before."""
    dataset, cfg, _, _ = small_run
    rows = lgbm.win_rows(dataset, 5)
    names = dataset.feature_names + ["side"]
    before = lgbm.walk_forward(rows, 5, cfg.lgbm, names)
    last_block = before[-1].test_rows
    rows.y[last_block] = 1.0 - rows.y[last_block]
    after = lgbm.walk_forward(rows, 5, cfg.lgbm, names)
    for a, b in zip(before[:-1], after[:-1]):
        np.testing.assert_array_equal(a.raw, b.raw)


def test_stacked_rows_pair_each_bar_with_both_sides(small_run):
    dataset, _, _, _ = small_run
    rows = lgbm.win_rows(dataset, 5)
    frame = dataset.frame
    assert np.all(rows.X[0::2, -1] == 1) and np.all(rows.X[1::2, -1] == -1)
    np.testing.assert_array_equal(rows.X[0::2, :-1], rows.X[1::2, :-1])
    bar = rows.bar[0::2]
    np.testing.assert_array_equal(rows.y[0::2], frame["win_long_5"].to_numpy()[bar])
    np.testing.assert_array_equal(rows.y[1::2], frame["win_short_5"].to_numpy()[bar])
    assert np.all(np.diff(rows.bar) >= 0)


# --- calibration and scores --------------------------------------------------------------


def test_isotonic_map_is_monotone_and_recovers_a_known_curve():
    rng = np.random.default_rng(1)
    raw = rng.random(200_000)
    truth = 0.2 + 0.5 * raw**2  # true win probability, a monotone curve
    y = (rng.random(raw.size) < truth).astype(float)
    cal = IsotonicCalibrator.fit(raw, y)
    grid = np.linspace(0.05, 0.95, 50)
    assert np.all(np.diff(cal.apply(grid)) >= 0)
    assert np.abs(cal.apply(grid) - (0.2 + 0.5 * grid**2)).max() < 0.03
    again = IsotonicCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.apply(grid), cal.apply(grid))
    assert expected_calibration_error(cal.apply(raw), y) < expected_calibration_error(raw, y)


def test_scores_that_tie_in_blocks_still_give_a_monotone_map():
    """A meta-model with no weight scores every row of a cross-fitted block alike: five tied
    scores (as one fold of the planted market gave them, bit for bit) in bins of 558 and 559
    rows. Each bin's mean of one tied score may then differ from it in the last bit; unrounded,
    the regression saw distinct scores and the map's knots went back and forth (20 of these 30
    label draws), which the store then refused to load."""
    tied = [float.fromhex(h) for h in ("0x1.e578878a7b6a0p-2", "0x1.e5d83bdf33d70p-2", "0x1.e5f5996e9efa7p-2",
                                       "0x1.e6bbe98c5d909p-2", "0x1.e6d94f945eb91p-2")]
    raw = np.repeat(tied, [5584, 5571, 5558, 5642, 5569])
    for seed in range(30):
        y = (np.random.default_rng(seed).random(raw.size) < 0.47).astype(float)
        cal = IsotonicCalibrator.fit(raw, y)
        assert np.all(np.diff(cal.x) > 0) and np.all(np.diff(cal.y) >= 0)
        IsotonicCalibrator.from_dict(cal.to_dict())  # loads
        dollars = IsotonicCalibrator.fit(raw, np.where(y > 0, 400.0, -300.0), probability=False)
        assert np.all(np.diff(dollars.x) > 0) and np.all(np.diff(dollars.y) >= 0)
        assert -300.0 <= min(dollars.y) and 1.0 < max(dollars.y) <= 400.0  # mean dollars (~29), not clipped to [0, 1]


def test_malformed_calibration_map_is_refused():
    with pytest.raises(ModelStoreError, match="monotone"):
        IsotonicCalibrator.from_dict({"x": [0.1, 0.2], "y": [0.6, 0.4]})
    with pytest.raises(ModelStoreError, match="malformed"):
        IsotonicCalibrator.from_dict({"x": [0.1]})


def test_auc_matches_pairwise_count_and_ci_widens_with_clusters():
    rng = np.random.default_rng(2)
    s = np.round(rng.standard_normal(400), 1)  # ties on purpose
    y = (rng.random(400) < 0.4 + 0.1 * (s > 0)).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    auc, lo, hi = auc_with_ci(s, y)
    assert auc == pytest.approx(pairwise, abs=1e-12) and lo < auc < hi
    # every row duplicated 10 times in one cluster: same AUC, but no more evidence
    s10, y10, c10 = np.repeat(s, 10), np.repeat(y, 10), np.repeat(np.arange(400), 10)
    auc10, lo10, hi10 = auc_with_ci(s10, y10, c10)
    assert auc10 == pytest.approx(auc) and (hi10 - lo10) > 0.9 * (hi - lo)
    assert (hi10 - lo10) > 2.5 * (auc_with_ci(s10, y10)[2] - auc_with_ci(s10, y10)[1])


def test_verdict_needs_both_a_separating_auc_and_a_log_loss_gain():
    base = dict(auc=0.55, log_loss=0.68, base_log_loss=0.69, base_rate=0.48, log_loss_gain=0.01)
    both = lgbm.verdict(base | dict(auc_ci=[0.52, 0.58], log_loss_gain_ci=[0.002, 0.018]))
    auc_only = lgbm.verdict(base | dict(auc_ci=[0.52, 0.58], log_loss_gain_ci=[-0.001, 0.021]))
    gain_only = lgbm.verdict(base | dict(auc_ci=[0.49, 0.61], log_loss_gain_ci=[0.002, 0.018]))
    below = lgbm.verdict(base | dict(auc=0.46, auc_ci=[0.43, 0.49], log_loss_gain_ci=[0.002, 0.018]))
    assert both["beats_base_rate"] and both["text"].startswith("beats the base rate")
    assert not auc_only["beats_base_rate"] and "not above 0" in auc_only["text"]
    assert not gain_only["beats_base_rate"] and "includes 0.5" in gain_only["text"]
    assert not below["beats_base_rate"] and "worse than chance" in below["text"]


def test_reliability_table_counts_every_row():
    p = np.linspace(0, 1, 1003)
    table = reliability_table(p, (p > 0.5).astype(float))
    assert len(table) == 10 and sum(r["count"] for r in table) == 1003
    assert table[0]["observed"] == 0 and table[-1]["observed"] == 1


# --- storage, ONNX and the serving runtime -----------------------------------------------


def test_onnx_equals_lightgbm_and_runtime_serves_calibrated_probabilities(small_run):
    import lightgbm as lgb

    from trademl.models.kinds.lgbm import LGBMRuntime

    dataset, _, store, report = small_run
    stored = store.load("lgb_5m", feature_names=dataset.feature_names)
    booster = lgb.Booster(model_file=str(stored.file(lgbm.MODEL_TEXT)))
    rows = lgbm.win_rows(dataset, 5)
    X = rows.X[-3000:]
    assert np.isnan(rows.X).any()  # warm-up NaNs are part of what is compared
    onnx_p = lgbm.onnx_probabilities(stored.file(lgbm.MODEL_ONNX).read_bytes(), rows.X)
    assert np.abs(onnx_p - booster.predict(rows.X)).max() <= 1e-6
    runtime = LGBMRuntime.load(stored)
    assert runtime.feature_names == dataset.feature_names and runtime.horizon == 5
    served = runtime.predict_win(X[:, :-1], X[:, -1].astype(int))
    np.testing.assert_allclose(served, report.calibrator.apply(booster.predict(X)), atol=1e-6)
    assert stored.manifest["metrics"]["onnx_max_abs_diff"] <= 1e-6
    importance = json.loads(stored.file(lgbm.IMPORTANCE_FILE).read_text())
    assert {i["feature"] for i in importance} == set(dataset.feature_names + ["side"])


def test_runtime_imports_neither_lightgbm_nor_torch():
    code = (
        "import sys, trademl.models.kinds.lgbm\n"
        "assert 'lightgbm' not in sys.modules and 'torch' not in sys.modules, "
        "[m for m in ('lightgbm', 'torch') if m in sys.modules]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_refuses_bad_input(small_run):
    from trademl.models.kinds.lgbm import LGBMRuntime

    dataset, _, store, _ = small_run
    runtime = LGBMRuntime.load(store.latest("lgb_5m"))
    with pytest.raises(DataError, match="shape"):
        runtime.predict_win(np.zeros((2, 3), np.float32), 1)
    with pytest.raises(DataError, match="side"):
        runtime.predict_win(np.zeros((2, len(dataset.feature_names)), np.float32), 0)


def test_corrupted_file_and_other_schema_are_clear_errors(small_run, tmp_path):
    import shutil

    dataset, _, store, _ = small_run
    copy = ModelStore(tmp_path / "copy")
    shutil.copytree(store.root, copy.root)
    with pytest.raises(SchemaError, match="missing \\['edge'\\]"):
        copy.load("lgb_5m", feature_names=dataset.feature_names[:-1])
    onnx_file = copy.latest("lgb_5m").file(lgbm.MODEL_ONNX)
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="model.onnx.*checksum"):
        copy.load("lgb_5m")


def test_exception_inside_training_leaves_no_model(tmp_path, monkeypatch, small_run):
    dataset, cfg, _, _ = small_run
    store = ModelStore(tmp_path)

    def fail(*_):
        raise RuntimeError("power cut")

    monkeypatch.setattr(lgbm, "_write_json", fail)  # model.txt and model.onnx are already written
    with pytest.raises(RuntimeError, match="power cut"):
        lgbm.train_win_model(dataset, 5, cfg, store=store)
    assert store.latest("lgb_5m") is None
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_process_killed_mid_write_leaves_nothing_latest_could_pick(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from trademl.config import Config
        from trademl.data.dataset import dataset_from_bars
        from trademl.data.synthetic import synthetic_bars
        from trademl.models import lgbm
        from trademl.models.store import ModelStore
        cfg = Config()
        cfg.data.horizons = [5]
        cfg.lgbm.n_estimators, cfg.lgbm.num_threads, cfg.lgbm.min_rows = 20, 1, 100
        dataset = dataset_from_bars(synthetic_bars(8000, seed=1, edge_ic=0.2), cfg)
        def killed(*_):  # SIGKILL: no finally block, no cleanup runs
            os.kill(os.getpid(), signal.SIGKILL)
        lgbm._write_json = killed
        lgbm.train_win_model(dataset, 5, cfg, store=ModelStore({str(tmp_path)!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-lgb_5m")]
    assert leftovers and (leftovers[0] / lgbm.MODEL_TEXT).exists()  # it really died mid-write
    store = ModelStore(tmp_path)
    assert store.versions("lgb_5m") == [] and store.latest("lgb_5m") is None
    assert store.kinds() == []


# --- clear errors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset():
    cfg = small_config()
    return build(synthetic_bars(3000, seed=8, edge_ic=0.1), cfg), cfg


def test_too_few_rows_says_how_many(tiny_dataset):
    dataset, cfg = tiny_dataset
    cfg = cfg.model_copy(deep=True)
    cfg.lgbm.min_rows = 10_000
    with pytest.raises(InsufficientDataError, match=r"at least 10000 labelled rows.*has 59\d\d"):
        lgbm.train_win_model(dataset, 5, cfg)


def test_one_class_only_is_refused(tiny_dataset):
    dataset, cfg = tiny_dataset
    frame = dataset.frame.copy()
    for col in ("win_long_5", "win_short_5"):
        frame[col] = np.where(frame[col].notna(), 0.0, np.nan)
    with pytest.raises(InsufficientDataError, match="one class only"):
        lgbm.train_win_model(Dataset(frame, dataset.manifest), 5, cfg)


def test_all_nan_feature_is_named(tiny_dataset):
    dataset, cfg = tiny_dataset
    frame = dataset.frame.copy()
    frame["edge"] = np.nan
    with pytest.raises(DataError, match=r"features \['edge'\] are NaN on every labelled row"):
        lgbm.train_win_model(Dataset(frame, dataset.manifest), 5, cfg)


def test_dataset_with_another_feature_schema_is_refused(tiny_dataset):
    from trademl.data.features.schema import FeatureSchema

    dataset, cfg = tiny_dataset
    # a model family already serving on a schema without 'edge'
    serving = FeatureSchema.for_names(dataset.feature_names[:-1])
    with pytest.raises(SchemaError, match=r"extra \['edge'\]"):
        lgbm.train_win_model(dataset, 5, cfg, expected_schema=serving.to_dict())
    # a dataset whose manifest was built by another feature library version
    manifest = json.loads(json.dumps(dataset.manifest))
    manifest["feature_schema"]["version"] += 1
    manifest["feature_schema"].pop("hash")
    with pytest.raises(SchemaError, match="feature version"):
        lgbm.train_win_model(Dataset(dataset.frame, manifest), 5, cfg)
    # a frame that lost a column its manifest names
    with pytest.raises(SchemaError, match=r"lacks features \['rsi'\]"):
        lgbm.train_win_model(Dataset(dataset.frame.drop(columns="rsi"), dataset.manifest), 5, cfg)


def test_missing_horizon_labels_are_named(tiny_dataset):
    dataset, cfg = tiny_dataset
    with pytest.raises(DataError, match=r"win_long_30"):
        lgbm.train_win_model(dataset, 30, cfg)


# --- the decision log --------------------------------------------------------------------


def test_trains_from_the_decision_log(tiny_dataset):
    dataset, cfg = tiny_dataset
    cfg = cfg.model_copy(deep=True)
    cfg.lgbm.min_rows, cfg.lgbm.min_child_samples, cfg.lgbm.n_folds = 200, 20, 2
    frame = dataset.frame
    rng = np.random.default_rng(3)
    bar = np.sort(rng.choice(np.flatnonzero(frame["win_long_5"].notna().to_numpy()), 1500, replace=False))
    side = np.where(frame["edge"].to_numpy()[bar] > 0, 1, -1)  # a bot that follows the edge
    win = np.where(side > 0, frame["win_long_5"].to_numpy()[bar], frame["win_short_5"].to_numpy()[bar])
    pnl = np.where(win > 0, 25.0, -25.0)
    pnl[::3] = np.nan  # no outcome logged: the bar label stands in
    decisions = pd.DataFrame({
        "timestamp": frame.index[bar], "side": side.astype(np.int8), "bar_index": bar,
        "pnl": pnl, "win_5": win, "win": np.where(np.isfinite(pnl), pnl > 0, win).astype(float),
        "label_source": np.where(np.isfinite(pnl), "outcome", "bars"),
    })
    rows = lgbm.win_rows(Dataset(frame, dataset.manifest, decisions), 5)
    assert rows.source == "decisions" and len(rows.y) == 1500
    np.testing.assert_array_equal(rows.X[:, -1], side)
    np.testing.assert_array_equal(rows.y, win)
    report = lgbm.train_win_model(Dataset(frame, dataset.manifest, decisions), 5, cfg)
    assert report.metrics["rows_source"] == "decisions"
    assert report.metrics["out_of_sample"]["rows"] < 1500
    bars_only = lgbm.win_rows(Dataset(frame, dataset.manifest, decisions), 5, source="bars")
    assert bars_only.source == "bars"


# --- the command --------------------------------------------------------------------------


def test_cli_train_lgbm_and_models_list(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trademl.cli import app
    from trademl.data.bars import bundled_sample_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trademl.toml").write_text(
        '[lgbm]\nn_estimators = 40\nnum_leaves = 7\nmin_child_samples = 100\nnum_threads = 1\n'
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\n'
    )
    runner = CliRunner()
    wide = {"COLUMNS": "250"}  # one table row per line
    result = runner.invoke(app, ["train", "lgbm", str(bundled_sample_path())], env=wide)
    assert result.exit_code == 0, result.output
    assert "lgb_5m" in result.output and "lgb_30m" in result.output and "OOS" in result.output
    assert "base rate" in result.output
    # Both kinds stored once each, trained with trademl.toml's settings, with the printed figures.
    store = ModelStore(tmp_path / "models")
    assert {k: len(store.versions(k)) for k in ("lgb_5m", "lgb_30m")} == {"lgb_5m": 1, "lgb_30m": 1}
    for kind in ("lgb_5m", "lgb_30m"):
        stored = store.latest(kind)
        settings = stored.manifest["config"]["lgbm"]
        assert (settings["n_estimators"], settings["num_leaves"], settings["min_child_samples"]) == (40, 7, 100)
        m = stored.manifest["metrics"]
        assert m["horizon"] == int(kind[4:-1]) and 1 <= m["final_iterations"] <= 40
        assert all(1 <= f["best_iteration"] <= 40 for f in m["folds"])
        assert stored.manifest["training_span"]["dataset"] == str(bundled_sample_path())
    assert_lgbm_tables_match_the_store(result.output, store)

    listed = runner.invoke(app, ["models", "list"], env=wide)
    assert listed.exit_code == 0 and listed.output.count("lgb_") >= 2
    rows = table_rows(listed.output)
    assert sorted(r[:2] for r in rows) == sorted([k, store.latest(k).version] for k in ("lgb_5m", "lgb_30m"))
    for kind, version, created, trained_on, schema, headline in rows:
        manifest = store.latest(kind).manifest
        span, oos = manifest["training_span"], manifest["metrics"]["out_of_sample"]
        assert created == manifest["created_at"][:19]
        assert trained_on == f"{span['start'][:10]}..{span['end'][:10]}, {span['rows']} rows"
        assert schema == f"{len(manifest['feature_schema']['names'])} feat {manifest['feature_schema']['hash'][:8]}"
        # The headline: its out-of-sample AUC and log-loss, and whether it beats the base rate.
        assert f"auc {oos['auc']:.3f}" in headline and f"log_loss {oos['log_loss']:.3f}" in headline, headline
        beats = manifest["metrics"]["verdict"]["beats_base_rate"]
        assert "base rate" in headline and ("not " in headline) == (not beats), headline
    missing = runner.invoke(app, ["train", "lgbm", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "no such dataset" in missing.output
    assert {k: len(store.versions(k)) for k in ("lgb_5m", "lgb_30m")} == {"lgb_5m": 1, "lgb_30m": 1}


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table printed with vertical rules, cells stripped."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]


def assert_lgbm_tables_match_the_store(output: str, store: ModelStore, kinds=("lgb_5m", "lgb_30m")) -> None:
    """The table `trademl train lgbm` prints for each kind holds the latest stored model's
    manifest figures: one row per fold, then the out-of-sample row; then its verdict and path."""
    for kind in kinds:
        stored = store.latest(kind)
        m = stored.manifest["metrics"]
        block = output[output.index(f"{kind}: win probability at {m['horizon']} bars"):]
        block = block[:block.index("stored: ")] + block[block.index("stored: "):].splitlines()[0]
        printed = {line.split()[0]: line.split()[-7:] for line in block.splitlines()
                   if line.split() and (line.split()[0] == "OOS" or line.split()[0].isdigit())}

        def cells(d: dict, rows: int, trees: int) -> list[str]:
            return [f"{rows:,}", str(trees), f"{d['auc']:.3f}", f"{d['log_loss']:.4f}/{d['base_log_loss']:.4f}",
                    f"{d['brier']:.4f}/{d['base_brier']:.4f}", f"{d['ece']:.3f}", f"{d['base_rate']:.3f}"]

        expected = {str(f["fold"]): cells(f, f["rows"], f["best_iteration"]) for f in m["folds"]}
        expected["OOS"] = cells(m["out_of_sample"], m["out_of_sample"]["rows"], m["final_iterations"])
        assert printed == expected, kind
        assert f"{kind} {m['verdict']['text']}" in " ".join(block.split())
        assert block.splitlines()[-1].strip() == f"stored: {stored.path}"


def test_stored_model_carries_its_training_feature_distribution(tmp_path):
    """The monitor's drift check reads `feature_reference` from the manifest."""
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.lgbm import train_lgbm
    from trademl.models.store import ModelStore

    cfg = load_config(overrides={"lgbm": {"n_estimators": 20, "n_folds": 2, "min_rows": 100}})
    ds = dataset_from_bars(synthetic_bars(12_000, seed=5), cfg)
    store = ModelStore(tmp_path)
    train_lgbm(ds, cfg, store=store, horizons=[5])
    ref = store.latest("lgb_5m").manifest["feature_reference"]
    assert set(ref["features"]) == set(ds.feature_names)
    rsi = ref["features"]["rsi"]
    assert abs(sum(rsi["proportions"]) - 1) < 1e-9 and len(rsi["edges"]) >= 5


def test_float32_thresholds_make_onnx_agree_at_every_split_edge():
    """Inputs placed on the float32 neighbours of every split threshold take the same branch
    in LightGBM and in ONNX Runtime (nearest rounding of the thresholds alone does not)."""
    import lightgbm as lgb

    from trademl.models.lgbm import export_onnx, float32_exact, onnx_probabilities

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((4000, 3)) * 1e-3 + 1.0).astype(np.float32)  # dense float32 grid near 1.0
    y = (X[:, 0] + rng.standard_normal(4000) * 1e-3 > 1.0).astype(int)
    raw = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "min_data_in_leaf": 5},
                    lgb.Dataset(X, y), 30)
    exact = float32_exact(raw)
    thresholds = np.array([float(v) for line in exact.model_to_string().splitlines()
                           if line.startswith("threshold=") for v in line.split("=", 1)[1].split()])
    assert (thresholds.astype(np.float32).astype(np.float64) == thresholds).all()
    # probe rows: each feature at a threshold and its float32 neighbours
    edges = np.unique(thresholds.astype(np.float32))
    probes = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf))])
    P = np.repeat(probes[:, None], 3, axis=1).astype(np.float32)
    np.testing.assert_array_equal(exact.predict(P), raw.predict(P))  # flooring changes no float32 prediction
    assert np.max(np.abs(onnx_probabilities(export_onnx(exact, 3), P) - exact.predict(P))) < 1e-6
