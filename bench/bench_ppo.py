"""PPO speed, side by side in one run (never part of the test run):

1. peer: stable-baselines3 PPO at its default settings on gym-anytrading's forex env
   (`forex-v0`, FOREX_EURUSD_1H_ASK, default window and frame bounds), timesteps/s;
2. ours, end to end: `trademl.models.ppo.train.train_ppo` on the synthetic market with a
   planted edge, at the [ppo] defaults (the settings the learning test passes with),
   1,000,000 timesteps: wall seconds, timesteps/s, and the held-out result vs. the oracle;
3. the raw vectorised environment alone: random actions, N envs, env-steps/s.

    .venv/bin/python bench/bench_ppo.py                 # full: 1M timesteps of ours, 20k of the peer
    .venv/bin/python bench/bench_ppo.py --quick         # 200k / 5k: a smoke run
    .venv/bin/python bench/bench_ppo.py --threads 2     # torch threads for both trainers

Needs gym-anytrading (bench/requirements.txt). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

EDGE_IC, EDGE_HORIZON, N_BARS = 0.15, 5, 200_000  # the learning test's market (tests/test_ppo_train.py)


def bench_peer(steps: int, threads: int) -> dict:
    import gym_anytrading  # noqa: F401  (registers forex-v0)
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(threads)
    env = gym.make("forex-v0")
    model = PPO("MlpPolicy", env, seed=0, device="cpu", verbose=0)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = int(model.num_timesteps)
    return {"timesteps": n, "seconds": round(dt, 2), "timesteps_per_s": round(n / dt, 1),
            "cpu_seconds": round(cpu, 2), "timesteps_per_cpu_s": round(n / cpu, 1)}


def market_and_config(timesteps: int, threads: int, tmp: str):
    from trademl.config import Config
    from trademl.data.synthetic import synthetic_bars

    bars = synthetic_bars(N_BARS, seed=3, edge_ic=EDGE_IC, edge_horizon=EDGE_HORIZON)
    cfg = Config()
    cfg.data.extra_feature_columns = ["edge"]
    cfg.ppo.total_timesteps = timesteps
    cfg.ppo.torch_threads = threads
    cfg.ppo.checkpoint_dir = os.path.join(tmp, "ckpt")
    cfg.paths.model_root = os.path.join(tmp, "models")
    return bars, cfg


def bench_ours(timesteps: int, threads: int) -> dict:
    from trademl.models.ppo.train import train_ppo

    with tempfile.TemporaryDirectory() as tmp:
        bars, cfg = market_and_config(timesteps, threads, tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        result = train_ppo(bars, cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = result.metrics
    return {"timesteps": m["timesteps"], "train_seconds": m["train_seconds"], "wall_seconds": round(wall, 2),
            "cpu_seconds_end_to_end": round(cpu, 2), "timesteps_per_cpu_s_end_to_end": round(m["timesteps"] / cpu, 1),
            "timesteps_per_s": m["timesteps_per_second"], "net_pnl": m["net_pnl"], "oracle_pnl": m["oracle_pnl"],
            "pnl_vs_oracle": m["pnl_vs_oracle"], "trades": m["trades"], "mean_abs_position": m["mean_abs_position"],
            "settings": {k: getattr(cfg.ppo, k) for k in ("n_envs", "n_steps", "batch_size", "n_epochs", "gamma",
                                                          "gae_lambda", "window", "net_arch", "reward")}}


def bench_raw_env(n_envs: int, steps: int) -> dict:
    from trademl.models.ppo.train import make_vec_env, prepare_market

    with tempfile.TemporaryDirectory() as tmp:
        bars, cfg = market_and_config(0, 1, tmp)
        prepared = prepare_market(bars, cfg)
    env = make_vec_env(prepared, cfg, n_envs=n_envs, seed=0)
    env.reset()
    actions = np.random.default_rng(0).integers(0, 3, (steps, n_envs))
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t0
    return {"n_envs": n_envs, "env_steps": n_envs * steps, "seconds": round(dt, 3),
            "env_steps_per_s": round(n_envs * steps / dt), "obs_dim": prepared.obs_spec.obs_dim}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k timesteps of ours, 5k of the peer")
    ap.add_argument("--timesteps", type=int, default=None, help="ours (default 1,000,000)")
    ap.add_argument("--peer-steps", type=int, default=None, help="the peer's (default 20,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    ap.add_argument("--env-envs", type=int, default=4096)
    args = ap.parse_args()
    ours_steps = args.timesteps or (200_000 if args.quick else 1_000_000)
    peer_steps = args.peer_steps or (5_000 if args.quick else 20_000)

    raw = bench_raw_env(args.env_envs, 200)
    print(f"raw vectorised env: {raw['env_steps_per_s']:,} env-steps/s ({raw['n_envs']} envs, obs {raw['obs_dim']})", flush=True)
    peer = bench_peer(peer_steps, args.threads)
    print(f"SB3 PPO defaults on gym-anytrading forex-v0: {peer['timesteps_per_s']:,.0f} timesteps/s "
          f"({peer['timesteps']:,} in {peer['seconds']} s)", flush=True)
    ours = bench_ours(ours_steps, args.threads)
    print(f"trademl PPO end to end: {ours['timesteps_per_s']:,.0f} timesteps/s ({ours['timesteps']:,} in "
          f"{ours['train_seconds']} s training, {ours['wall_seconds']} s with features, evaluation, ONNX, store)", flush=True)
    print(f"  held-out: net P&L ${ours['net_pnl']:,.0f}, oracle ${ours['oracle_pnl']:,.0f}, "
          f"agent/oracle {ours['pnl_vs_oracle']}, trades {ours['trades']}, mean |pos| {ours['mean_abs_position']}")
    ratio = ours["timesteps_per_s"] / peer["timesteps_per_s"]
    cpu_ratio = ours["timesteps_per_cpu_s_end_to_end"] / peer["timesteps_per_cpu_s"]
    print(f"ratio ours / SB3-on-gym-anytrading: {ratio:.1f}x wall, {cpu_ratio:.1f}x per CPU second "
          f"(ours end to end: {ours['cpu_seconds_end_to_end']} CPU s) - target >= 10x; raw env target >= 1,000,000 steps/s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"bench": "ppo", "raw_env": raw, "peer": peer, "ours": ours, "ratio": round(ratio, 2),
                      "ratio_per_cpu_s": round(cpu_ratio, 2),
                      "threads": args.threads, "cpus": os.cpu_count(), "load_avg_1m": load,
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
