"""PPO, A2C and SAC side by side on the same planted market, in one run (never part of the test run).

The market is the learning tests' (tests/test_ppo_train.py, tests/test_rl_algorithms.py):
200,000 synthetic NQ minute bars, planted edge IC 0.15 at horizon 5, the edge passed as the
feature "edge"; its features are computed once and shared. Each algorithm trains with
`trademl.models.ppo.train.train_ppo` at the settings of its learning test (PPO: the [ppo]
defaults; A2C: 16 envs x 8 steps per rollout; SAC: the sac_* defaults) and is evaluated
deterministically on the held-out fifth: timesteps/s of training, net P&L, its share of the
one-contract oracle and of the 5-contract one, trades and mean |position|.

    .venv/bin/python bench/bench_rl_algorithms.py                    # the learning tests' budgets
    .venv/bin/python bench/bench_rl_algorithms.py --timesteps 100000  # one budget for all three
    .venv/bin/python bench/bench_rl_algorithms.py --edge-ic 0         # the random walk
    .venv/bin/python bench/bench_rl_algorithms.py --algos a2c --defaults --timesteps 1000000
                                                                      # A2C at the [ppo] defaults

Prints a line per algorithm and one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

N_BARS, EDGE_HORIZON = 200_000, 5
# The settings and budgets of the learning tests (planted edge).
ALGORITHMS = {
    "ppo": ({}, 150_000),
    "a2c": ({"n_envs": 16, "n_steps": 8}, 150_000),
    "sac": ({}, 60_000),
}


def shared_market(edge_ic: float):
    from trademl.config import Config
    from trademl.data.synthetic import synthetic_bars
    from trademl.market.contracts import spec_of_bars
    from trademl.models.ppo.train import observation_features

    bars = synthetic_bars(N_BARS, seed=3, edge_ic=edge_ic, edge_horizon=EDGE_HORIZON)
    cfg = Config()
    cfg.data.extra_feature_columns = ["edge"]
    features, schema = observation_features(bars, spec_of_bars(bars, "NQ", cfg), cfg)
    return bars, cfg, features, schema


def bench_algorithm(algo: str, settings: dict, timesteps: int, market, threads: int) -> dict:
    from trademl.models.ppo.train import train_ppo

    bars, base, features, schema = market
    with tempfile.TemporaryDirectory() as tmp:
        cfg = base.model_copy(deep=True)
        cfg.paths.model_root = os.path.join(tmp, "models")
        cfg.ppo.checkpoint_dir = os.path.join(tmp, "ckpt")
        for k, v in {"algo": algo, "total_timesteps": timesteps, "torch_threads": threads, **settings}.items():
            setattr(cfg.ppo, k, v)
        m = train_ppo(bars, cfg, features=features, schema=schema, store=False).metrics
    max_oracle = m.get("oracle_max_position_pnl")
    return {"algo": algo, "timesteps": m["timesteps"], "train_seconds": m["train_seconds"],
            "timesteps_per_s": m["timesteps_per_second"], "net_pnl": m["net_pnl"], "oracle_pnl": m.get("oracle_pnl"),
            "pnl_vs_oracle": m.get("pnl_vs_oracle"),
            "pnl_vs_max_position_oracle": round(m["net_pnl"] / max_oracle, 4) if max_oracle and max_oracle > 0 else None,
            "trades": m["trades"], "eval_decisions": m["eval_decisions"], "mean_abs_position": m["mean_abs_position"],
            "held_out_psr": m["held_out_sharpe"]["psr"], "settings": settings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=None, help="one budget for all (default: the learning tests')")
    ap.add_argument("--edge-ic", type=float, default=0.15, help="planted edge strength (0: random walk)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--algos", default="ppo,a2c,sac")
    ap.add_argument("--defaults", action="store_true", help="every algorithm at the [ppo] defaults (A2C: 256 x 32)")
    args = ap.parse_args()
    market = shared_market(args.edge_ic)
    results = []
    for algo in args.algos.split(","):
        settings, steps = ALGORITHMS[algo]
        settings = {} if args.defaults else settings
        r = bench_algorithm(algo, settings, args.timesteps or steps, market, args.threads)
        results.append(r)
        share = "-" if r["pnl_vs_oracle"] is None else f"{r['pnl_vs_oracle']:.2f}"
        share5 = "-" if r["pnl_vs_max_position_oracle"] is None else f"{r['pnl_vs_max_position_oracle']:.2f}"
        print(f"{algo.upper()}: {r['timesteps_per_s']:,.0f} timesteps/s ({r['timesteps']:,} in {r['train_seconds']} s); "
              f"held-out net P&L ${r['net_pnl']:,.0f}, / oracle {share} (1 contract), {share5} (5 contracts), "
              f"trades {r['trades']:,} of {r['eval_decisions']:,} decisions, mean |pos| {r['mean_abs_position']}",
              flush=True)
    print(json.dumps({"bench": "rl_algorithms", "edge_ic": args.edge_ic, "results": results, "threads": args.threads,
                      "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                      "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
