"""Loading speed: trademl.data.bars.load_bars against a bare pandas read of the same file.

The peer is what a user would write without trademl: ``pd.read_csv`` with the stamps parsed
into an index (no validation, no line numbers, no repair). The ratio is the price of
checking every row. Run: ``.venv/bin/python bench/bench_bars_load.py [n_bars]``.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from trademl.data.bars import load_bars, read_bars_chunks
from trademl.data.synthetic import synthetic_bars


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peer_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, engine="c")
    frame.index = pd.to_datetime(frame.pop("timestamp"), format="ISO8601", utc=True)
    return frame


def main(n_bars: int = 1_000_000) -> None:
    bars = synthetic_bars(n_bars, seed=1).drop(columns=["edge"])
    with tempfile.TemporaryDirectory() as tmp:
        csv, parquet = Path(tmp) / "bars.csv", Path(tmp) / "bars.parquet"
        bars.to_csv(csv)
        bars.to_parquet(parquet)
        rows = [
            ("CSV", best_of(lambda: load_bars(csv)), best_of(lambda: peer_csv(csv))),
            ("Parquet", best_of(lambda: load_bars(parquet)), best_of(lambda: pd.read_parquet(parquet))),
            ("CSV, chunks of 200k", best_of(lambda: sum(len(c) for c in read_bars_chunks(csv, 200_000))),
             best_of(lambda: peer_csv(csv))),
        ]
    print(f"{n_bars:,} synthetic minute bars (best of 3)")
    print(f"{'format':<22}{'trademl s':>11}{'pandas s':>11}{'ratio':>8}")
    for name, ours, peer in rows:
        print(f"{name:<22}{ours:>11.3f}{peer:>11.3f}{ours / peer:>8.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
