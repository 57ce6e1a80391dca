"""The ensemble predictor: the vote, inputs from bars vs features, skipped models, hot reload,
the prediction log, and a predict path free of torch and lightgbm."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from malformed_requests import GUIDE_EXAMPLE
from trademl.market.actions import BUY, HOLD, SELL
from trademl.models.base import class_vote
from trademl.models.kinds.lgbm import lgbm_vote
from trademl.predict.decision import choose_weights, decide
from trademl.predict.ensemble import EnsemblePredictor
from trademl.predict.request import RequestError


# --- the vote (known answers) ------------------------------------------------------------


def test_lgbm_vote_is_the_three_exclusive_outcomes():
    v = lgbm_vote([0.8, 0.3, 0.15, 0.7, 0.6], [0.1, 0.6, 0.12, 0.5, 0.4])
    np.testing.assert_allclose(v[0], [0.1, 0.8, 0.1])  # neither side clears costs: 1 - 0.8 - 0.1
    np.testing.assert_allclose(v[1], [0.1, 0.3, 0.6])
    np.testing.assert_allclose(v[2], [0.73, 0.15, 0.12])  # ES-like: costs rarely cleared -> HOLD
    np.testing.assert_allclose(v[3], [0.0, 0.7 / 1.2, 0.5 / 1.2])  # calibration noise: sides rescaled
    # a 60/40 directional lean is a BUY vote (independent sides would have made it HOLD: 0.48 vs 0.36)
    assert np.argmax(v[4]) == BUY
    np.testing.assert_allclose(v.sum(axis=1), 1.0)


def test_weighted_argmax_confidence_and_agreement():
    votes = {
        "a": np.array([[0.2, 0.7, 0.1]]),  # BUY
        "b": np.array([[0.1, 0.3, 0.6]]),  # SELL
        "c": np.array([[0.3, 0.5, 0.2]]),  # BUY
    }
    c = decide(votes, {"a": 2.0, "b": 1.0, "c": 1.0})
    p = (2 * np.array([0.2, 0.7, 0.1]) + [0.1, 0.3, 0.6] + [0.3, 0.5, 0.2]) / 4
    np.testing.assert_allclose(c.probabilities[0], p)
    assert c.action[0] == BUY and c.recommendation[0] == "BUY"
    np.testing.assert_allclose(c.agreement[0], 3 / 4)  # a and c (weight 3 of 4) agree with BUY
    np.testing.assert_allclose(c.confidence[0], p[BUY] * 3 / 4)


def test_ties_go_to_hold_and_weights_matter():
    tie = {"a": np.array([[0.0, 0.5, 0.5]]), "b": np.array([[0.5, 0.5, 0.0]])}
    assert decide(tie, {"a": 1, "b": 1}).action[0] == BUY  # 0.25 / 0.5 / 0.25
    flat = {"a": np.array([[1 / 3, 1 / 3, 1 / 3]])}
    assert decide(flat, {"a": 1}).action[0] == HOLD
    split = {"a": np.array([[0.1, 0.8, 0.1]]), "b": np.array([[0.1, 0.1, 0.8]])}
    assert decide(split, {"a": 1, "b": 3}).action[0] == SELL
    assert decide(split, {"a": 3, "b": 1}).action[0] == BUY


def test_batch_rows_with_missing_models_equal_single_rows():
    rng = np.random.default_rng(0)
    raw = {m: rng.dirichlet([1, 1, 1], size=50) for m in ("a", "b", "c")}
    raw["b"][::3] = np.nan  # model b has no output on every third row
    weights = {"a": 0.5, "b": 1.0, "c": 0.2}
    batch = decide(raw, weights)
    for i in range(50):
        present = {m: v[i] for m, v in raw.items() if np.isfinite(v[i]).all()}
        one = decide(present, weights)
        assert one.action[0] == batch.action[i]
        np.testing.assert_allclose(one.confidence[0], batch.confidence[i])
    nobody = decide({"a": np.full((2, 3), np.nan)}, {"a": 1.0})
    assert not nobody.voted.any() and (nobody.confidence == 0).all()


def test_class_vote_reorders_nothing_and_renormalises():
    v = class_vote([0.2], [0.5], [0.31])
    np.testing.assert_allclose(v[0], np.array([0.2, 0.5, 0.31]) / 1.01)


# --- weights -----------------------------------------------------------------------------


def test_weights_from_config_skill_or_equal_with_warning():
    from trademl.models.base import known_kinds, validation_skill
    from trademl.models.lgbm import win_skill
    from trademl.models.lstm import lstm_skill
    from trademl.models.ppo.train import ppo_skill

    def stored(record):  # what each kind's manifest holds: metrics["validation_skill"], one shape
        return {"validation_skill": record}

    def held_out(psr):  # the PPO trainer's held-out Sharpe record
        if psr is None:
            return {"held_out_sharpe": {"sessions": 1, "sharpe": None, "psr": None, "interval": None}}
        return {"held_out_sharpe": {"sessions": 40, "sharpe": 0.05, "psr": psr, "interval": [-0.1, 0.2],
                                    "standard_error": 0.08}}

    metrics = {"lgb_5m": stored(win_skill({"auc": 0.6, "auc_ci": [0.55, 0.65]})),
               "lstm": stored(lstm_skill({"accuracy": 0.55, "majority_accuracy": 0.5, "n_test": 100})),
               "ppo": stored(ppo_skill(held_out(0.7)))}  # 2 PSR - 1
    weights, note = choose_weights(None, metrics)
    assert note is None
    np.testing.assert_allclose([weights["lgb_5m"], weights["lstm"], weights["ppo"]], [0.2, 0.1, 0.4])
    assert metrics["lgb_5m"]["validation_skill"]["interval"] == pytest.approx([0.1, 0.3])
    weights, note = choose_weights({"lstm": 2.0}, metrics)
    assert weights == {"lgb_5m": 0.0, "lstm": 2.0, "ppo": 0.0} and note is None
    no_sharpe = stored(ppo_skill(held_out(None)))  # a held-out span too short to judge
    weights, note = choose_weights(None, {**metrics, "ppo": no_sharpe})
    assert set(weights.values()) == {1.0} and "ppo" in note
    weights, note = choose_weights(None, {"lgb_5m": stored(win_skill({"auc": 0.49, "auc_ci": [0.45, 0.53]})),
                                          "ppo": stored(ppo_skill(held_out(0.3)))})
    assert set(weights.values()) == {1.0} and "no model beat its baseline" in note
    assert validation_skill(stored(ppo_skill(held_out(0.1)))) == 0.0  # likelier below flat than above
    assert validation_skill({"out_of_sample": {"auc": 0.7}}) is None  # an older manifest: no stored skill
    with pytest.raises(Exception, match="unknown model kinds"):
        choose_weights({"xgb": 1.0}, metrics, known_kinds())


# --- the predictor on the trained store ---------------------------------------------------


@pytest.fixture(scope="module")
def predictor(trained_store):
    return EnsemblePredictor(trained_store.root, trained_store.config, record=False)


def bars_payload(bars) -> list[dict]:
    cols = [c for c in ("open", "high", "low", "close", "volume", "edge") if c in bars.columns]
    return [{"timestamp": t.isoformat(), **{c: float(v) for c, v in zip(cols, row)}}
            for t, row in zip(bars.index, bars[cols].to_numpy())]


def _documented_skill(kind: str, metrics: dict) -> float | None:
    """A model's validation skill as README "How the ensemble decides" states it, from its
    manifest's metrics (a stored ``validation_skill`` first): lgb_* 2 AUC - 1; lstm the accuracy
    gain over the majority class; ppo the held-out share of the oracle's P&L (0 if it lost)."""
    if metrics.get("validation_skill") is not None:
        return metrics["validation_skill"]["value"]
    if kind.startswith("lgb_"):
        return max(0.0, 2.0 * float(metrics["out_of_sample"]["auc"]) - 1.0)
    if kind == "lstm":
        acc, maj = float(metrics["cv"]["accuracy"]), float(metrics["cv"]["majority_accuracy"])
        return max(0.0, (acc - maj) / (1.0 - maj)) if maj < 1 else 0.0
    if metrics.get("pnl_vs_oracle") is not None:
        return min(1.0, max(0.0, float(metrics["pnl_vs_oracle"])))
    return 0.0 if float(metrics["net_pnl"]) <= 0 else None


