"""The bar stream (issue 17): POST /v1/bars keeps per-symbol state and answers as /v1/predict.

Stream = batch: bars pushed one at a time give, at every bar, the feature row of the whole
file's batch and the response /v1/predict gives with the history. A gap restarts the state as
the dataset does, a restart of the server changes nothing once history is resent, a retry
changes nothing, and an older or changed bar is a clear 409.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from trademl.config import load_config
from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.features import compute_features
from trademl.predict.ensemble import EnsemblePredictor
from trademl.predict.request import RequestError
from trademl.segments import segment_ids
from trademl.serve.app import create_app

from conftest import TINY_OVERRIDES


def as_json_bars(frame) -> list[dict]:
    out = []
    for ts, r in zip(frame.index, frame.itertuples()):
        bar = {"timestamp": ts.isoformat(), "open": r.open, "high": r.high, "low": r.low, "close": r.close}
        if "volume" in frame:
            bar["volume"] = r.volume
        if "edge" in frame:
            bar["edge"] = r.edge
        out.append(bar)
    return out


@pytest.fixture(scope="module")
def es_store(tmp_path_factory):
    """LightGBM 5m/30m trained (tiny) on the bundled ES file's default features."""
    from trademl.data.dataset import dataset_from_bars
    from trademl.models.lgbm import train_lgbm
    from trademl.models.store import ModelStore

    root = tmp_path_factory.mktemp("es-stream") / "models"
    cfg = load_config(None, {"lgbm": dict(TINY_OVERRIDES["lgbm"]), "paths": {"model_root": str(root)}})
    bars = load_bars(bundled_sample_path(), symbol="ES")
    train_lgbm(dataset_from_bars(bars, cfg), cfg, store=ModelStore(root))
    return root, cfg, bars


def assert_same_answer(streamed: dict, asked: dict, where: str = "") -> None:
    """The same response: every decision, name, warning and count exactly; the probabilities and
    model outputs to 1e-5 relative, since the stream's feature rows equal the batch's to float32
    precision, not to the bit, and the LSTM carries those last bits into its outputs."""
    assert streamed.keys() == asked.keys(), where
    for key, mine in streamed.items():
        theirs = asked[key]
        if isinstance(mine, dict):
            assert_same_answer(mine, theirs, f"{where}.{key}")
        elif isinstance(mine, float) and not isinstance(theirs, bool):
            assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-9), f"{where}.{key}"
        else:
            assert mine == theirs, f"{where}.{key}"


@pytest.mark.slow
def test_the_last_2000_es_bars_streamed_give_the_batch_features_and_the_predict_response(es_store):
    root, cfg, bars = es_store
    predictor = EnsemblePredictor(root, cfg, record=False)
    names = predictor.models.feature_names
    needed = predictor.models.bars_needed()
    batch = compute_features(bars, symbol="ES", names=names).to_numpy(np.float32)
    rows = as_json_bars(bars)
    start = len(rows) - 2000
    assert len(np.unique(segment_ids(bars.iloc[start:], cfg.data.max_gap_minutes))) > 3  # gaps inside them
    predictor.push_bars({"symbol": "ES", "bars": rows[start - needed:start]})  # warm-up history
    stream = predictor.streams._streams["ES"]
    for i in range(start, len(rows)):
        pushed = predictor.push_bars({"symbol": "ES", "bars": [rows[i]]})
        row = stream.rows[-1]
        np.testing.assert_allclose(row, batch[i], rtol=2e-6, atol=1e-6, equal_nan=True, err_msg=f"bar {i}")
        history = rows[max(0, i + 1 - max(needed, 1)):i + 1]
        assert_same_answer(pushed, predictor.ensemble_predict({"symbol": "ES", "bars": history}), f"bar {i}")


def test_the_full_ensemble_streamed_answers_as_predict_bar_by_bar(trained_store):
    """All four kinds (LightGBM, LSTM window, PPO) and an extra column (edge) sent with each bar."""
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    needed = predictor.models.bars_needed()
    rows = as_json_bars(trained_store.bars.iloc[-(needed + 120):])
    predictor.push_bars({"symbol": "NQ", "bars": rows[:needed]})
    for i in range(needed, len(rows)):
        pushed = predictor.push_bars({"symbol": "NQ", "bars": [rows[i]], "position": 1, "balance": 51_000.0})
        assert set(pushed["models_used"]) == {"lgb_5m", "lgb_30m", "lstm", "ppo"}
        asked = predictor.ensemble_predict({"symbol": "NQ", "bars": rows[i + 1 - needed:i + 1], "position": 1,
                                            "balance": 51_000.0})
        assert_same_answer(pushed, asked, f"bar {i}")


