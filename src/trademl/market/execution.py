"""The one execution model. The PPO environment and the backtester both call it.

Timing: a decision taken at the close of bar t fills at the open of bar t+1, moved
against us by ``slippage_ticks`` ticks, and pays ``commission_per_side`` dollars per
contract. Positions are capped at +/- ``max_position``. Dollars come from the contract's
point value. Nothing here ever reads a price later than the bar being filled.

Bar P&L, for the bar t+1 on which the fill happens, holding ``prev`` before and ``new`` after:

    prev * (open[t+1] - close[t]) * pv          # overnight/between-bar move on the old position
  + new  * (close[t+1] - open[t+1]) * pv        # the bar itself on the new position
  - |new - prev| * slippage_ticks * tick_value  # fills are worse than the open
  - |new - prev| * commission_per_side

All functions are vectorised: scalars, one array per environment, or one per bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trademl.config import resolve_config
from trademl.market.contracts import ContractSpec


@dataclass(frozen=True)
class ExecutionModel:
    """Fills and costs of one contract. Settings left as None come from the config
    ([costs] commission_per_side, slippage_ticks; [account] max_position_size)."""

    spec: ContractSpec
    commission_per_side: float | None = None
    slippage_ticks: float | None = None
    max_position: int | None = None

    def __post_init__(self):
        if None in (self.commission_per_side, self.slippage_ticks, self.max_position):
            cfg = resolve_config()
            if self.commission_per_side is None:
                object.__setattr__(self, "commission_per_side", cfg.costs.commission_per_side)
            if self.slippage_ticks is None:
                object.__setattr__(self, "slippage_ticks", cfg.costs.slippage_ticks)
            if self.max_position is None:
                object.__setattr__(self, "max_position", cfg.account.max_position_size)

    @classmethod
    def from_config(cls, spec: ContractSpec, costs, max_position: int) -> "ExecutionModel":
        return cls(spec, costs.commission_per_side, costs.slippage_ticks, int(max_position))

    @property
    def cost_per_contract(self) -> float:
        """Dollars lost per contract per side: commission plus slippage."""
        return self.commission_per_side + self.slippage_ticks * self.spec.tick_value

    @property
    def round_trip_cost(self) -> float:
        return 2 * self.cost_per_contract

    def cap(self, position):
        return np.clip(position, -self.max_position, self.max_position)

    def fill_price(self, next_open, qty):
        """Price paid (qty > 0) or received (qty < 0) at the next bar's open."""
        return next_open + np.sign(qty) * self.slippage_ticks * self.spec.tick_size

    def bar_pnl(self, prev_pos, new_pos, prev_close, open_, close):
        """Net dollar P&L of one bar on which the position goes prev_pos -> new_pos at the open.

        Returns (pnl, costs): costs is the part of pnl lost to slippage and commission (>= 0).
        """
        qty = np.abs(new_pos - prev_pos)
        pv = self.spec.point_value
        gross = (prev_pos * (open_ - prev_close) + new_pos * (close - open_)) * pv
        costs = qty * self.cost_per_contract
        return gross - costs, costs

    def simulate(self, target, open_, close, segments=None, flatten_at_segment_end=True):
        """Run a series of target positions (decided at each bar's close) through the model.

        ``target[t]`` is the position wanted after the decision at the close of bar t;
        it is held from the open of bar t+1. With ``flatten_at_segment_end`` the position
        is closed at the open of the last bar of each segment (an intraday account is flat
        before a gap, a weekend or a roll) and nothing is held across a gap.
        """
        target = self.cap(np.asarray(target, dtype=np.float64))
        n = len(target)
        if segments is not None and flatten_at_segment_end:
            # bars_to_end(seg) <= 1, from two shifted comparisons (5x cheaper on 1M bars)
            seg = np.asarray(segments)
            last = np.ones(n, dtype=bool)
            last[:-1] = seg[1:] != seg[:-1]
            near_end = last.copy()
            near_end[:-1] |= last[1:]
            target = np.where(near_end, 0.0, target)
        pos = np.zeros(n)
        pos[1:] = target[:-1]
        prev = np.r_[0.0, pos[:-1]]
        prev_close = np.r_[close[0], close[:-1]]
        pnl, costs = self.bar_pnl(prev, pos, prev_close, open_, close)
        qty = pos - prev
        return ExecutionResult(position=pos, trade_qty=qty, fill_price=np.where(qty != 0, self.fill_price(open_, qty), np.nan), pnl=pnl, costs=costs)


@dataclass
class ExecutionResult:
    """Per-bar arrays: position held during the bar, contracts traded at its open, their fill
    price (NaN where nothing traded), net P&L in dollars and the costs inside it."""

    position: np.ndarray
    trade_qty: np.ndarray
    fill_price: np.ndarray
    pnl: np.ndarray
    costs: np.ndarray

    @property
    def equity(self) -> np.ndarray:
        return np.cumsum(self.pnl)
