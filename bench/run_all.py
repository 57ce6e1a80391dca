#!/usr/bin/env python3
"""Run every benchmark in bench/, one after another, each in its own process.

`make bench` calls this. Each script compares trademl with its peer in the same run and
prints a ratio; this runner only sequences them (one at a time, so they never compete
for the two cores) and prints a closing list of which ones ran and how long they took.
Usage: `.venv/bin/python bench/run_all.py [name ...]` (e.g. `features backtest`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bars_load", "features", "backtest", "lgbm", "lstm", "ppo", "rl_algorithms", "predict", "monitor"]


def main(names: list[str]) -> int:
    chosen = names or ORDER
    unknown = [n for n in chosen if not (HERE / f"bench_{n}.py").exists()]
    if unknown:
        print(f"unknown benchmark(s): {unknown}; have {ORDER}", file=sys.stderr)
        return 2
    results = []
    for name in chosen:
        print(f"\n=== bench_{name}.py ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")])
        results.append((name, rc, time.perf_counter() - start))
    print("\nbenchmark        exit  seconds")
    for name, rc, secs in results:
        print(f"{name:<16} {rc:>4}  {secs:7.1f}")
    return max(rc for _, rc, _ in results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