def test_guide_example_is_a_valid_prediction(predictor, trained_store):
    """The guide's example (4 features, no sequence) gives exactly what the stored LightGBM
    models say about that row (NaN for the features it does not send), combined by the
    documented vote (README "How the ensemble decides"), written out here rather than imported;
    the LSTM and the PPO agent are skipped, each with a warning saying why."""
    from trademl.models.store import ModelStore
    from trademl.models.kinds.lgbm import LGBMRuntime

    out = predictor.ensemble_predict(dict(GUIDE_EXAMPLE))
    assert out["models_used"] == ["lgb_5m", "lgb_30m"]
    assert 0 <= out["win_5m_prob"] <= 1 and 0 <= out["win_30m_prob"] <= 1
    assert out["ensemble_recommendation"] in ("BUY", "SELL", "HOLD")
    assert any("features missing" in w for w in out["warnings"])

    store = ModelStore(trained_store.root)
    stored = {k: store.load(k) for k in ("lgb_5m", "lgb_30m", "lstm", "ppo")}
    names = stored["lgb_5m"].feature_names
    row = np.full(len(names), np.nan, dtype=np.float32)
    for name, value in GUIDE_EXAMPLE["features"].items():
        row[names.index(name)] = value
    win = {}  # kind -> (p_long, p_short) of this row
    for kind in ("lgb_5m", "lgb_30m"):
        rt = LGBMRuntime.load(stored[kind])
        win[kind] = tuple(float(rt.predict_win(row[None], side)[0]) for side in (1, -1))
    # The request sends no side: the win fields are about a long.
    assert out["win_5m_prob"] == pytest.approx(win["lgb_5m"][0], abs=1e-9)
    assert out["win_30m_prob"] == pytest.approx(win["lgb_30m"][0], abs=1e-9)
    assert out["timestamp"] == "2024-01-01T12:00:00Z"
    assert out["model_versions"] == {k: store.latest(k).version for k in ("lgb_5m", "lgb_30m")}
    # Absent: every LSTM and PPO field; each skipped with a warning naming the missing sequence.
    assert set(out) == {"timestamp", "models_used", "win_5m_prob", "win_30m_prob", "ensemble_recommendation",
                        "confidence_score", "warnings", "model_versions", "votes", "novelty"}
    # 4 of 39 features sent: the others sit at the training centre, so the row is not novel
    assert out["novelty"]["novel"] is False
    # This store has no stacker (each kind trained alone): the vote decides, and says it is no probability.
    assert any("no stacker in the store" in w and "not a calibrated probability" in w for w in out["warnings"])
    for kind in ("lstm", "ppo"):
        skipped = [w for w in out["warnings"] if w.startswith(f"{kind} skipped")]
        assert len(skipped) == 1 and "sequence" in skipped[0], out["warnings"]
    assert any(f"{len(names) - 4} of {len(names)} features missing" in w for w in out["warnings"]), out["warnings"]

    # The vote of each LightGBM model: buy = p_long, sell = p_short, hold = 1 - both (>= 0), normalised.
    votes = {}
    for kind, (p_long, p_short) in win.items():
        v = np.array([max(0.0, 1.0 - p_long - p_short), p_long, p_short])
        votes[kind] = v / v.sum()
        assert [out["votes"][kind][k] for k in ("hold", "buy", "sell")] == pytest.approx(votes[kind], abs=1e-12)
    # The weights: [ensemble] weights if set, else each loaded model's validation skill; equal
    # weights when a skill is unknown or none is above 0.
    configured = trained_store.config.ensemble.weights
    if configured:
        weights = {k: float(configured.get(k, 0.0)) for k in stored}
    else:
        skills = {k: _documented_skill(k, s.manifest["metrics"]) for k, s in stored.items()}
        equal = any(s is None for s in skills.values()) or not any(s > 0 for s in skills.values())
        weights = {k: 1.0 if equal else s for k, s in skills.items()}
        assert any(w.startswith("equal ensemble weights") for w in out["warnings"]) == equal, out["warnings"]
    w = {k: weights[k] for k in votes}
    if sum(w.values()) == 0:  # only weight-0 models ran: equal weights among them, and a warning says so
        w = {k: 1.0 for k in votes}
        assert any("weight 0" in x for x in out["warnings"]), out["warnings"]
    total = sum(w.values())
    p = sum(w[k] * votes[k] for k in votes) / total
    winner = int(np.argmax(p))  # the first maximum: ties go to HOLD, then BUY
    agreement = sum(w[k] for k in votes if int(np.argmax(votes[k])) == winner) / total
    assert out["ensemble_recommendation"] == ("HOLD", "BUY", "SELL")[winner]
    assert out["confidence_score"] == pytest.approx(p[winner] * agreement, abs=1e-9)


