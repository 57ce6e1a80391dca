"""Issue 12's checks of the stacked ensemble, on generated markets with a known answer.

Two walk-forwards (every kind, ``--budget small``, 3 folds, ``confidence_threshold = "auto"``),
what ``trademl backtest --synthetic 30000 --edge-ic X --budget small --folds 3 --threshold auto
--json PATH`` runs:

* planted edge, IC 0.15: the ensemble's out-of-sample Sharpe against the best single model's
  (target >= 0.9x), its deflated Sharpe over every candidate and threshold (target >= 0.95),
  the ECE of its probability (target <= 0.03);
* random walk (IC 0): the share of bars it said BUY or SELL (target <= 1%), and no candidate's
  deflated Sharpe at 0.95 or above.

    .venv/bin/python bench/bench_stacker.py [--bars 30000] [--folds 3] [--seed 0] [--json OUT]

About 4-5 minutes per market on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from trademl.backtest.walkforward import ENSEMBLE, backtest_models
from trademl.config import load_config


def walk_forward(bars: int, edge_ic: float, folds: int, seed: int = 0) -> dict:
    cfg = load_config(None, {"backtest": {"confidence_threshold": "auto"}})
    started = time.perf_counter()
    result = backtest_models(None, cfg, synthetic=bars, edge_ic=edge_ic, budget="small", n_folds=folds,
                             seed=seed, out=f"artifacts/bench/stacker_ic{edge_ic:g}.html")
    out = result.to_json()
    out["seconds"] = time.perf_counter() - started
    signals = result.signals  # a BUY/SELL that counted: above its fold's threshold
    out["share_buy_sell"] = float(((signals["action"] != 0) & (signals["confidence"] > signals["threshold"])).mean())
    out["thresholds"] = [f.thresholds[ENSEMBLE] for f in result.folds]
    return out


def best_single(runs: dict) -> tuple[str, float]:
    alone = {k: v["sharpe"] for k, v in runs.items() if k.endswith(" alone") and v["sharpe"] is not None}
    name = max(alone, key=alone.get)
    return name, alone[name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=30_000)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the generated markets' seed")
    ap.add_argument("--json", help="write both results here")
    args = ap.parse_args()
    edge = walk_forward(args.bars, 0.15, args.folds, args.seed)
    walk = walk_forward(args.bars, 0.0, args.folds, args.seed)
    ens = edge["runs"][ENSEMBLE]
    name, sharpe = best_single(edge["runs"])
    candidates = [k for k in walk["runs"] if k not in ("flat", "buy_and_hold", "random")]
    top_dsr = max((walk["runs"][k]["dsr"] or 0.0) for k in candidates)
    rows = [
        ("planted edge: ensemble Sharpe / best single", f"{ens['sharpe']:.2f} / {sharpe:.2f} ({name}): "
         f"{ens['sharpe'] / sharpe:.2f}x", ">= 0.9x", ens["sharpe"] >= 0.9 * sharpe),
        (f"planted edge: ensemble DSR over {edge['dsr_trials']} candidates", f"{ens['dsr']:.3f}", ">= 0.95",
         ens["dsr"] >= 0.95),
        ("planted edge: ECE of the probability", f"{edge['ensemble_calibration']['ece']:.3f}", "<= 0.03",
         edge["ensemble_calibration"]["ece"] <= 0.03),
        ("random walk: bars with BUY/SELL", f"{walk['share_buy_sell']:.2%}", "<= 1%", walk["share_buy_sell"] <= 0.01),
        ("random walk: highest candidate DSR", f"{top_dsr:.3f}", "< 0.95", top_dsr < 0.95),
        ("random walk: ECE of the probability", f"{walk['ensemble_calibration']['ece']:.3f}", "", True),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, target, ok in rows:
        print(f"{label:<{width}}  {value:>40}  {target:>8}  {'ok' if ok else 'MISSED' if target else ''}")
    print(f"auto thresholds per fold: planted {edge['thresholds']}, random walk {walk['thresholds']}; "
          f"{edge['seconds']:.0f} s + {walk['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"planted_edge": edge, "random_walk": walk}, f, indent=2, allow_nan=False,
                      default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
