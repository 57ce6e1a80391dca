"""Prediction latency: in-process ensemble, the HTTP service under load, and CLI cold start.

    .venv/bin/python bench/bench_predict.py [--model-root DIR] [--retrain] [--seconds 10] [--parts inproc,http,cold,batch]
        [--pin] [--rate 200]

1. ``EnsemblePredictor.ensemble_predict`` with all four models and the stacker deciding (the
   guide's input: features of the last bar + a SEQUENCE_LENGTH sequence, with an account, so
   the PPO agent also votes from a flat account for the stacker), p50 / p99 over 2,000 calls,
   prediction log on. Target p50 <= 2 ms, p99 <= 5 ms. The weighted vote beside it, same run.
2. ``trademl serve`` (uvicorn, loopback) at 200 requests/s from 8 concurrent keep-alive
   connections (a small asyncio HTTP/1.1 client), open loop (each request has a scheduled
   send time), for ``--seconds``. Target p99 <= 15 ms, zero errors.
3. Cold start: ``trademl predict`` on the guide's example JSON (a fresh process: imports,
   model loading, one prediction; this checkout's src/, median of 10) against the guide's way,
   a fresh python that imports torch and lightgbm (what scripts importing both pay before
   predicting anything). Target <= 0.3 s (issue 17); scripts/predict_advanced.py <= 0.5 s.
4. Batch beside singles (``--parts batch``): batches of 256 one-bar requests (~39 KB, the
   issue-15 probe) posted back to back on one connection while single requests (the
   four-model snapshot above) arrive open loop at 50 requests/s from 4 connections; the
   singles' p50 / p99 beside the batches against the singles alone, for ``--seconds`` each.
   Target: the singles' p99 beside the batches < 50 ms, zero errors.

Without --model-root the models are trained once into artifacts/bench/predict-models
(guide-size LSTM: SEQUENCE_LENGTH 60, HIDDEN_SIZE 128, NUM_LAYERS 2, one epoch on 6,000
synthetic bars: the latency is the architecture's, not the weights') and reused next time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_ROOT = REPO / "artifacts" / "bench" / "predict-models"
GUIDE_EXAMPLE = {
    "symbol": "NQZ5", "timestamp": "2024-01-01T12:00:00Z",
    "features": {"close": 16500, "volume": 1000, "rsi": 45, "dist_to_poc_ticks": 4},
    "position": 2, "balance": 102000, "unrealized_pnl": 500,
}


def train_models(root: Path) -> None:
    """Guide-size architectures, tiny training budgets: latency is what is measured here."""
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.lgbm import train_lgbm
    from trademl.models.lstm import train_lstm
    from trademl.models.ppo.train import train_ppo
    from trademl.models.store import ModelStore

    work = root.parent / (root.name + "-work")
    cfg = load_config(None, {
        "paths": {"model_root": str(root)},
        "lgbm": {"n_estimators": 200, "n_folds": 2, "num_threads": 2},
        "lstm": {"EPOCHS": 1, "N_FOLDS": 2, "TORCH_THREADS": 2},
        "ppo": {"total_timesteps": 8192, "n_envs": 16, "n_steps": 128, "batch_size": 512, "n_epochs": 1,
                "checkpoint_dir": str(work / "ckpt-ppo")},
    })
    bars = synthetic_bars(6_000, seed=21, edge_ic=0.1, symbol="NQ")
    dataset = dataset_from_bars(bars, cfg)
    t = time.perf_counter()
    train_lgbm(dataset, cfg, store=ModelStore(root))
    train_lstm(dataset, cfg, store_root=root, checkpoint_dir=work / "ckpt-lstm")
    train_ppo(bars, cfg)
    shutil.rmtree(work, ignore_errors=True)
    print(f"trained lgb_5m, lgb_30m, lstm, ppo into {root} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def snapshot_request(root: Path) -> dict:
    """The guide's input with every model fed: last-bar features + a sequence, from real feature code."""
    from trademl.data.features import compute_features
    from trademl.data.synthetic import synthetic_bars
    from trademl.predict.ensemble import EnsemblePredictor

    p = EnsemblePredictor(root, record=False)
    names = p.models.feature_names
    bars = synthetic_bars(600, seed=5, symbol="NQ")
    feats = compute_features(bars, symbol="NQ")[names]
    seq = feats.iloc[-p.models.history:].to_numpy()
    return {"symbol": "NQZ5", "features": dict(zip(names, map(float, seq[-1]))), "sequence": seq.tolist(),
            "position": 1, "balance": 100250.0, "unrealized_pnl": 125.0, "recent_actions": [0, 1, 0, 0, 2, 0, 1, 1, 0, 0]}


