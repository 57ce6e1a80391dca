"""Position size, stops and the money at risk, from a win probability and the account's room.

* ``kelly_fraction``: the Kelly bet f* = p - (1 - p) / b for a win probability p and a payoff
  ratio b (average win / average loss), never below 0.
* ``contracts``: fractional Kelly (half by default: full Kelly's drawdowns are far larger than
  a prop account's limits allow, for a small gain in growth) of the *loss budget*, not of the
  balance: on an evaluation account the money that can be lost is the distance to the nearer
  limit (``loss_to_breach``), so the size is floor(f * budget / loss per contract at the stop),
  capped by the rules' contract limit and by the contracts whose stop would breach the limit.
* ``atr_stop``: a volatility stop and target at ATR multiples from the entry.
* ``historical_var_es`` / ``gaussian_var_es``: Value at Risk and expected shortfall (as
  positive losses) from the account's own daily or per-trade P&L, or from a volatility.
"""

from __future__ import annotations

import math

import numpy as np

from trademl.errors import DataError


def kelly_fraction(p_win: float, payoff_ratio: float) -> float:
    if not (0.0 <= p_win <= 1.0) or not payoff_ratio > 0:
        raise DataError(f"need 0 <= p_win <= 1 and payoff_ratio > 0, got {p_win}, {payoff_ratio}", where="kelly")
    return max(0.0, p_win - (1.0 - p_win) / payoff_ratio)


def contracts(p_win: float, payoff_ratio: float, loss_per_contract: float, loss_to_breach: float, *,
              max_contracts: int, kelly_share: float = 0.5) -> int:
    """Contracts to trade (0..max_contracts); see the module doc. ``loss_per_contract`` is the
    dollars one contract loses if the stop is hit, costs included."""
    if not loss_per_contract > 0:
        raise DataError(f"loss per contract at the stop must be > 0, got {loss_per_contract}", where="sizing")
    if loss_to_breach <= 0:
        return 0
    f = kelly_share * kelly_fraction(p_win, payoff_ratio)
    by_kelly = math.floor(f * loss_to_breach / loss_per_contract + 1e-9)  # 1.9999999999999996 is 2 contracts
    # A stop that would take the account to its limit is not a risk the size may take.
    by_breach = math.ceil(loss_to_breach / loss_per_contract) - 1
    return int(max(0, min(by_kelly, by_breach, max_contracts)))


def atr_stop(entry: float, side: int, atr: float, *, stop_atr: float = 2.0, target_atr: float = 3.0,
             tick_size: float | None = None) -> tuple[float, float]:
    """(stop price, target price) ``stop_atr`` / ``target_atr`` ATRs from ``entry`` on ``side``
    (+1 long, -1 short), rounded away from the entry to the tick."""
    if side not in (1, -1) or not atr > 0:
        raise DataError(f"need side +1/-1 and atr > 0, got {side}, {atr}", where="stops")
    stop, target = entry - side * stop_atr * atr, entry + side * target_atr * atr
    if tick_size:
        rounder = (math.floor, math.ceil) if side == 1 else (math.ceil, math.floor)
        stop = rounder[0](stop / tick_size) * tick_size
        target = rounder[1](target / tick_size) * tick_size
    return float(stop), float(target)


def historical_var_es(pnl, level: float = 0.95) -> tuple[float, float]:
    """(VaR, expected shortfall) at ``level`` of a P&L sample, as positive losses (0 if no loss)."""
    x = np.asarray(pnl, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise DataError("no P&L to measure the risk of", where="VaR")
    # The empirical quantile (a loss that happened); rounded so 1 - 0.95 is 0.05, not 0.05000000000000004.
    q = np.quantile(x, round(1.0 - level, 12), method="inverted_cdf")
    tail = x[x <= q]
    return float(max(0.0, -q)), float(max(0.0, -tail.mean()))


def gaussian_var_es(sigma: float, level: float = 0.95, mean: float = 0.0) -> tuple[float, float]:
    """(VaR, expected shortfall) of a normal P&L with ``sigma`` (e.g. from the LSTM's risk head)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(level)
    density = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return float(max(0.0, z * sigma - mean)), float(max(0.0, sigma * density / (1 - level) - mean))