def test_raw_bars_and_precomputed_features_give_identical_outputs(predictor, trained_store):
    from trademl.data.features import compute_features

    bars = trained_store.bars.iloc[5_000:5_300]
    from_bars = predictor.ensemble_predict({"symbol": "NQZ5", "bars": bars_payload(bars), "position": 1,
                                            "recent_actions": [0, 1, 1]})
    assert from_bars["models_used"] == ["lgb_5m", "lgb_30m", "lstm", "ppo"], from_bars["warnings"]
    feats = compute_features(bars, symbol="NQ", extra_columns=("edge",))[predictor.models.feature_names]
    from_features = predictor.ensemble_predict({
        "symbol": "NQZ5", "timestamp": from_bars["timestamp"], "position": 1, "recent_actions": [0, 1, 1],
        "features": dict(zip(feats.columns, map(float, feats.iloc[-1]))),
        "sequence": feats.iloc[-predictor.models.history:].to_numpy().tolist(),
    })
    assert from_features == from_bars
    as_array = predictor.ensemble_predict({
        "symbol": "NQZ5", "timestamp": from_bars["timestamp"], "position": 1, "recent_actions": [0, 1, 1],
        "features": [float(v) for v in feats.iloc[-1]],
        "sequence": [dict(zip(feats.columns, map(float, r))) for r in feats.iloc[-30:].to_numpy()],
    })
    assert as_array == from_bars


