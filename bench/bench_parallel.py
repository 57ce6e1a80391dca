"""Issue 16: a walk-forward's folds on two Ray workers against the same walk-forward in process.

Every kind, ``--budget small``, on a generated market with a planted edge: the same run twice
in one process, ``workers=1`` (in process, no Ray) and ``workers=2`` (a local Ray embedded in
the run, its start-up included in the time), and whether the two traded alike: every run's
trades and P&L to the cent. torch trains with one thread in both, so the arithmetic is the
same (with two threads an LSTM may round differently; ``--workers 2`` gives each worker
``cores // 2`` threads).

    .venv/bin/python bench/bench_parallel.py [--bars 60000] [--folds 4]

Target: >= 1.6x faster on two cores, identical results.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from trademl.backtest.walkforward import synthetic_dataset, walk_forward_backtest
from trademl.config import load_config


def timed(dataset, cfg, folds: int, workers: int):
    started = time.perf_counter()
    result = walk_forward_backtest(dataset, cfg, budget="small", n_folds=folds, workers=workers)
    return result, time.perf_counter() - started


def same_trading(a, b) -> bool:
    return all(np.array_equal(a.runs[k].trade_qty, b.runs[k].trade_qty)
               and np.allclose(a.runs[k].pnl, b.runs[k].pnl, rtol=0, atol=0.005) for k in a.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=60_000)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cfg = load_config(None, {"lstm": {"TORCH_THREADS": 1}})
    dataset, cfg = synthetic_dataset(args.bars, 0.15, 0, cfg)
    print(f"{args.bars:,} bars, {args.folds} folds, every kind, budget small; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    one, t1 = timed(dataset, cfg, args.folds, 1)
    predict = sum(f.seconds["predict"] for f in one.folds)
    print(f"workers 1 (in process): {t1:7.1f} s (of which predicting and trading the folds, in order: {predict:.1f} s)")
    two, t2 = timed(dataset, cfg, args.folds, 2)
    print(f"workers 2 (local Ray):  {t2:7.1f} s")
    same = same_trading(one, two) and one.to_json()["runs"] == two.to_json()["runs"]
    print(f"speed-up {t1 / t2:.2f}x (target >= 1.6x); identical trades and P&L: {same}; load {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bars": args.bars, "folds": args.folds, "seconds_1": t1, "seconds_2": t2,
                       "speedup": t1 / t2, "identical": same}, f, indent=2)


if __name__ == "__main__":
    main()