def test_a_server_restart_between_pushes_changes_nothing_once_history_is_resent(trained_store):
    needed = EnsemblePredictor(trained_store.root, trained_store.config, record=False).models.bars_needed()
    rows = as_json_bars(trained_store.bars.iloc[-(needed + 30):])
    steady = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    steady.push_bars({"symbol": "NQ", "bars": rows[:needed]})
    before = [steady.push_bars({"symbol": "NQ", "bars": [r]}) for r in rows[needed:]]
    restarted = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    # the bot resends the history the models need, up to the last bar it pushed (the 10th)
    resent = restarted.push_bars({"symbol": "NQ", "bars": rows[10:needed + 10]})
    assert_same_answer(resent, before[9])
    after = [restarted.push_bars({"symbol": "NQ", "bars": [r]}) for r in rows[needed + 10:]]
    for i, (a, b) in enumerate(zip(after, before[10:], strict=True)):
        assert_same_answer(a, b, f"bar {i}")


def test_a_retry_returns_the_same_answer_and_changes_no_state(trained_store):
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    rows = as_json_bars(trained_store.bars.iloc[-2000:])
    first = predictor.push_bars({"symbol": "NQ", "bars": rows[:-1]})
    stream = predictor.streams._streams["NQ"]
    answer = predictor.push_bars({"symbol": "NQ", "bars": rows[-1:]})
    seen, last_row = stream.features.bars_seen, stream.rows[-1].copy()
    for _ in range(3):
        assert predictor.push_bars({"symbol": "NQ", "bars": rows[-1:]}) == answer
    # the last few bars sent again with the newest one: what a bot resending a window does
    assert predictor.push_bars({"symbol": "NQ", "bars": rows[-5:]}) == answer
    assert stream.features.bars_seen == seen and np.array_equal(stream.rows[-1], last_row, equal_nan=True)
    assert first["timestamp"] != answer["timestamp"]


@pytest.fixture
def client(trained_store):
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    return TestClient(create_app(predictor)), as_json_bars(trained_store.bars.iloc[-1600:])


def test_an_older_bar_or_a_changed_last_bar_is_409_and_leaves_the_state_as_it_was(client):
    http, rows = client
    assert http.post("/v1/bars", json={"symbol": "NQ", "bars": rows[:-2]}).status_code == 200
    answer = http.post("/v1/bars", json={"symbol": "NQ", "bars": [rows[-2]]}).json()
    changed = dict(rows[-2], close=rows[-2]["close"] + 0.25, high=max(rows[-2]["high"], rows[-2]["close"] + 0.25))
    refused = http.post("/v1/bars", json={"symbol": "NQ", "bars": [changed]})
    assert refused.status_code == 409 and refused.json()["error"]["kind"] == "stream_conflict"
    assert "does not change" in refused.json()["error"]["message"]
    older = dict(rows[10], timestamp="2020-01-01T00:00:00Z")
    refused = http.post("/v1/bars", json={"symbol": "NQ", "bars": [older]})
    assert refused.status_code == 409 and "time order" in refused.json()["error"]["message"]
    # a bar inside the kept span that the stream never took (slipped in between two it has)
    between = dict(rows[-3], timestamp=rows[-3]["timestamp"].replace(":00+00:00", ":30+00:00"))
    assert http.post("/v1/bars", json={"symbol": "NQ", "bars": [between]}).status_code == 409
    again = http.post("/v1/bars", json={"symbol": "NQ", "bars": [rows[-2]]}).json()
    assert again == answer  # nothing moved
    assert http.post("/v1/bars", json={"symbol": "NQ", "bars": [rows[-1]]}).status_code == 200


def test_delete_drops_the_state_and_the_next_call_starts_again(client):
    http, rows = client
    http.post("/v1/bars", json={"symbol": "NQ", "bars": rows})
    assert http.delete("/v1/bars/NQ").json() == {"symbol": "NQ", "dropped": True}
    assert http.delete("/v1/bars/NQ").json() == {"symbol": "NQ", "dropped": False}
    # an older bar is fine now: the stream starts again from it, warming up
    fresh = http.post("/v1/bars", json={"symbol": "NQ", "bars": rows[:5]}).json()
    assert any("warming up" in w for w in fresh["warnings"])
    assert http.delete("/v1/bars/" + "X" * 40).status_code == 422