def test_serving_row_equals_the_training_row_and_ignores_the_future(trained_store):
    """What the predictor computes from the last bars is the dataset's row at that bar (no drift),
    and bars after t never reach it (no look-ahead: the request only holds bars up to t)."""
    from trademl.data.features import compute_features, required_history
    from trademl.predict.features_online import features_from_bars
    from trademl.predict.schema import Bar

    bars = trained_store.bars
    full = compute_features(bars, symbol="NQ", extra_columns=("edge",))
    names = list(full.columns)
    n = required_history([c for c in names if c != "edge"]) + 40
    for t in (3_000, 11_111, 19_000):
        window = [Bar.model_validate(b) for b in bars_payload(bars.iloc[t - n + 1:t + 1])]
        online = features_from_bars(window, symbol="NQ", feature_names=names, max_gap_minutes=15)
        np.testing.assert_allclose(online.matrix[-1], full.iloc[t].to_numpy(), rtol=1e-5, atol=1e-5)


def test_side_selects_the_long_or_short_win_probability(predictor, trained_store):
    seq = np.zeros((predictor.models.history, len(predictor.models.feature_names)))
    base = {"symbol": "NQ", "features": [0.0] * len(predictor.models.feature_names), "sequence": seq.tolist()}
    long_ = predictor.ensemble_predict(dict(base))
    short = predictor.ensemble_predict(dict(base, side="short"))
    rt = predictor.models.runtimes["lgb_5m"]
    row = np.zeros((1, len(predictor.models.feature_names)), np.float32)
    assert long_["win_5m_prob"] == pytest.approx(float(rt.predict_win(row, 1)[0]))
    assert short["win_5m_prob"] == pytest.approx(float(rt.predict_win(row, -1)[0]))
    # The side is what the caller asks about; the vote itself always weighs both sides.
    assert long_["ensemble_recommendation"] == short["ensemble_recommendation"]


