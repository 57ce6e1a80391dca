"""The five sequence architectures side by side: training throughput, batch-1 ONNX latency, skill.

    .venv/bin/python bench/bench_sequence_architectures.py            # all three parts
    .venv/bin/python bench/bench_sequence_architectures.py --skip-skill --train-sequences 1024

1. Training throughput (sequences/s) of one epoch through the real loop (``fit_stage``) at
   the default size (SEQUENCE_LENGTH 60, 40 features, HIDDEN_SIZE 128, NUM_LAYERS 2, BATCH_SIZE
   256, 2 torch threads), on the device ``[lstm] device = "auto"`` picks.
2. Batch-1 latency, median and p99, of the exported model.onnx under ONNX Runtime (1 thread),
   the served path's engine, same size, and its max |ONNX - PyTorch|.
3. Out-of-sample skill on the planted market of tests/test_lstm.py (24,000 bars, edge rank
   IC 0.3, the small config: SEQUENCE_LENGTH 8, HIDDEN_SIZE 16, one layer, 5 epochs): the
   walk-forward accuracy next to the majority class's, movement correlation, training seconds.

Timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the planted market and small config of test_lstm.py

from bench_lstm import _latency  # noqa: E402  (same timing loop as the LSTM benchmark)

T, F = 60, 40


def default_settings(arch: str) -> dict:
    from trademl.config import LSTMConfig

    return LSTMConfig(architecture=arch, EPOCHS=1).model_dump()


def bench_training(arch: str, n_sequences: int) -> dict:
    import torch

    from trademl.models.lstm_train import SequenceTask, fit_stage, resolve_device

    torch.set_num_threads(2)
    n_valid = 256
    n = n_sequences + n_valid + T
    rng = np.random.default_rng(1)
    task = SequenceTask(X=rng.standard_normal((n, F), dtype=np.float32), feature_names=[f"f{i}" for i in range(F)],
                        signal=rng.integers(0, 3, n).astype(np.float64), movement=rng.standard_normal(n) * 1e-3,
                        risk=rng.random(n), sequence_length=T)
    ends = np.arange(T - 1, n)
    settings = default_settings(arch)
    marks = []
    fit_stage(task, ends[:n_sequences], ends[-n_valid:], settings, name="bench", stage_number=0,
              on_batch=lambda b: marks.append(time.perf_counter()))
    rate = (n_sequences - settings["BATCH_SIZE"]) / (marks[-1] - marks[0])  # first batch's set-up excluded
    return {"sequences_per_s": rate, "device": resolve_device(settings["device"]).type}


def bench_latency(arch: str, runs: int) -> dict:
    import onnxruntime as ort
    import torch

    from trademl.models.lstm_model import ServingHead, export_onnx
    from trademl.models.onnx_session import session_options
    from trademl.models.sequence_nets import build_net

    torch.manual_seed(0)
    net = build_net(F, default_settings(arch)).eval()
    x = np.random.default_rng(2).standard_normal((1, T, F)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, 1e-3, [3.0, 0.6, 0.6], T, F, path)
        sess = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        result = _latency(lambda: sess.run(None, {"sequence": x}), runs)
        with torch.no_grad():
            expected = [t.numpy() for t in ServingHead(net, 1e-3, [3.0, 0.6, 0.6]).eval()(torch.from_numpy(x))]
        got = sess.run(None, {"sequence": x})
    result["max_abs_diff"] = float(max(np.max(np.abs(a - b)) for a, b in zip(expected, got)))
    result["parameters"] = sum(p.numel() for p in net.parameters())
    return result


def bench_skill(arch: str, dataset) -> dict:
    from test_lstm import small_config

    from trademl.models.lstm import train_lstm

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cv = train_lstm(dataset, small_config(Path(tmp), architecture=arch), checkpoint_dir=Path(tmp) / "ckpt").metrics["cv"]
        seconds = time.perf_counter() - start
    return {"accuracy": cv["accuracy"], "majority": cv["majority_accuracy"], "corr": cv["movement_corr"],
            "n_test": cv["n_test"], "seconds": seconds}


def main() -> None:
    from trademl.models.sequence_nets import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-sequences", type=int, default=2_048)
    p.add_argument("--latency-runs", type=int, default=1_000)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-skill", action="store_true")
    p.add_argument("--arch", action="append", choices=ARCHITECTURES, help="only these (repeatable)")
    args = p.parse_args()
    archs = args.arch or ARCHITECTURES
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (timings on a shared machine are noisy)")
    dataset = None
    if not args.skip_skill:
        from test_lstm import synthetic_dataset

        dataset = synthetic_dataset(24_000, edge_ic=0.3, seed=1)
    print("| architecture | parameters | train seq/s (device) | ONNX batch-1 median / p99 ms | max abs diff |"
          " OOS accuracy vs majority | movement corr | skill train s |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in archs:
        train = bench_training(arch, args.train_sequences) if not args.skip_train else None
        lat = bench_latency(arch, args.latency_runs)
        sk = bench_skill(arch, dataset) if dataset is not None else None
        train_txt = f"{train['sequences_per_s']:,.0f} ({train['device']})" if train else "-"
        skill_txt = (f"{sk['accuracy']:.3f} vs {sk['majority']:.3f} (n {sk['n_test']:,}) | {sk['corr']:.3f} | "
                     f"{sk['seconds']:.1f}") if sk else "- | - | -"
        print(f"| {arch} | {lat['parameters']:,} | {train_txt} | {lat['median_ms']:.3f} / {lat['p99_ms']:.3f} | "
              f"{lat['max_abs_diff']:.1e} | {skill_txt} |", flush=True)


if __name__ == "__main__":
    main()
