"""The bar stream against today's bars request: one streamed bar vs 1,500 bars per call.

    .venv/bin/python bench/bench_stream.py [--model-root DIR] [--bars 1000]

On the bench store of bench_predict.py (all four kinds at guide size, the stacker deciding):
1. in process: ``EnsemblePredictor.push_bars`` with one new bar (state warmed with the history
   the models need) against ``ensemble_predict`` with the last 1,500 raw bars (what a bot sends
   today to get exact features), p50 / p99; and the incremental features' own update per bar;
2. over HTTP (``trademl serve`` on loopback, one keep-alive connection, one call at a time):
   POST /v1/bars with one bar against POST /v1/predict with 1,500 bars, p50 / p99, and the
   bytes each call sends.
Targets (issue 17): streamed bar in process p50 <= 1 ms, p99 <= 2 ms; over HTTP p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import DEFAULT_ROOT, ensure_stacker, percentiles, served, train_models  # noqa: E402

ACCOUNT = {"position": 1, "balance": 100250.0, "unrealized_pnl": 125.0, "recent_actions": [0, 1, 0, 0, 2, 0, 1, 1, 0, 0]}


def json_bars(n: int) -> list[dict]:
    """``n`` synthetic NQ bars (with the `edge` column the bench models read) as the API's JSON."""
    from trademl.data.synthetic import synthetic_bars

    bars = synthetic_bars(n, seed=5, edge_ic=0.1, symbol="NQ")
    return [{"timestamp": ts.isoformat(), "open": r.open, "high": r.high, "low": r.low, "close": r.close,
             "volume": r.volume, "edge": r.edge} for ts, r in zip(bars.index, bars.itertuples())]


def bench_in_process(root: Path, bars: list[dict], history: int, pushes: int) -> dict:
    from trademl.predict.ensemble import EnsemblePredictor

    with tempfile.TemporaryDirectory() as logs:
        p = EnsemblePredictor(root, log_dir=logs)
        p.push_bars({"symbol": "NQZ5", "bars": bars[:history], **ACCOUNT})
        pushed = []
        for bar in bars[history:history + pushes]:
            t = time.perf_counter()
            out = p.push_bars({"symbol": "NQZ5", "bars": [bar], **ACCOUNT})
            pushed.append((time.perf_counter() - t) * 1000)
        assert out["models_used"] == ["lgb_5m", "lgb_30m", "lstm", "ppo"], out["warnings"]
        requested = []
        for i in range(history + pushes - 200, history + pushes):
            t = time.perf_counter()
            p.ensemble_predict({"symbol": "NQZ5", "bars": bars[i + 1 - 1500:i + 1], **ACCOUNT})
            requested.append((time.perf_counter() - t) * 1000)
        stream = p.streams._streams["NQZ5"]
    return {"push": percentiles(pushed), "request_1500": percentiles(requested),
            "features_us": _feature_update_us(stream.key, bars[:history + pushes])}


def _feature_update_us(key, bars: list[dict]) -> tuple[float, float]:
    """p50 / p99 of the incremental features' update alone (microseconds)."""
    from trademl.data.features.incremental import IncrementalFeatures
    from trademl.predict.schema import Bar
    from trademl.predict.stream import RawBar

    inc = IncrementalFeatures(list(key.feature_names), key.tick_size, key.max_gap_minutes)
    raw = [RawBar.of(Bar.model_validate(b)) for b in bars]
    times = []
    for b in raw:
        t = time.perf_counter()
        inc.push(b.stamp, b.open, b.high, b.low, b.close, b.volume, extras=dict(b.extras))
        times.append((time.perf_counter() - t) * 1e6)
    return percentiles(times[200:])


def bench_http(root: Path, bars: list[dict], history: int, pushes: int) -> dict:
    import httpx

    warm = {"symbol": "NQZ5", "bars": bars[history - 1500:history], **ACCOUNT}
    with served(root, warm) as (_server, _port, url), httpx.Client(base_url=url) as client:
        assert client.post("/v1/bars", json={"symbol": "NQZ5", "bars": bars[:history], **ACCOUNT}).status_code == 200
        pushed, requested = [], []
        for bar in bars[history:history + pushes]:
            body = json.dumps({"symbol": "NQZ5", "bars": [bar], **ACCOUNT})
            t = time.perf_counter()
            r = client.post("/v1/bars", content=body, headers={"content-type": "application/json"})
            pushed.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
        for i in range(history + pushes - 200, history + pushes):
            body = json.dumps({"symbol": "NQZ5", "bars": bars[i + 1 - 1500:i + 1], **ACCOUNT})
            t = time.perf_counter()
            r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
            requested.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    one = len(json.dumps({"symbol": "NQZ5", "bars": bars[-1:], **ACCOUNT}))
    many = len(json.dumps({"symbol": "NQZ5", "bars": bars[-1500:], **ACCOUNT}))
    return {"push": percentiles(pushed), "request_1500": percentiles(requested), "bytes": (one, many)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, help="a store with all four kinds (default: bench_predict's)")
    ap.add_argument("--bars", type=int, default=1000, help="bars pushed one at a time")
    args = ap.parse_args()
    root = args.model_root or DEFAULT_ROOT
    if args.model_root is None and not root.exists():
        shutil.rmtree(root, ignore_errors=True)
        train_models(root)
    ensure_stacker(root)
    history = 1600
    bars = json_bars(history + args.bars)
    load = os.getloadavg()[0]
    inproc = bench_in_process(root, bars, history, args.bars)
    http = bench_http(root, bars, history, args.bars)
    rows = [
        ("in process: one streamed bar p50 / p99", "{:.2f} / {:.2f} ms".format(*inproc["push"]), "<= 1 / 2 ms"),
        ("in process: 1,500-bar request p50 / p99", "{:.2f} / {:.2f} ms".format(*inproc["request_1500"]), ""),
        ("in process: ratio request / stream (p50)", f"{inproc['request_1500'][0] / inproc['push'][0]:.1f}x", ""),
        ("  incremental features' update p50 / p99", "{:.0f} / {:.0f} us".format(*inproc["features_us"]), ""),
        ("HTTP: POST /v1/bars one bar p50 / p99", "{:.2f} / {:.2f} ms".format(*http["push"]), "p99 <= 5 ms"),
        ("HTTP: POST /v1/predict 1,500 bars p50 / p99", "{:.2f} / {:.2f} ms".format(*http["request_1500"]), ""),
        ("HTTP: bytes sent per call (stream / request)", "{:,} / {:,}".format(*http["bytes"]), ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bar stream, {args.bars} bars pushed, load {load:.1f} at start, {os.cpu_count()} cores")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>22}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
