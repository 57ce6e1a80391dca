"""The probability of passing an evaluation: a block bootstrap of trading days through the rules.

Each simulated path draws trading days from the strategy's own history in blocks of
``block`` consecutive days (so a losing streak stays a streak), and runs the account rules at
the day's resolution: the trailing threshold from the highest end-of-day balance (or a fixed
limit with ``trailing=False``), the daily loss limit, the profit target with the minimum
trading days and the consistency share. With ``daily_low`` (each day's worst equity below its
start, from the intraday path) the intraday breaches are drawn with their days; without it a
breach is only seen at a day's close, which makes the estimate optimistic.

Checked against theory: with i.i.d. normal daily P&L and a fixed loss limit, the pass
probability is the gambler's-ruin probability of a drifted Brownian motion, with Siegmund's
correction for the daily steps (barriers moved out by 0.5826 sigma); tests/test_risk.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trademl.errors import DataError
from trademl.risk.rules import AccountRules

SIEGMUND_BETA = 0.5826  # -zeta(1/2) / sqrt(2 pi): the overshoot of a Gaussian random walk


@dataclass(frozen=True)
class PassProbability:
    probability: float
    interval: tuple[float, float]  # Wilson 95% over the simulated paths
    paths: int
    days_to_pass: dict  # percentiles (p10, p50, p90) of the days a passing path took
    failed: dict  # share of paths breached, by rule
    unresolved: float  # share of paths neither passed nor failed within max_days

    def to_dict(self) -> dict:
        return {"probability": self.probability, "interval": list(self.interval), "paths": self.paths,
                "days_to_pass": self.days_to_pass, "failed": self.failed, "unresolved": self.unresolved}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def drifted_ruin_probability(mu: float, sigma: float, target: float, loss: float, *, steps_correction=True) -> float:
    """P(a random walk of N(mu, sigma^2) steps reaches +target before -loss): the drifted
    Brownian motion's answer, with Siegmund's boundary correction for discrete steps."""
    a, b = target, loss
    if steps_correction:
        a, b = a + SIEGMUND_BETA * sigma, b + SIEGMUND_BETA * sigma
    if abs(mu) < 1e-12:
        return b / (a + b)
    k = 2.0 * mu / sigma ** 2
    return (1.0 - math.exp(k * b)) / (math.exp(-k * a) - math.exp(k * b))


def pass_probability(daily_pnl, rules: AccountRules, *, daily_low=None, n_paths: int = 10_000,
                     max_days: int = 250, block: int = 5, trailing: bool = True, seed: int = 0) -> PassProbability:
    """Monte Carlo probability that the strategy passes ``rules`` (see the module doc)."""
    pnl = np.asarray(daily_pnl, dtype=np.float64)
    if pnl.ndim != 1 or len(pnl) < 2 or not np.isfinite(pnl).all():
        raise DataError(f"need at least 2 finite daily P&L values, got {pnl.size}", where="pass probability")
    low = pnl if daily_low is None else np.minimum(np.asarray(daily_low, dtype=np.float64), pnl)
    block = max(1, min(int(block), len(pnl)))
    rng = np.random.default_rng(seed)
    n_blocks = -(-max_days // block)
    starts = rng.integers(0, len(pnl) - block + 1, size=(n_paths, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n_paths, -1)[:, :max_days]
    start = rules.starting_balance
    balance = np.full(n_paths, start)
    peak = np.full(n_paths, start)
    best_day = np.full(n_paths, -np.inf)
    alive = np.ones(n_paths, bool)
    passed_on = np.full(n_paths, -1)
    failed_by = np.full(n_paths, "", dtype=object)
    for d in range(max_days):
        day_pnl, day_low = pnl[idx[:, d]], low[idx[:, d]]
        threshold = np.minimum(peak - rules.trailing_max_loss, start) if trailing else start - rules.trailing_max_loss
        trail_hit = alive & (balance + day_low <= threshold)
        daily_hit = alive & ~trail_hit & (rules.daily_loss_limit is not None) & \
            (day_low <= -(rules.daily_loss_limit or np.inf))
        failed_by[trail_hit], failed_by[daily_hit] = "trailing_max_loss", "daily_loss_limit"
        alive &= ~(trail_hit | daily_hit)
        balance = np.where(alive, balance + day_pnl, balance)
        best_day = np.where(alive, np.maximum(best_day, day_pnl), best_day)
        peak = np.maximum(peak, balance)
        profit = balance - start
        ok = alive & (profit >= rules.profit_target) & (d + 1 >= rules.min_trading_days)
        if rules.consistency_max_share is not None:
            ok &= best_day <= rules.consistency_max_share * profit
        passed_on[ok] = d + 1
        alive &= ~ok
        if not alive.any():
            break
    passed = passed_on > 0
    n_pass = int(passed.sum())
    days = passed_on[passed]
    quantiles = ({f"p{q}": float(np.percentile(days, q)) for q in (10, 50, 90)} if n_pass else
                 {"p10": None, "p50": None, "p90": None})
    failed = {rule: float(np.mean(failed_by == rule)) for rule in ("trailing_max_loss", "daily_loss_limit")}
    return PassProbability(n_pass / n_paths, wilson_interval(n_pass, n_paths), n_paths, quantiles, failed,
                           float(np.mean(alive)))
