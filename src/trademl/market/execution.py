"""The one execution model: what a fill costs. The broker (``trademl.market.broker``) calls it
for every account: the backtest engine, the walk-forward and the PPO environment.

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
        # an instrument with its own commission ([contracts.SPY] commission_per_side) pays that one
        commission = costs.commission_per_side if spec.commission_per_side is None else spec.commission_per_side
        return cls(spec, commission, costs.slippage_ticks, int(max_position))

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

    def round_trip_costs(self, qty):
        """(commission, slippage) in dollars of ``qty`` contracts opened and closed again."""
        qty = np.abs(qty)
        return 2 * self.commission_per_side * qty, 2 * self.slippage_ticks * self.spec.tick_value * qty

    def bar_pnl(self, prev_pos, new_pos, prev_close, open_, close):
        """Net dollar P&L of one bar on which the position goes prev_pos -> new_pos at the open.

        Returns (pnl, costs): costs is the part of pnl lost to slippage and commission (>= 0).
        """
        qty = np.abs(new_pos - prev_pos)
        pv = self.spec.point_value
        gross = (prev_pos * (open_ - prev_close) + new_pos * (close - open_)) * pv
        costs = qty * self.cost_per_contract
        return gross - costs, costs
