"""The prediction log: what goes in comes out, concurrent writers lose nothing, a kill loses
at most the row being written, prune and export."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from trademl.errors import TradeMLError
from trademl.predict.log import PredictionLog

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def _record(i: int, symbol: str = "NQ", writer: int = 0) -> dict:
    """The shape the ensemble predictor's recorder sends."""
    output = {
        "timestamp": (T0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "models_used": ["lgb_5m", "lstm"],
        "win_5m_prob": 0.6,
        "lstm_buy_prob": 0.5, "lstm_sell_prob": 0.2, "lstm_hold_prob": 0.3,
        "ensemble_recommendation": "BUY",
        "confidence_score": 0.7,
        "warnings": [],
        "model_versions": {"lgb_5m": "v1", "lstm": "v2"},
    }
    return {
        "timestamp": output["timestamp"],
        "logged_at": "2024-01-02T15:00:00Z",
        "symbol": symbol,
        "request_digest": f"{writer}:{i}",
        "recommendation": "BUY",
        "confidence": 0.7,
        "output": output,
        "model_versions": output["model_versions"],
        "latency_ms": 1.5,
    }


def test_a_record_comes_back_whole(tmp_path):
    log = PredictionLog(tmp_path / "logs" / "p.sqlite")
    rec = _record(3)
    rec["features"] = {"rsi_14": 45.5, "atr_14": float("nan"), "ret_1": -0.001}
    rec["decision_bar"] = "2024-01-02T14:32:00Z"
    log.append(rec)
    frame = log.query()
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["ts_utc"] == pd.Timestamp("2024-01-02T14:33:00Z")
    assert row["decision_bar"] == pd.Timestamp("2024-01-02T14:32:00Z")
    assert row["symbol"] == "NQ" and row["recommendation"] == "BUY" and row["confidence"] == 0.7
    assert row["output"] == rec["output"]
    assert row["model_versions"] == {"lgb_5m": "v1", "lstm": "v2"}
    assert row["features"] == {"rsi_14": 45.5, "atr_14": None, "ret_1": -0.001}
    assert row["latency_ms"] == 1.5 and row["request_digest"] == "0:3"
    assert pd.isna(row["error_kind"])


def test_fields_default_to_the_output_and_the_file_is_wal(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    rec = _record(0)
    for key in ("recommendation", "confidence", "model_versions", "timestamp", "logged_at"):
        rec.pop(key)
    log.append(rec)
    row = log.query().iloc[0]
    assert row["recommendation"] == "BUY" and row["confidence"] == 0.7
    assert row["ts_utc"] == pd.Timestamp(T0)  # from output["timestamp"]
    assert abs(row["logged_at"] - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=1)
    with sqlite3.connect(tmp_path / "p.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_errors_are_logged_by_kind(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    log.append(_record(0))
    log.append_error("validation", "features.rsi: not a number", symbol="NQ", latency_ms=0.4)
    log.append_error("no_model", "no model is loaded")
    frame = log.query()
    assert sorted(frame["error_kind"].dropna()) == ["no_model", "validation"]
    assert frame["error_kind"].isna().sum() == 1
    failed = frame[frame["error_kind"].notna()]
    assert failed["recommendation"].isna().all()
    assert "features.rsi" in failed.loc[failed["error_kind"] == "validation", "error_message"].iloc[0]


def test_since_and_symbol_filter(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    for i in range(10):
        log.append(_record(i, symbol="NQ" if i % 2 else "ES"))
    assert len(log.query(since=T0 + timedelta(minutes=5))) == 5
    assert len(log.query(since="2024-01-02T14:35:00Z", symbol="ES")) == 2  # minutes 6 and 8
    assert log.query(symbol="ES")["symbol"].eq("ES").all()
    assert log.query(since=T0 + timedelta(days=1)).empty


def test_bad_records_are_refused_and_nothing_is_written(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    with pytest.raises(TradeMLError, match="unknown keys") as e:
        log.append(dict(_record(0), confidnce=0.5))
    assert e.value.where == "record"
    with pytest.raises(TradeMLError, match="time zone") as e:
        log.append(dict(_record(0), timestamp="2024-01-02T14:30:00"))
    assert e.value.where == "record.timestamp"
    with pytest.raises(TradeMLError, match="not an ISO"):
        log.append(dict(_record(0), timestamp="yesterday"))
    with pytest.raises(TradeMLError, match="number"):
        log.append(dict(_record(0), latency_ms="fast"))
    with pytest.raises(TradeMLError, match="long' or 'short") as e:
        log.append(dict(_record(0), side="both"))
    assert e.value.where == "record.side"
    assert log.count() == 0


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "p.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TradeMLError, match="cannot open the prediction log") as e:
        PredictionLog(bad)
    assert e.value.where == str(bad)


def _write_many(path, writer: int, n: int) -> None:
    log = PredictionLog(path)
    for i in range(n):
        log.append(_record(i, writer=writer))


def test_10000_predictions_from_4_processes_are_all_found(tmp_path):
    path = tmp_path / "p.sqlite"
    ctx = multiprocessing.get_context("spawn")  # no inherited connections, like 4 server workers
    procs = [ctx.Process(target=_write_many, args=(path, w, 2500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    frame = PredictionLog(path).query()
    assert len(frame) == 10_000
    assert frame["id"].is_unique
    expected = {f"{w}:{i}" for w in range(4) for i in range(2500)}
    assert set(frame["request_digest"]) == expected


def test_threads_sharing_one_log_lose_nothing(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    threads = [threading.Thread(target=lambda w=w: [log.append(_record(i, writer=w)) for i in range(300)])
               for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count() == 1200


_KILLED_WRITER = """
import sys
from trademl.predict.log import PredictionLog
log = PredictionLog(sys.argv[1])
i = 0
while True:
    rid = log.append({"timestamp": "2024-01-02T14:30:00Z", "symbol": "NQ", "request_digest": str(i),
                      "output": {"ensemble_recommendation": "HOLD", "confidence_score": 0.5,
                                 "padding": "x" * 2000}, "latency_ms": 1.0})
    print(rid, flush=True)  # printed only after the commit returned
    i += 1
"""


def test_a_kill_mid_write_keeps_every_committed_row(tmp_path):
    path = tmp_path / "p.sqlite"
    PredictionLog(path)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in child.stdout:
            committed.append(int(line))
            if len(committed) >= 1500:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    committed += [int(line) for line in child.stdout.read().split()]
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = set(PredictionLog(path).query()["id"])
    assert set(committed) <= ids
    assert len(ids) - len(committed) <= 1  # at most the row being written when the kill came


def test_prune_and_export(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    for i in range(10):
        log.append(dict(_record(i), features={"rsi_14": float(i)}))
    out = log.export_parquet(tmp_path / "out" / "p.parquet", since=T0 + timedelta(minutes=4))
    back = pd.read_parquet(out)
    assert len(back) == 6 and str(back["ts_utc"].dt.tz) == "UTC"
    assert '"rsi_14":9.0' in back["features_json"].iloc[-1]
    assert log.prune(T0 + timedelta(minutes=7)) == 7
    assert log.query()["ts_utc"].min() == pd.Timestamp(T0 + timedelta(minutes=7))


def test_a_failed_export_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    log = PredictionLog(tmp_path / "p.sqlite")
    log.append(_record(0))
    target = tmp_path / "p.parquet"
    target.write_bytes(b"previous export")

    def broken(self, path, **kw):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        log.export_parquet(target)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nan_confidence_and_numpy_values_are_stored(tmp_path):
    np = pytest.importorskip("numpy")
    log = PredictionLog(tmp_path / "p.sqlite")
    rec = _record(0)
    rec["output"] = dict(rec["output"], win_5m_prob=np.float32(0.25), probs=np.array([0.1, 0.9]))
    rec["features"] = {"a": np.float32(1.5), "b": np.float32("nan")}
    log.append(rec)
    row = log.query().iloc[0]
    assert row["output"]["win_5m_prob"] == 0.25 and row["output"]["probs"] == [0.1, 0.9]
    assert row["features"]["a"] == 1.5 and row["features"]["b"] is None
    assert not math.isnan(row["confidence"])


def test_the_predictor_logs_features_decision_bar_and_failed_requests(trained_store, tmp_path):
    from trademl.predict.ensemble import EnsemblePredictor, RequestError

    p = EnsemblePredictor(trained_store.root, trained_store.config, log_dir=tmp_path / "logs")
    names = p.models.feature_names
    bars = trained_store.bars.iloc[-200:]
    body = {"symbol": "NQ", "bars": [
        {"timestamp": t.isoformat(), **{c: float(r[c]) for c in ("open", "high", "low", "close", "volume", "edge")}}
        for t, r in bars.iterrows()]}
    p.ensemble_predict(body)
    p.ensemble_predict({"symbol": "NQ", "timestamp": "2024-01-01T12:00:00Z", "features": [0.5] * len(names)})
    with pytest.raises(RequestError):
        p.ensemble_predict({"symbol": "NQ", "features": {"no_such_feature": 1.0}})
    frame = PredictionLog(tmp_path / "logs" / "predictions.sqlite").query()
    assert len(frame) == 3
    ok = frame[frame["error_kind"].isna()]
    bar_row = ok[ok["decision_bar"].notna()].iloc[0]
    assert bar_row["decision_bar"] == bars.index[-1]
    assert bar_row["features"] is None  # recomputed by the monitor from the bars file
    assert bar_row["side"] == "long"
    feat_row = ok[ok["decision_bar"].isna()].iloc[0]
    assert feat_row["features"] == dict.fromkeys(names, 0.5)
    err = frame[frame["error_kind"].notna()].iloc[0]
    assert err["error_kind"] == "validation" and "no_such_feature" in err["error_message"]


def test_a_version_1_log_gains_the_side_column_and_keeps_its_rows(tmp_path):
    from trademl.predict import log as log_module

    path = tmp_path / "p.sqlite"
    v1_columns = [c for c in log_module._COLUMNS if not c.startswith("side ")]
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE predictions ({', '.join(v1_columns)})")
        db.execute("INSERT INTO predictions (ts_utc, logged_at, symbol) VALUES "
                   "('2024-01-02T14:30:00.000000Z', '2024-01-02T14:30:00.000000Z', 'NQ')")
        db.execute("PRAGMA user_version = 1")
    log = PredictionLog(path)
    log.append(dict(_record(5), side="short"))
    frame = log.query()
    assert len(frame) == 2 and pd.isna(frame["side"].iloc[0]) and frame["side"].iloc[1] == "short"


def test_the_request_digest_reads_the_numbers_as_sent_and_once():
    """The same request gives the same digest whether or not the models read its sequence first
    (the float64 values are converted once and shared); a change float32 cannot see changes it."""
    import numpy as np

    from trademl.predict.recorder import request_digest
    from trademl.predict.request import parse_request, sequence_values

    sequence = np.random.default_rng(0).normal(size=(60, 5)).tolist()
    body = {"symbol": "NQ", "features": [1.0, 2.0, None, 4.0, 5.0], "sequence": sequence, "position": 1}
    fresh = request_digest(parse_request(body))
    read_first = parse_request(body)
    assert sequence_values(read_first).dtype == np.float64
    assert request_digest(read_first) == fresh
    nudged = [row[:] for row in sequence]
    nudged[7][3] = float(np.nextafter(nudged[7][3], np.inf))  # one float64 ulp: the same float32
    assert np.float32(nudged[7][3]) == np.float32(sequence[7][3])
    assert request_digest(parse_request(dict(body, sequence=nudged))) != fresh
    assert request_digest(parse_request(dict(body, position=2))) != fresh