def ensure_stacker(root: Path) -> None:
    """A stacker beside the bench store's four models (fitted once, on the last quarter of the
    training bars: in sample for the base models, which only the latency measured here allows)."""
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.stacker import STACKER_KIND
    from trademl.models.stacker_train import train_stacker
    from trademl.models.store import ModelStore

    store = ModelStore(root)
    if store.versions(STACKER_KIND):
        return
    cfg = load_config(None, {"paths": {"model_root": str(root)}})
    dataset = dataset_from_bars(synthetic_bars(6_000, seed=21, edge_ic=0.1, symbol="NQ"), cfg)
    stored = {k: store.load(k) for k in ("lgb_5m", "lgb_30m", "lstm", "ppo")}
    train_stacker(dataset, stored, np.arange(4_500, 6_000), cfg, root)


def percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_in_process(root: Path, request: dict, n: int = 2000, method: str = "stacked") -> dict:
    """p50 / p99 of ``ensemble_predict``; ``method`` stacked (the stacker decides) or vote."""
    from trademl.config import load_config
    from trademl.predict.ensemble import EnsemblePredictor

    with tempfile.TemporaryDirectory() as logs:
        p = EnsemblePredictor(root, load_config(None, {"ensemble": {"method": method}}), log_dir=logs)
        out = p.ensemble_predict(request)
        assert out["models_used"] == ["lgb_5m", "lgb_30m", "lstm", "ppo"], out["warnings"]
        assert ("stacker" in out["model_versions"]) == (method == "stacked"), out["warnings"]
        for _ in range(100):
            p.ensemble_predict(request)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            p.ensemble_predict(request)
            times.append((time.perf_counter() - t) * 1000)
    p50, p99 = percentiles(times)
    return {"p50_ms": p50, "p99_ms": p99, "n": n}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REQUEST_TIMEOUT_S = 5.0


async def _read_response(reader) -> tuple[bytes, bytes]:
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status_line, await reader.readexactly(length)