def test_a_missing_model_is_skipped_and_named(store_copy, trained_store):
    root = store_copy(kinds={"lgb_5m", "ppo"})
    p = EnsemblePredictor(root, trained_store.config, record=False)
    seq = np.zeros((30, len(p.models.feature_names))).tolist()
    out = p.ensemble_predict({"symbol": "NQ", "sequence": seq})
    assert out["models_used"] == ["lgb_5m", "ppo"]
    assert any(w.startswith("lgb_30m skipped: no trained lgb_30m") for w in out["warnings"])
    assert any(w.startswith("lstm skipped") for w in out["warnings"])
    assert "lstm_buy_prob" not in out and "win_30m_prob" not in out


def test_too_few_bars_skips_the_sequence_models_with_the_reason(predictor, trained_store):
    out = predictor.ensemble_predict({"symbol": "NQ", "bars": bars_payload(trained_store.bars.iloc[1000:1070])})
    assert "lgb_5m" in out["models_used"]
    assert "lstm" not in out["models_used"]
    assert any("lstm skipped" in w and "send more bars" in w for w in out["warnings"])


def test_nothing_runnable_is_an_error_not_a_hold(predictor, trained_store):
    with pytest.raises(RequestError, match="no model could run") as e:
        predictor.ensemble_predict({"symbol": "NQ", "features": {"rsi": None, "close": None}})
    assert e.value.kind == "insufficient_input"
    out = predictor.ensemble_predict({"symbol": "NQ", "bars": bars_payload(trained_store.bars.iloc[1000:1003])})
    assert any("still warming up" in w for w in out["warnings"])


def test_hot_reload_swaps_in_a_newer_latest_without_failing_requests(store_copy, trained_store):
    from trademl.models.store import ModelStore

    root = store_copy()
    p = EnsemblePredictor(root, trained_store.config, record=False, reload_interval_s=0.0)
    request = dict(GUIDE_EXAMPLE)
    old = p.ensemble_predict(request)["model_versions"]["lgb_5m"]
    store = ModelStore(root)
    current = store.load("lgb_5m")
    errors, done = [], threading.Event()

    def hammer():
        while not done.is_set():
            try:
                p.ensemble_predict(request)
            except Exception as e:  # any failure during the swap is the bug this test is for
                errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    keep = {k: v for k, v in current.manifest.items() if k not in ("kind", "version", "created_at", "files", "library_versions")}
    with store.writer("lgb_5m", **keep) as w:
        for name in current.manifest["files"]:
            shutil.copyfile(current.path / name, w.path / name)
    new = w.stored.version
    deadline = time.monotonic() + 30  # the swap happens in a background loader thread
    while p.ensemble_predict(request)["model_versions"]["lgb_5m"] != new and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert p.ensemble_predict(request)["model_versions"]["lgb_5m"] == new != old


def test_a_corrupted_new_version_keeps_the_old_one_serving(store_copy, trained_store):
    from trademl.models.store import ModelStore

    root = store_copy()
    p = EnsemblePredictor(root, trained_store.config, record=False, reload_interval_s=0.0)
    store = ModelStore(root)
    current = store.load("lgb_30m")
    keep = {k: v for k, v in current.manifest.items() if k not in ("kind", "version", "created_at", "files", "library_versions")}
    with store.writer("lgb_30m", **keep) as w:
        for name in current.manifest["files"]:
            shutil.copyfile(current.path / name, w.path / name)
    (w.stored.path / "model.onnx").write_bytes(b"garbage")
    assert p.maybe_reload(force=True, wait=True)
    out = p.ensemble_predict(dict(GUIDE_EXAMPLE))
    assert out["model_versions"]["lgb_30m"] == current.version
    assert "checksum" in p.models.load_errors["lgb_30m"]


