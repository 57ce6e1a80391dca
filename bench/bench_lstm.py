"""LSTM benchmark: sequence memory, training throughput, batch-1 latency ONNX Runtime vs PyTorch.

    .venv/bin/python bench/bench_lstm.py                      # everything, issue-sized
    .venv/bin/python bench/bench_lstm.py --train-sequences 5120 --skip-memory   # a quick look

1. Memory: peak RSS (measured in fresh subprocesses) of the strided sequences for
   1,000,000 bars x 40 features, over the peak RSS of the feature matrix alone. The
   sequences path finds the usable window ends, fits the normaliser on 80 % of the rows and
   gathers + normalises every window once in training-sized batches. Target: < 2x.
2. Training throughput (sequences/s) for one epoch of --train-sequences windows with the
   default model (SEQUENCE_LENGTH 60, HIDDEN_SIZE 128, NUM_LAYERS 2, bidirectional,
   BATCH_SIZE 256) through the real training loop (``fit_stage``), 2 torch threads.
3. Batch-1 latency, median and p99, of the served path (ONNX Runtime, several session
   settings, and the LSTMRuntime with its input checks and normalisation) against PyTorch
   eager on the same weights, in the same run. Target: ONNX p99 <= 1.5 ms.

Timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

T, F, HIDDEN, LAYERS = 60, 40, 128, 2
SESSION_BARS = 1380  # a Globex session: the memory test's segments have real-sized gaps


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_child(mode: str, n_bars: int) -> dict:
    """Run in a fresh interpreter: peak RSS before and after building what ``mode`` names."""
    from trademl.data.sequences import Normalizer, rows_covered, valid_window_ends, windows_at

    base = peak_rss_mb()
    rng = np.random.default_rng(0)
    X = np.empty((n_bars, F), dtype=np.float32)
    for i in range(0, n_bars, 100_000):  # fill in slices: no float64 temporary the size of X
        X[i : i + 100_000] = rng.standard_normal((min(100_000, n_bars - i), F), dtype=np.float32)
    seg = (np.arange(n_bars) // SESSION_BARS).astype(np.int32)
    X[np.arange(n_bars) % SESSION_BARS < 30] = np.nan  # feature warm-up at every session start
    windows = 0
    if mode == "sequences":
        ends = valid_window_ends(X, seg, T)
        fit = ends[: int(len(ends) * 0.8)]
        norm = Normalizer.fit(X, rows_covered(fit, T, n_bars), [f"f{i}" for i in range(F)])
        for i in range(0, len(ends), 256):
            batch = norm.apply(windows_at(X, ends[i : i + 256], T))
            windows += len(batch)
    return {"mode": mode, "base_mb": base, "peak_mb": peak_rss_mb(), "matrix_mb": X.nbytes / 2**20, "windows": windows}


def bench_memory(n_bars: int) -> dict:
    out = {}
    for mode in ("matrix", "sequences"):
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--memory-bars", str(n_bars)],
            capture_output=True, text=True, check=True,
        )
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    matrix = out["matrix"]["peak_mb"] - out["matrix"]["base_mb"]
    seqs = out["sequences"]["peak_mb"] - out["sequences"]["base_mb"]
    return {
        "bars": n_bars, "features": F, "sequence_length": T,
        "feature_matrix_mb": round(out["matrix"]["matrix_mb"], 1),
        "peak_rss_matrix_only_mb": round(matrix, 1),
        "peak_rss_with_sequences_mb": round(seqs, 1),
        "ratio": round(seqs / matrix, 3),
        "ratio_to_matrix_bytes": round(seqs / (out["matrix"]["matrix_mb"]), 3),
        "windows_gathered": out["sequences"]["windows"],
        "copied_windows_would_take_mb": round(out["sequences"]["windows"] * T * F * 4 / 2**20, 1),
    }


def bench_training(n_sequences: int) -> dict:
    import torch

    from trademl.config import LSTMConfig
    from trademl.models.lstm_train import SequenceTask, fit_stage

    torch.set_num_threads(2)
    n_valid = 512
    n = n_sequences + n_valid + T
    rng = np.random.default_rng(1)
    task = SequenceTask(
        X=rng.standard_normal((n, F), dtype=np.float32),
        feature_names=[f"f{i}" for i in range(F)],
        signal=rng.integers(0, 3, n).astype(np.float64),
        movement=rng.standard_normal(n) * 1e-3,
        risk=rng.random(n),
        sequence_length=T,
    )
    ends = np.arange(T - 1, n)
    settings = LSTMConfig(EPOCHS=1).model_dump()
    marks = []
    fit_stage(task, ends[:n_sequences], ends[-n_valid:], settings, name="bench", stage_number=0,
              on_batch=lambda b: marks.append(time.perf_counter()))
    # From the end of the first batch to the end of the last: excludes one-off set-up.
    seconds = marks[-1] - marks[0]
    rate = (n_sequences - settings["BATCH_SIZE"]) / seconds
    return {"sequences": n_sequences, "batch_size": settings["BATCH_SIZE"], "sequences_per_s": round(rate, 1),
            "epoch_200k_s_estimate": round(200_000 / rate, 1)}


def _latency(fn, runs: int, warmup: int = 50) -> dict:
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return {"median_ms": round(float(np.median(times)) * 1e3, 3), "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3)}


def bench_latency(runs: int) -> dict:
    import onnxruntime as ort
    import torch

    from trademl.models.lstm_model import LSTMSignalNet, ServingHead, export_onnx
    from trademl.models.kinds.lstm import LSTMRuntime
    from trademl.models.onnx_session import session_options as latency_session_options

    torch.manual_seed(0)
    net = LSTMSignalNet(F, HIDDEN, LAYERS, 0.2).eval()
    head = ServingHead(net, 1e-3, [3.0, 0.6, 0.6]).eval()
    x = np.random.default_rng(2).standard_normal((1, T, F)).astype(np.float32)
    xt = torch.from_numpy(x)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, 1e-3, [3.0, 0.6, 0.6], T, F, path)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                results[f"pytorch eager, {threads} thread(s)"] = _latency(lambda: head(xt), runs)
        for threads, level in ((1, "ORT_ENABLE_ALL"), (2, "ORT_ENABLE_ALL"), (1, "ORT_ENABLE_BASIC")):
            so = latency_session_options(threads)
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            results[f"onnxruntime, {threads} thread(s), {level}"] = _latency(lambda: sess.run(None, {"sequence": x}), runs)
        sess = ort.InferenceSession(str(path), latency_session_options(1), providers=["CPUExecutionProvider"])
        runtime = LSTMRuntime(sess, [f"f{i}" for i in range(F)], np.zeros(F), np.ones(F), T, 5)
        results["LSTMRuntime.heads (served path: checks + normalise + ORT, 1 thread)"] = _latency(lambda: runtime.heads(x), runs)
        with torch.no_grad():
            expected = [t.numpy() for t in head(xt)]
        got = sess.run(None, {"sequence": x})
        results["max_abs_diff_onnx_vs_pytorch"] = float(max(np.max(np.abs(a - b)) for a, b in zip(expected, got)))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-sequences", type=int, default=200_000)
    p.add_argument("--memory-bars", type=int, default=1_000_000)
    p.add_argument("--latency-runs", type=int, default=2_000)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--memory-child", choices=["matrix", "sequences"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_bars)))
        return
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (timings on a shared machine are noisy)")
    if not args.skip_memory:
        m = bench_memory(args.memory_bars)
        verdict = "PASS" if max(m["ratio"], m["ratio_to_matrix_bytes"]) < 2 else "FAIL"
        print(f"\nmemory: {m['bars']:,} bars x {F} features, windows of {T}")
        print(f"  feature matrix {m['feature_matrix_mb']} MB; peak RSS matrix only +{m['peak_rss_matrix_only_mb']} MB, "
              f"with all {m['windows_gathered']:,} sequences gathered +{m['peak_rss_with_sequences_mb']} MB")
        print(f"  ratio {m['ratio']}x the matrix-only peak, {m['ratio_to_matrix_bytes']}x the matrix's bytes (target < 2x: {verdict}); "
              f"copying the windows would take {m['copied_windows_would_take_mb']:,} MB")
    if not args.skip_train:
        t = bench_training(args.train_sequences)
        print(f"\ntraining: {t['sequences']:,} sequences, default model, batch {t['batch_size']}, 2 threads")
        print(f"  {t['sequences_per_s']} sequences/s -> one epoch of 200k sequences ~ {t['epoch_200k_s_estimate']} s")
    lat = bench_latency(args.latency_runs)
    diff = lat.pop("max_abs_diff_onnx_vs_pytorch")
    print(f"\nbatch-1 latency over {args.latency_runs} calls (default model, T={T}, F={F}):")
    for name, r in lat.items():
        print(f"  {name:<72} median {r['median_ms']:7.3f} ms   p99 {r['p99_ms']:7.3f} ms")
    ort_best = lat["onnxruntime, 1 thread(s), ORT_ENABLE_ALL"]
    eager = lat["pytorch eager, 1 thread(s)"]
    print(f"  PyTorch eager / ONNX Runtime (1 thread), median: {eager['median_ms'] / ort_best['median_ms']:.2f}x; "
          f"ONNX p99 {ort_best['p99_ms']} ms (target <= 1.5 ms: {'PASS' if ort_best['p99_ms'] <= 1.5 else 'FAIL'})")
    print(f"  max |ONNX - PyTorch| = {diff:.2e}")


if __name__ == "__main__":
    main()