def test_a_push_without_symbol_or_bars_or_with_features_is_a_clear_422(client):
    http, rows = client
    for body, field in (({"bars": rows[-1:]}, "symbol"), ({"symbol": "NQ"}, "bars"),
                        ({"symbol": "NQ", "bars": rows[-1:], "features": [1.0]}, "body")):
        answer = http.post("/v1/bars", json=body)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field


def test_volume_on_some_bars_only_is_refused(trained_store):
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    rows = as_json_bars(trained_store.bars.iloc[-20:])
    predictor.push_bars({"symbol": "NQ", "bars": rows[:10]})
    bare = {k: v for k, v in rows[10].items() if k != "volume"}
    with pytest.raises(RequestError, match="volume is given for some bars"):
        predictor.push_bars({"symbol": "NQ", "bars": [bare]})


def test_new_models_rebuild_the_stream_from_the_bars_it_kept(trained_store):
    """A reload with another feature list: the state is rebuilt from the kept raw bars, equal to a
    stream that read those bars with the new list from the start."""
    from trademl.predict.stream import SymbolStream, StreamKey

    rows = trained_store.bars.iloc[-400:]
    key = StreamKey(("rsi", "ret_5", "edge"), 0.25, 60.0, 10, 300)
    other = StreamKey(("ema_dist_20", "rvol_30"), 0.25, 60.0, 10, 300)
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    from trademl.predict.schema import BarsPush

    push = BarsPush.model_validate({"symbol": "NQ", "bars": as_json_bars(rows)})
    notes: list[str] = []
    stream = predictor.streams.stream("NQ", key, notes)
    stream.take(push.bars)
    rebuilt = predictor.streams.stream("NQ", other, notes)
    fresh = SymbolStream(other)
    fresh.take(BarsPush.model_validate({"symbol": "NQ", "bars": as_json_bars(rows.iloc[-300:])}).bars)
    assert notes and "rebuilt from its last 300 bars" in notes[0]
    np.testing.assert_array_equal(np.array(rebuilt.rows), np.array(fresh.rows))


def test_context_bars_sent_along_give_the_cross_market_features_of_the_batch():
    """Each call carries our newest bar and the context's bars since the last call (some missing,
    stamped 20 s later than ours): the stream's as-of join is the batch's."""
    from trademl.data.features.registry import FEATURE_GROUPS
    from trademl.predict.schema import BarsPush
    from trademl.predict.stream import StreamKey, SymbolStream

    ours = load_bars(bundled_sample_path(), symbol="ES").iloc[:3000]
    rng = np.random.default_rng(5)
    theirs = ours[rng.random(len(ours)) > 0.1].copy()
    theirs.index = theirs.index + np.timedelta64(20, "s")
    theirs[["open", "high", "low", "close"]] *= 1.0 + 0.001 * np.cumsum(rng.standard_normal(len(theirs)))[:, None] / 50
    theirs["high"] = theirs[["open", "high", "low", "close"]].max(axis=1)
    theirs["low"] = theirs[["open", "high", "low", "close"]].min(axis=1)
    names = list(FEATURE_GROUPS["context"]) + ["ret_1"]
    gap = load_config().data.max_gap_minutes
    batch = compute_features(ours, symbol="ES", names=names, context=theirs).to_numpy(np.float32)
    stream = SymbolStream(StreamKey(tuple(names), 0.25, float(gap), 1, 10))
    ours_json, theirs_json = as_json_bars(ours), as_json_bars(theirs)
    sent = 0
    rows = []
    for i, bar in enumerate(ours_json):
        upto = int(np.searchsorted(theirs.index, ours.index[i], side="right"))
        push = BarsPush.model_validate({"symbol": "ES", "bars": [bar], "context_bars": theirs_json[sent:upto] or None})
        sent = upto
        stream.take(push.bars, push.context_bars)
        rows.append(stream.rows[-1])
    assert np.isfinite(batch[:, 0]).mean() > 0.5
    np.testing.assert_allclose(np.array(rows), batch, rtol=2e-6, atol=1e-7, equal_nan=True)


