"""Does an agent trained under an account's rules breach less often held out? (issue 13)

Two PPO agents per seed on the same synthetic NQ market (the learning test's: a planted edge,
IC 0.15 at horizon 5, two volatility regimes), the same [ppo] settings and timesteps: one
trained plainly, one with ``[ppo] account_rules = "topstep-50k"`` (cap, 15:10 CT flatten,
breach ends the episode with ``breach_penalty``, room to each limit observed, random account
starts). Both are then run as topstep-50k evaluation accounts on the same held-out span
(``trademl.models.ppo.account_eval.evaluate_under_rules``: one account opened per held-out
trading day, carried day after day, judged by ``apply_rules``), and on the plain held-out
evaluation (net P&L, agent / oracle).

    .venv/bin/python bench/bench_ppo_rules.py [--timesteps 1000000] [--bars 200000] [--seeds 7 8] [--gamma 0.9] [--jobs 2]

``--gamma`` sets [ppo] gamma for both agents (default: the config's, 0.5). ``--jobs`` trains that
many agents at once, each in its own process (training uses one torch thread, so two jobs use
this machine's two cores; the agents are the same as in one process). The summary pools the
seeds and, since accounts of one agent share its training, also compares the agents seed by
seed: the mean per-seed difference in breach share, its t statistic over seeds with the
one-sided p (rules lower), and the Wilcoxon signed-rank p.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache

import numpy as np
from scipy import stats

from trademl.config import Config
from trademl.data.synthetic import synthetic_bars
from trademl.models.ppo.account_eval import evaluate_under_rules
from trademl.models.ppo.algorithms import deterministic_actions
from trademl.models.ppo.train import train_ppo
from trademl.risk.rules import rules_for

PRESET = "topstep-50k"


@lru_cache(maxsize=1)
def market(n_bars: int):
    """The learning test's market: the same bars in every process, generated once in each (~1 s)."""
    return synthetic_bars(n_bars, seed=3, edge_ic=0.15, edge_horizon=5)


def train_one(n_bars: int, seed: int, timesteps: int, rules: str | None, folder: str, eval_fraction: float,
              gamma: float | None = None):
    bars = market(n_bars).copy()  # the cached frame stays as generated, whatever training does
    cfg = Config()
    if gamma is not None:
        cfg.ppo.gamma = gamma
    cfg.data.extra_feature_columns = ["edge"]
    cfg.ppo.total_timesteps, cfg.ppo.seed, cfg.ppo.eval_fraction = timesteps, seed, eval_fraction
    cfg.ppo.account_rules = rules
    cfg.ppo.checkpoint_dir = f"{folder}/ckpt-{rules}-{seed}"
    cfg.paths.model_root = f"{folder}/models"
    t0 = time.perf_counter()
    result = train_ppo(bars, cfg, store=False)
    seconds = time.perf_counter() - t0
    account = evaluate_under_rules(deterministic_actions(result.model), result.prepared,
                                   rules_for(PRESET))
    m = result.metrics
    return {"trained_under": rules or "no rules", "seed": seed, "gamma": cfg.ppo.gamma, "seconds": round(seconds, 1),
            "held_out_net_pnl": m["net_pnl"], "agent_vs_oracle": m.get("pnl_vs_oracle"),
            "mean_abs_position": m["mean_abs_position"], **{f"account_{k}": v for k, v in account.items()
                                                              if k not in ("note", "rules")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=1_000_000)
    ap.add_argument("--bars", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    ap.add_argument("--eval-fraction", type=float, default=0.3)
    ap.add_argument("--variants", nargs="+", default=["plain", "rules"], choices=["plain", "rules"])
    ap.add_argument("--gamma", type=float, default=None, help="[ppo] gamma of both agents (default: the config's)")
    ap.add_argument("--jobs", type=int, default=1, help="agents trained at once, one process each")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = [(seed, {"plain": None, "rules": PRESET}[v]) for seed in args.seeds for v in args.variants]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        # spawn: a fresh interpreter per worker, no forked torch or ONNX Runtime state
        with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train_one, args.bars, seed, args.timesteps, rules, folder, args.eval_fraction,
                                   args.gamma) for seed, rules in runs]
            for future in as_completed(futures):
                rows.append(future.result())
                print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (r["seed"], r["trained_under"] != "no rules"))
    print(json.dumps(summary(rows), indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def summary(rows: list[dict]) -> dict:
    """Pooled breach shares per agent kind, and the per-seed paired comparison (rules - plain)."""
    out = {}
    for kind in ("no rules", PRESET):
        mine = [r for r in rows if r["trained_under"] == kind]
        if mine:
            out[kind] = {"fresh_breached": sum(round(r["account_breach_share"] * r["account_accounts"]) for r in mine),
                         "fresh_accounts": sum(r["account_accounts"] for r in mine),
                         "near_limit_breach_share": round(float(np.mean([r["account_near_limits"]["breach_share"]
                                                                         for r in mine])), 4)}
    pairs = {}
    for r in rows:
        pairs.setdefault(r["seed"], {})[r["trained_under"]] = r
    both = [p for p in pairs.values() if len(p) == 2]
    for name, share in (("fresh", lambda r: r["account_breach_share"]),
                        ("near_limit", lambda r: r["account_near_limits"]["breach_share"])):
        d = np.array([share(p[PRESET]) - share(p["no rules"]) for p in both])
        if len(d) > 1:
            sd = float(d.std(ddof=1))
            out[f"{name}_paired"] = {"seeds": len(d), "mean_difference": round(float(d.mean()), 4),
                                     "t_over_seeds": round(float(d.mean() / (sd / np.sqrt(len(d)))), 2) if sd > 0
                                     else None, "rules_lower_in": int((d < 0).sum()), "ties": int((d == 0).sum()),
                                     **one_sided_p_values(d)}
    return out


def one_sided_p_values(d: np.ndarray) -> dict:
    """p of "the rules agent breaches less" over seeds: paired t, and Wilcoxon (ties dropped)."""
    out = {"t_p_one_sided": None, "wilcoxon_p_one_sided": None}
    if len(d) > 1 and d.std(ddof=1) > 0:
        out["t_p_one_sided"] = round(float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue), 4)
    if np.count_nonzero(d) > 0:
        out["wilcoxon_p_one_sided"] = round(float(stats.wilcoxon(d, alternative="less").pvalue), 4)
    return out


if __name__ == "__main__":
    main()
