"""Bad-print check speed: trademl.data.bad_prints.find_bad_prints against a plain pandas
Hampel filter (centred rolling median and rolling MAD of the closes over every bar), and
what the check adds to load_bars.

    .venv/bin/python bench/bench_bad_prints.py [--bars 1000000] [--repeats 3]

Both run on the same synthetic minute bars with 100 planted bad prints (a low 6% under the
close: twice the limit at these bars' usual MAD, 5e-4, though less in their volatile
regimes); trademl must find most of them and nothing else. Times are the best of
``repeats`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from trademl.data.bad_prints import BadPrintRule, find_bad_prints
from trademl.data.bars import load_bars
from trademl.data.synthetic import synthetic_bars


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def pandas_hampel(close: np.ndarray, window: int = 31) -> np.ndarray:
    """What a user would write: two centred rolling medians over every bar."""
    s = pd.Series(np.log(close))
    centre = s.rolling(window, center=True, min_periods=1).median()
    return (s - centre).abs().rolling(window, center=True, min_periods=1).median().to_numpy()


def main(n_bars: int, repeats: int) -> None:
    bars = synthetic_bars(n_bars, seed=1).drop(columns=["edge"])
    planted = np.linspace(1_000, n_bars - 1_000, 100).astype(int)
    bars.iloc[planted, bars.columns.get_loc("low")] = bars["close"].to_numpy()[planted - 1] * 0.94
    prices = {c: bars[c].to_numpy() for c in ("open", "high", "low", "close")}
    stamps = bars.index.as_unit("ns").asi8
    found = find_bad_prints(prices, stamps, BadPrintRule())
    assert set(found.rows) <= set(planted) and len(found.rows) >= 80, "most planted prints, and only them"
    print(f"found {len(found.rows)} of the {len(planted)} planted, nothing else")
    ours = best_of(lambda: find_bad_prints(prices, stamps, BadPrintRule()), repeats)
    peer = best_of(lambda: pandas_hampel(prices["close"]), repeats)
    print(f"{n_bars:,} bars: find_bad_prints {ours:.3f} s, pandas Hampel (2 rolling medians) {peer:.3f} s, "
          f"ratio {peer / ours:.1f}x")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bars.csv"
        bars.to_csv(path)
        off = best_of(lambda: load_bars(path, bad_prints=BadPrintRule(mads=None)), repeats)
        on = best_of(lambda: load_bars(path, repair=True), repeats)
    print(f"load_bars CSV: {off:.3f} s without the check, {on:.3f} s with it (repair, 100 clipped): +{on - off:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.bars, args.repeats)