async def _http_worker(host: str, port: int, request_bytes: bytes, next_send, results: list) -> None:
    """One keep-alive connection; a bare HTTP/1.1 client (httpx costs ~1 ms of CPU per request,
    which on two shared cores is taken from the server being measured)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (slot := next_send()) is not None:
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter()
            writer.write(request_bytes)
            try:
                status_line, body = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                results.append(((time.perf_counter() - t) * 1000, False))
                return  # this connection is unusable now; the others carry on
            ok = status_line.split()[1:2] == [b"200"] and b"ensemble_recommendation" in body
            results.append(((time.perf_counter() - t) * 1000, ok))
    finally:
        writer.close()


async def _load(port: int, request: dict, rate: float, seconds: float, clients: int) -> tuple[list[float], int]:
    total = int(rate * seconds)
    body = json.dumps(request).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    start = time.perf_counter() + 0.2
    counter = iter(range(total))

    def next_send():  # open loop: request i is due at start + i / rate, whoever sends it
        i = next(counter, None)
        return None if i is None else start + i / rate

    results: list = []
    await asyncio.gather(*(_http_worker("127.0.0.1", port, head + body, next_send, results) for _ in range(clients)))
    return [ms for ms, _ in results], sum(not ok for _, ok in results)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def served(root: Path, request: dict, pinned: bool = False, path: str = "/v1/predict"):
    """A `trademl serve` on a free loopback port with a private log dir, healthy and warmed with
    50 requests; yields (server process, port, url); stopped and cleaned up after. ``pinned``:
    the server on core 0 (taskset) and this process, the load client, on core 1, so neither
    steals the other's core (issue 17's measurement)."""
    import httpx

    port = free_port()
    logs = tempfile.mkdtemp()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRADEML_TOKEN", None)
    pin = ["taskset", "-c", "0"] if pinned else []
    if pinned:
        os.sched_setaffinity(0, {1})
    server = subprocess.Popen([*pin, str(BIN / "trademl"), "serve", "--port", str(port), "--model-root", str(root),
                               "--log-dir", logs], env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for _ in range(50):  # warm the server's code paths
            httpx.post(f"{url}{path}", json=request)
        yield server, port, url
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(logs, ignore_errors=True)
        if pinned:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def bench_http(root: Path, request: dict, seconds: float, rate: float = 200.0, clients: int = 8,
               pinned: bool = False) -> dict:
    import httpx

    with served(root, request, pinned) as (server, port, url):
        cpu_before = _cpu_seconds(server.pid)
        latencies, errors = asyncio.run(_load(port, request, rate, seconds, clients))
        server_cpu_ms = (_cpu_seconds(server.pid) - cpu_before) * 1000 / max(1, len(latencies))
        metrics = httpx.get(f"{url}/metrics").text
    p50, p99 = percentiles(latencies)
    def metric(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))

    return {"p50_ms": p50, "p99_ms": p99, "n": len(latencies), "errors": errors, "rate": rate, "clients": clients,
            "server_counted": int(metric("trademl_predictions_total{")), "server_cpu_ms_per_request": server_cpu_ms,
            "server_predict_mean_ms": metric("trademl_prediction_latency_ms_sum") / max(1.0, metric("trademl_prediction_latency_ms_count"))}


def one_bar_batch(n: int = 256) -> dict:
    """The issue-15 probe: ``n`` requests of one raw bar each (~39 KB for 256)."""
    bar = {"timestamp": "2024-01-02T14:30:00Z", "open": 16500.0, "high": 16501.0, "low": 16499.0, "close": 16500.5,
           "volume": 10}
    return {"requests": [{"symbol": "NQZ5", "bars": [dict(bar, close=16500.25 + (i % 4) * 0.25)]} for i in range(n)]}


async def _back_to_back(port: int, path: str, request: dict, stop_at: float, results: list) -> None:
    """POST ``request`` to ``path`` again and again on one keep-alive connection until ``stop_at``."""
    body = json.dumps(request).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            writer.write(head + body)
            status_line, answer = await asyncio.wait_for(_read_response(reader), 60)
            ok = status_line.split()[1:2] == [b"200"] and answer.count(b"ensemble_recommendation") == len(request["requests"])
            results.append(((time.perf_counter() - t) * 1000, ok))
    finally:
        writer.close()


async def _singles_beside_batches(port: int, request: dict, rate: float, seconds: float, clients: int):
    batches: list = []
    stop_at = time.perf_counter() + 0.2 + seconds
    (singles, errors), _ = await asyncio.gather(_load(port, request, rate, seconds, clients),
                                                _back_to_back(port, "/v1/predict/batch", one_bar_batch(), stop_at, batches))
    return singles, errors, batches


def bench_batch(root: Path, request: dict, seconds: float, rate: float = 50.0, clients: int = 4) -> dict:
    """Single requests alone, then beside back-to-back batches of 256: the singles' latency."""
    import httpx

    with served(root, request) as (_server, port, url):
        warm = httpx.post(f"{url}/v1/predict/batch", json=one_bar_batch(), timeout=60)
        assert warm.status_code == 200, warm.text[:300]
        alone, alone_errors = asyncio.run(_load(port, request, rate, seconds, clients))
        beside, beside_errors, batches = asyncio.run(_singles_beside_batches(port, request, rate, seconds, clients))
    a50, a99 = percentiles(alone)
    b50, b99 = percentiles(beside)
    batch_ms = [ms for ms, _ in batches]
    return {"alone_p50_ms": a50, "alone_p99_ms": a99, "beside_p50_ms": b50, "beside_p99_ms": b99,
            "beside_max_ms": max(beside), "n": len(beside), "errors": alone_errors + beside_errors,
            "batches": len(batches), "batch_errors": sum(not ok for _, ok in batches),
            "batch_median_ms": statistics.median(batch_ms) if batch_ms else float("nan"), "rate": rate, "clients": clients}


