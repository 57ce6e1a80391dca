"""Prediction log and monitor: what logging costs the request path, and how long a report takes.

    .venv/bin/python bench/bench_monitor.py [--rows 20000]

Peer: the guide's own logging (``logging.FileHandler`` with '%(asctime)s - %(message)s'
into logs/predictions.log, one line per prediction), which the predictor keeps writing
beside the SQLite log. Printed: append latency p50/p99 of each and their ratio,
synchronous=NORMAL vs FULL, the rows/s of 4 concurrent writer processes, and the time of
run_monitor (join + scores + drift + HTML) over ``--rows`` predictions. Also the append
latency p50/p99 of the measurement tests/test_monitor_log.py used to assert on (300 appends
of one record with 40 features to a fresh log; its bound was a median under 1 ms).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from trademl.predict.log import PredictionLog  # noqa: E402

N_APPEND = 3000


def _record(i: int) -> dict:
    output = {"timestamp": "2024-01-02T14:30:00Z", "models_used": ["lgb_5m", "lgb_30m", "lstm", "ppo"],
              "win_5m_prob": 0.61, "win_30m_prob": 0.55, "lstm_buy_prob": 0.4, "lstm_sell_prob": 0.3,
              "lstm_hold_prob": 0.3, "lstm_expected_movement": 0.001, "lstm_risk_score": 0.2, "ppo_buy_prob": 0.5,
              "ppo_sell_prob": 0.2, "ppo_hold_prob": 0.3, "ppo_state_value": 101.0, "ensemble_recommendation": "BUY",
              "confidence_score": 0.7, "warnings": [], "model_versions": {"lgb_5m": "v1", "lstm": "v2"}}
    return {"timestamp": output["timestamp"], "symbol": "NQZ5", "request_digest": f"{i:064x}", "output": output,
            "model_versions": output["model_versions"], "latency_ms": 3.2, "side": "long",
            "features": {f"feature_{k}": 0.001 * k for k in range(39)}}


def _timed(fn, n: int) -> np.ndarray:
    times = np.empty(n)
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        times[i] = time.perf_counter() - started
    return times * 1e3


def _writer(path: str, n: int) -> None:
    log = PredictionLog(path)
    for i in range(n):
        log.append(_record(i))


def bench_append(tmp: Path) -> None:
    guide = logging.getLogger("bench.guide")
    handler = logging.FileHandler(tmp / "predictions.log")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
    guide.addHandler(handler)
    guide.setLevel(logging.INFO)
    guide.propagate = False
    peer = _timed(lambda i: guide.info("Prediction: %s, Confidence: %.2f%%", "BUY", 70.0), N_APPEND)
    normal_log, full_log = PredictionLog(tmp / "normal.sqlite"), PredictionLog(tmp / "full.sqlite", synchronous="FULL")
    normal = _timed(lambda i: normal_log.append(_record(i)), N_APPEND)
    full = _timed(lambda i: full_log.append(_record(i)), 300)
    print(f"append latency over {N_APPEND} calls, ms (p50 / p99):")
    for name, t in (("guide's predictions.log line (peer)", peer), ("PredictionLog, synchronous=NORMAL", normal),
                    ("PredictionLog, synchronous=FULL (300 calls)", full)):
        print(f"  {name:45s} {np.percentile(t, 50):7.3f} / {np.percentile(t, 99):7.3f}")
    print(f"  ratio NORMAL / peer at p50: {np.percentile(normal, 50) / np.percentile(peer, 50):.1f}x "
          f"(the SQLite row holds the full output, versions and 39 features; the line holds two values)")

    path = tmp / "concurrent.sqlite"
    PredictionLog(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 2500)) for _ in range(4)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    found = PredictionLog(path).count()
    print(f"4 processes x 2,500 appends: {found:,} rows found, {found / elapsed:,.0f} rows/s including process start")


def _test_record() -> dict:
    """The record of tests/test_monitor_log.py's former test_append_is_fast: its _record(0) with 40 features."""
    output = {"timestamp": "2024-01-02T14:30:00Z", "models_used": ["lgb_5m", "lstm"], "win_5m_prob": 0.6,
              "lstm_buy_prob": 0.5, "lstm_sell_prob": 0.2, "lstm_hold_prob": 0.3, "ensemble_recommendation": "BUY",
              "confidence_score": 0.7, "warnings": [], "model_versions": {"lgb_5m": "v1", "lstm": "v2"}}
    return {"timestamp": output["timestamp"], "logged_at": "2024-01-02T15:00:00Z", "symbol": "NQ",
            "request_digest": "0:0", "recommendation": "BUY", "confidence": 0.7, "output": output,
            "model_versions": output["model_versions"], "latency_ms": 1.5,
            "features": {f"f{k}": k * 0.5 for k in range(40)}}


def bench_append_test_record(tmp: Path, n: int = 300) -> None:
    """The measurement that was a wall-clock test: ``n`` appends of one 40-feature record to a fresh log."""
    log = PredictionLog(tmp / "test_record.sqlite")
    rec = _test_record()
    t = _timed(lambda i: log.append(rec), n)
    print(f"append of the test suite's 40-feature record, {n} calls to a fresh log, ms (p50 / p99): "
          f"{np.percentile(t, 50):.3f} / {np.percentile(t, 99):.3f} (the former test's bound: p50 < 1 ms); "
          f"{log.count()} rows found")


def bench_monitor(tmp: Path, rows: int) -> None:
    from trademl.config import load_config
    from trademl.data.features import compute_features
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.store import ModelStore
    from trademl.monitor.drift import feature_reference
    from trademl.monitor.report import run_monitor

    names = ["rsi", "ret_1", "ret_5", "clv", "body_ratio", "bb_pctb_20", "sma_dist_20", "tod_sin"]
    bars = synthetic_bars(rows + 10_000, seed=1, edge_ic=0.1, symbol="NQ")
    feats = compute_features(bars, names=names)
    with ModelStore(tmp / "models").writer("lgb_5m", feature_schema={"names": names},
                                           feature_reference=feature_reference(feats.iloc[:10_000].to_numpy(), names)) as w:
        (w.path / "model.txt").write_text("manifest only")
    log = PredictionLog(tmp / "monitor.sqlite")
    close_time = bars.index + np.timedelta64(1, "m")
    for i in range(10_000, 10_000 + rows):
        rec = _record(i)
        rec["timestamp"] = close_time[i].isoformat()
        rec["output"] = dict(rec["output"], ensemble_recommendation="BUY" if bars["edge"].iloc[i] > 0 else "SELL")
        rec["model_versions"] = {"lgb_5m": w.stored.version}
        rec["features"] = dict(zip(names, map(float, feats.iloc[i])))
        log.append(rec)
    cfg = load_config(None, {"paths": {"model_root": str(tmp / "models")}})
    started = time.perf_counter()
    result = run_monitor(tmp / "monitor.sqlite", bars, config=cfg, html_path=tmp / "monitor.html")
    elapsed = time.perf_counter() - started
    print(f"run_monitor over {rows:,} predictions and {len(bars):,} bars (join, scores, drift, HTML): {elapsed:.2f} s; "
          f"ensemble hit rate at 5 bars {result.scores.set_index(['model', 'horizon']).loc[('ensemble', 5), 'hit_rate']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_append(Path(tmp))
        bench_append_test_record(Path(tmp))
        bench_monitor(Path(tmp), args.rows)


if __name__ == "__main__":
    main()
