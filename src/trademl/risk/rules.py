"""Prop-firm account rules (Topstep's Trading Combine first), each value configurable.

A rules model says when an evaluation account is failed (a breach) or passed:

* **trailing max loss**: the threshold starts ``trailing_max_loss`` below the starting
  balance and trails the highest end-of-day balance; it is breached intraday by live equity
  (balance plus the open position marked at the bar's close) and stops rising once it
  reaches the starting balance;
* **daily loss limit** (optional: TopstepX accounts opened since August 2024 have none): live
  equity ``daily_loss_limit`` below the trading day's starting balance;
* **max contracts**: minis and micros separately;
* the **trading day** runs 17:00-15:10 US/Central: positions are flattened at 15:10 CT;
* **passed**: an end-of-day balance at or above starting balance + ``profit_target``, after
  at least ``min_trading_days`` trading days, with the best day at most
  ``consistency_max_share`` of the total profit.

Sources and date: the values of the presets are the ones the project's issue 13 gives
(Topstep Trading Combine, 50K/100K/150K, as stated there for 2026-11), cross-read on
2026-12-01 against public summaries of Topstep's rules (tradingfunder.com's overview of the
Trading Combine: the same targets, trailing losses, daily limits and contract caps; it lists
an older 5-day minimum and a 40% consistency target). Rules change: check Topstep's own
rulebook for your account and override any value (``rules_for("topstep-50k",
daily_loss_limit=None)``).
"""

# No `from __future__ import annotations` here: pydantic would compile every field's annotation
# string when the models are built, a cost each cold `trademl predict` pays (issue 17).

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trademl.config import validation_problems
from trademl.errors import TradeMLError

# Micro contracts: the rules cap them separately (10 micros per mini).
MICRO_ROOTS = frozenset({"MNQ", "MES", "MYM", "M2K", "MCL", "MGC", "M6E"})


class AccountRules(BaseModel):
    """One account's rules; every field can be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("custom", description="Preset name or 'custom'.")
    starting_balance: float = Field(50_000.0, gt=0, description="Balance the evaluation starts with, dollars.")
    profit_target: float = Field(3_000.0, gt=0, description="Profit over the starting balance that passes, dollars.")
    trailing_max_loss: float = Field(2_000.0, gt=0, description="Distance of the trailing threshold below the "
                                     "highest end-of-day balance, dollars.")
    daily_loss_limit: float | None = Field(1_000.0, gt=0, description="Loss from the day's starting balance that "
                                           "breaches, dollars; None: no daily limit (TopstepX since 08/2024).")
    max_contracts_minis: int = Field(5, ge=1, description="Most mini contracts held at once.")
    max_contracts_micros: int = Field(50, ge=1, description="Most micro contracts held at once.")
    consistency_max_share: float | None = Field(0.5, gt=0, le=1, description="Best day's profit at most this share "
                                                "of the total profit to pass; None: no consistency rule.")
    min_trading_days: int = Field(2, ge=0, description="Trading days (with a trade) needed before a pass counts.")
    timezone: str = Field("America/Chicago", description="Zone of the trading-day times.")
    day_start: str = Field("17:00", description="When a trading day starts (the previous evening), HH:MM.")
    flatten_at: str = Field("15:10", description="When every position must be flat, HH:MM; no trading until day_start.")

    def max_contracts(self, root: str) -> int:
        return self.max_contracts_micros if root.upper() in MICRO_ROOTS else self.max_contracts_minis

    # The two limits, as functions of the balances they follow (scalars or arrays). The backtest's
    # day table, the PPO environment's account and the predictor's risk block all call these.
    def trailing_threshold(self, peak_eod_balance):
        """Live equity at or below this breaches: ``trailing_max_loss`` under the highest end-of-day
        balance (never under the starting balance's), locked once it reaches the starting balance."""
        start = self.starting_balance
        return np.minimum(np.maximum(peak_eod_balance, start) - self.trailing_max_loss, start)

    def daily_floor(self, start_of_day_balance):
        """Live equity at or below this breaches the daily loss limit (-inf: no daily limit)."""
        if self.daily_loss_limit is None:
            return np.full(np.shape(start_of_day_balance), -np.inf)
        return np.asarray(start_of_day_balance, dtype=np.float64) - self.daily_loss_limit


PRESETS: dict[str, AccountRules] = {
    "topstep-50k": AccountRules(name="topstep-50k", starting_balance=50_000, profit_target=3_000,
                                trailing_max_loss=2_000, daily_loss_limit=1_000,
                                max_contracts_minis=5, max_contracts_micros=50),
    "topstep-100k": AccountRules(name="topstep-100k", starting_balance=100_000, profit_target=6_000,
                                 trailing_max_loss=3_000, daily_loss_limit=2_000,
                                 max_contracts_minis=10, max_contracts_micros=100),
    "topstep-150k": AccountRules(name="topstep-150k", starting_balance=150_000, profit_target=9_000,
                                 trailing_max_loss=4_500, daily_loss_limit=3_000,
                                 max_contracts_minis=15, max_contracts_micros=150),
}


def rules_for(preset: str | AccountRules | dict, **overrides) -> AccountRules:
    """A preset by name (``topstep-50k``, ...), an AccountRules, or a dict of fields; ``overrides`` win."""
    if isinstance(preset, AccountRules):
        base = preset.model_dump()
    elif isinstance(preset, dict):
        base = dict(preset)
    elif isinstance(preset, str) and preset.lower() in PRESETS:
        base = PRESETS[preset.lower()].model_dump()
    else:
        raise TradeMLError(f"unknown account rules {preset!r}; presets are {', '.join(PRESETS)}", where="--account")
    try:
        return AccountRules.model_validate({**base, **overrides})
    except ValidationError as e:
        raise TradeMLError(f"invalid account rules: {validation_problems(e)}", where="account") from None