def test_predictions_are_logged_with_the_guides_line(trained_store, tmp_path):
    p = EnsemblePredictor(trained_store.root, trained_store.config, log_dir=tmp_path / "logs")
    outs = [p.ensemble_predict(dict(GUIDE_EXAMPLE, position=k)) for k in (0, 1)]
    lines = (tmp_path / "logs" / "predictions.log").read_text().splitlines()
    assert len(lines) == 2
    for line, out in zip(lines, outs):
        assert line.split(" - ", 1)[1] == f"Prediction: {out['ensemble_recommendation']}, Confidence: {out['confidence_score']:.2%}"


def test_prediction_log_sqlite_gets_digest_output_versions_latency(trained_store, tmp_path):
    pytest.importorskip("trademl.predict.log", reason="the prediction log (issue 8) has not landed")
    import sqlite3

    p = EnsemblePredictor(trained_store.root, trained_store.config, log_dir=tmp_path / "logs")
    p.ensemble_predict(dict(GUIDE_EXAMPLE))
    p.ensemble_predict(dict(GUIDE_EXAMPLE))
    with sqlite3.connect(tmp_path / "logs" / "predictions.sqlite") as db:
        text = json.dumps(db.execute("SELECT * FROM predictions").fetchall())
    assert text.count("lgb_5m") >= 2


def test_predict_path_imports_neither_torch_nor_lightgbm(trained_store):
    code = (
        "import sys, json\n"
        "from trademl.predict.ensemble import EnsemblePredictor\n"
        f"p = EnsemblePredictor({str(trained_store.root)!r}, record=False)\n"
        "seq = [[0.0] * len(p.models.feature_names)] * 30\n"
        "out = p.ensemble_predict({'symbol': 'NQ', 'sequence': seq})\n"
        "assert out['models_used'] == ['lgb_5m', 'lgb_30m', 'lstm', 'ppo'], out\n"
        "heavy = [m for m in ('torch', 'lightgbm', 'pandas', 'stable_baselines3', 'sklearn') if m in sys.modules]\n"
        "print(json.dumps(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_models_with_zero_weight_still_answer_with_a_warning(trained_store, tmp_path):
    from trademl.config import load_config

    cfg = load_config(None, {"paths": {"model_root": str(trained_store.root)}, "ensemble": {"weights": {"lstm": 1.0}}})
    p = EnsemblePredictor(trained_store.root, cfg, record=False)
    out = p.ensemble_predict(dict(GUIDE_EXAMPLE))  # only the LightGBM models can run; their weight is 0
    assert out["models_used"] == ["lgb_5m", "lgb_30m"]
    assert any("all have weight 0; equal weights among them" in w for w in out["warnings"])
    seq = np.zeros((30, len(p.models.feature_names))).tolist()
    both = p.ensemble_predict({"symbol": "NQ", "sequence": seq})
    lstm_only = np.argmax([both["lstm_hold_prob"], both["lstm_buy_prob"], both["lstm_sell_prob"]])
    assert both["ensemble_recommendation"] == ("HOLD", "BUY", "SELL")[lstm_only]  # only the LSTM weighs


def test_the_guides_python_call_with_numpy_arrays(predictor):
    """The guide's market_data: 'features': feature_array, 'sequence': historical_sequence (numpy)."""
    width = len(predictor.models.feature_names)
    rng = np.random.default_rng(1)
    sequence = rng.normal(size=(predictor.models.history, width)).astype(np.float32)
    market_data = {"features": sequence[-1], "sequence": sequence, "position": 0, "balance": 100_000.0,
                   "unrealized_pnl": 0.0, "recent_actions": [0, 1, 0, 2, 0, 0, 1, 0, 0, 0]}
    out = predictor.ensemble_predict(market_data)
    assert out["models_used"] == ["lgb_5m", "lgb_30m", "lstm", "ppo"]
    as_lists = predictor.ensemble_predict({**market_data, "features": sequence[-1].tolist(),
                                           "sequence": sequence.tolist(), "timestamp": out["timestamp"]})
    assert as_lists == out