def test_streams_beyond_max_streams_are_refused_and_listed_in_v1_models(trained_store):
    cfg = trained_store.config.model_copy(deep=True)
    cfg.serve.max_streams = 2
    predictor = EnsemblePredictor(trained_store.root, cfg, record=False)
    http = TestClient(create_app(predictor))
    rows = as_json_bars(trained_store.bars.iloc[-3:])
    for symbol in ("NQH5", "NQM5"):
        assert http.post("/v1/bars", json={"symbol": symbol, "bars": rows}).status_code == 200
    refused = http.post("/v1/bars", json={"symbol": "NQU5", "bars": rows})
    assert refused.status_code == 409 and "max_streams" in refused.json()["error"]["message"]
    assert http.get("/v1/models").json()["streams"] == {"NQH5": 3, "NQM5": 3}
    http.delete("/v1/bars/NQH5")
    assert http.post("/v1/bars", json={"symbol": "NQU5", "bars": rows}).status_code == 200


def test_a_refused_push_leaves_the_stream_untouched(trained_store):
    """A push the request checks refuse (prices beyond one instrument's range) takes no bar: the
    next good bar is answered as if the bad call never came."""
    predictor = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    twin = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    rows = as_json_bars(trained_store.bars.iloc[-300:])
    for p in (predictor, twin):
        p.push_bars({"symbol": "NQ", "bars": rows[:-1]})
    absurd = dict(rows[-1], high=3e38)
    with pytest.raises(RequestError, match="ticks"):
        predictor.push_bars({"symbol": "NQ", "bars": [absurd]})
    assert predictor.push_bars({"symbol": "NQ", "bars": rows[-1:]}) == twin.push_bars({"symbol": "NQ", "bars": rows[-1:]})


def test_a_stream_warmed_from_a_bars_file_answers_as_one_warmed_by_a_push(trained_store, tmp_path, caplog):
    """`trademl serve --stream-bars NQ=FILE` after a restart: the next one-bar push is answered as
    by a server that took the same history in a push; an unreadable file is logged, not fatal."""
    from trademl.serve.app import warm_streams

    needed = EnsemblePredictor(trained_store.root, trained_store.config, record=False).models.bars_needed()
    frame = trained_store.bars.iloc[-(needed + 50):-1]
    path = tmp_path / "nq.parquet"
    frame.to_parquet(path)
    warmed = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    warm_streams(warmed, [("NQ", path), ("ES", tmp_path / "missing.csv")], trained_store.config)
    assert "not warmed" in caplog.text and "missing.csv" in caplog.text
    pushed = EnsemblePredictor(trained_store.root, trained_store.config, record=False)
    pushed.push_bars({"symbol": "NQ", "bars": as_json_bars(frame.iloc[-needed:])})
    last = as_json_bars(trained_store.bars.iloc[-1:])
    assert warmed.describe()["streams"] == {"NQ": needed}
    assert warmed.push_bars({"symbol": "NQ", "bars": last}) == pushed.push_bars({"symbol": "NQ", "bars": last})


def test_stream_bars_option_must_be_symbol_equals_file():
    from trademl.cli import _symbol_and_file
    from trademl.errors import TradeMLError

    assert _symbol_and_file("ESZ5=bars/es.csv") == ("ESZ5", __import__("pathlib").Path("bars/es.csv"))
    for bad in ("ESZ5", "=x.csv", "ESZ5="):
        with pytest.raises(TradeMLError, match="SYMBOL=FILE"):
            _symbol_and_file(bad)


def test_metrics_count_the_streams_and_their_bars(client):
    http, rows = client
    http.post("/v1/bars", json={"symbol": "NQ", "bars": rows[:40]})
    http.post("/v1/bars", json={"symbol": "NQ", "bars": rows[40:41]})
    assert http.post("/v1/bars", json={"symbol": "NQ", "bars": rows[:1]}).status_code == 200  # taken: a retry
    changed = dict(rows[0], close=rows[0]["close"] + 0.25, high=max(rows[0]["high"], rows[0]["close"] + 0.25))
    assert http.post("/v1/bars", json={"symbol": "NQ", "bars": [changed]}).status_code == 409
    metrics = http.get("/metrics").text
    assert "trademl_streams 1.0" in metrics
    assert 'trademl_stream_bars{symbol="NQ"} 41.0' in metrics
    assert 'trademl_errors_total{kind="stream_conflict"} 1.0' in metrics