def _timed(argv, stdin: bytes | None = None, cwd=None, env=None) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, env=env)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {r.stderr.decode()[-500:]}")
    return elapsed


# What the `trademl` console script runs, with this interpreter and this checkout's src/ first
# on the path: the figure is this working tree's, whichever environment installed trademl.
CONSOLE_SCRIPT = [sys.executable, "-c", "import sys; from trademl.cli import main; sys.exit(main())"]


def _this_checkout_env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def bench_cold_start(root: Path, runs: int = 10) -> dict:
    """Medians of ``runs`` fresh processes each, after one that warms the page cache. This checkout's
    src/ is byte-compiled first, as pip does for an installed package (and `make setup` here)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True, capture_output=True)
    body = json.dumps(GUIDE_EXAMPLE).encode()
    env = _this_checkout_env()
    predict = CONSOLE_SCRIPT + ["predict", "--model-root", str(root)]
    script = [sys.executable, str(REPO / "scripts" / "predict_advanced.py"), "--model-root", str(root)]
    with tempfile.TemporaryDirectory() as cwd:
        _timed(predict, body, cwd, env)  # page cache warm
        ours = [_timed(predict, body, cwd, env) for _ in range(runs)]
        scripted = [_timed(script, body, cwd, env) for _ in range(runs)]
    guide = [_timed([sys.executable, "-c", "import torch, lightgbm"]) for _ in range(max(3, runs // 2))]
    return {"trademl_predict_s": statistics.median(ours), "script_s": statistics.median(scripted),
            "import_torch_lightgbm_s": statistics.median(guide), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, help="a store with all four kinds (default: train into artifacts/bench)")
    ap.add_argument("--retrain", action="store_true", help="retrain the default bench store")
    ap.add_argument("--seconds", type=float, default=10.0, help="HTTP load duration")
    ap.add_argument("--parts", default="inproc,http,cold,batch", help="comma list of inproc, http, cold, batch")
    ap.add_argument("--pin", action="store_true", help="HTTP part: server on core 0, load client on core 1 (taskset)")
    ap.add_argument("--rate", type=float, default=200.0, help="HTTP part: requests per second (issue 17: 200)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    root = args.model_root or DEFAULT_ROOT
    if args.model_root is None and (args.retrain or not root.exists()):
        shutil.rmtree(root, ignore_errors=True)
        train_models(root)
    warm_parts = parts & {"inproc", "http", "batch"}
    if warm_parts:  # the cold start needs neither (and so never writes into a --model-root given for it)
        ensure_stacker(root)
        request = snapshot_request(root)
    load = os.getloadavg()[0]
    skipped = {"p50_ms": float("nan"), "p99_ms": float("nan")}
    inproc = bench_in_process(root, request) if "inproc" in parts else skipped
    voted = bench_in_process(root, request, method="vote") if "inproc" in parts else skipped
    http = bench_http(root, request, args.seconds, rate=args.rate, pinned=args.pin) if "http" in parts else dict(
        skipped, rate=args.rate, clients=8, errors=0, n=0, server_counted=0, server_predict_mean_ms=float("nan"),
        server_cpu_ms_per_request=float("nan"))
    batch = bench_batch(root, request, args.seconds) if "batch" in parts else None
    cold = bench_cold_start(root) if "cold" in parts else {k: float("nan") for k in (
        "trademl_predict_s", "script_s", "import_torch_lightgbm_s")}
    rows = [
        ("in-process ensemble_predict p50 (stacker)", f"{inproc['p50_ms']:.3f} ms", "<= 2 ms", inproc["p50_ms"] <= 2),
        ("in-process ensemble_predict p99 (stacker)", f"{inproc['p99_ms']:.3f} ms", "<= 5 ms", inproc["p99_ms"] <= 5),
        ("in-process ensemble_predict p50 / p99 (vote)", f"{voted['p50_ms']:.3f} / {voted['p99_ms']:.3f} ms", "", True),
        (f"HTTP p50 ({http['rate']:.0f} req/s, {http['clients']} clients{', pinned' if args.pin else ''})", f"{http['p50_ms']:.2f} ms", "", True),
        (f"HTTP p99 ({http['rate']:.0f} req/s, {http['clients']} clients{', pinned' if args.pin else ''})", f"{http['p99_ms']:.2f} ms", "<= 15 ms",
         http["p99_ms"] <= 15),
        ("  of which in the predictor (mean, server side)", f"{http['server_predict_mean_ms']:.2f} ms", "", True),
        ("  server CPU per request (all threads)", f"{http['server_cpu_ms_per_request']:.2f} ms", "", True),
        ("HTTP errors", f"{http['errors']} of {http['n']} (server counted {http['server_counted']})", "0",
         http["errors"] == 0),
        ("cold start `trademl predict`", f"{cold['trademl_predict_s']:.3f} s", "<= 0.3 s", cold["trademl_predict_s"] <= 0.3),
        ("cold start scripts/predict_advanced.py", f"{cold['script_s']:.3f} s", "<= 0.5 s", cold["script_s"] <= 0.5),
        ("guide's way: python -c 'import torch, lightgbm'", f"{cold['import_torch_lightgbm_s']:.3f} s", "", True),
    ]
    if batch is not None:
        rows += [
            (f"singles alone p50 / p99 ({batch['rate']:.0f} req/s, {batch['clients']} clients)",
             f"{batch['alone_p50_ms']:.2f} / {batch['alone_p99_ms']:.2f} ms", "", True),
            ("singles beside batches of 256 p50 / p99", f"{batch['beside_p50_ms']:.2f} / {batch['beside_p99_ms']:.2f} ms",
             "p99 < 50 ms", batch["beside_p99_ms"] < 50),
            ("  singles beside batches, slowest", f"{batch['beside_max_ms']:.2f} ms", "", True),
            ("  batches of 256 answered (median time)", f"{batch['batches']} ({batch['batch_median_ms']:.0f} ms)", "", True),
            ("batch-part errors (singles, batches)", f"{batch['errors']} of {batch['n']}, {batch['batch_errors']}", "0",
             batch["errors"] == 0 and batch["batch_errors"] == 0),
        ]
    print(f"\nload average at start: {load:.2f} (2 cores shared: figures are noisy)")
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        status = "skipped" if value.startswith("nan") else "ok" if ok else "MISSED" if target else ""
        print(f"{name:<{width}}  {value:>28}  {target:>9}  {status}")
    ratio = cold["import_torch_lightgbm_s"] / cold["trademl_predict_s"]
    print(f"cold start ratio (guide's imports alone / trademl predict end to end): {ratio:.1f}x")
    print(json.dumps({"in_process": inproc, "in_process_vote": voted, "http": http, "cold_start": cold, "batch": batch, "load_average": load}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
