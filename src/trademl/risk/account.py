"""A backtest traded through an account's rules (``AccountRules``), vectorised.

Given per-bar target positions (decided at each close, as the engine takes them), this:

1. caps the target at the rules' contract limit for the instrument (minis or micros);
2. keeps the account flat from ``flatten_at`` (15:10 CT) to ``day_start`` (17:00 CT): a
   target decided on the bar before the window, or inside it, is 0, so the broker closes the
   position at the open of the first bar at or after 15:10 CT (DST handled by the zone);
3. runs the broker's vectorised fills (``trademl.market.broker.simulate``);
4. marks live equity at every close, the trailing threshold (from the highest end-of-day
   balance so far, locked at the starting balance) and the day's loss; the first bar whose
   equity is at or below either limit is the **breach**: the position is liquidated at that
   bar's close (one fill's slippage and commission) and nothing is traded after it;
5. finds the first end of day that passes (target reached, enough trading days, best day
   within the consistency share), before any breach; trading stops there too.

Every step is a numpy pass over the bars (plus one pass over the trading days), so the rules
add little to the engine's time (bench/bench_backtest.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trademl.errors import DataError
from trademl.market.broker import ExecutionResult, apply_stops, simulate
from trademl.market.execution import ExecutionModel
from trademl.risk.rules import AccountRules
from trademl.segments import segment_start_mask

NS_PER_MINUTE = 60_000_000_000
MINUTES_PER_DAY = 24 * 60


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def wall_clock_minutes(index: pd.DatetimeIndex, zone: str) -> np.ndarray:
    """Minutes since the epoch on the zone's wall clock, for every stamp.

    Offsets change only at DST transitions, which fall on quarter hours of UTC, so the zone is
    asked once per quarter hour the bars span (pandas' tz conversion on ~70k stamps for two
    years of minute bars) rather than once per bar; the rest is integer arithmetic.
    """
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise DataError("bars must be indexed by UTC times", where="bars.index")
    utc_min = index.as_unit("ns").asi8 // NS_PER_MINUTE
    if not len(utc_min):
        return utc_min
    quarter = 15
    first = utc_min.min() // quarter
    grid = pd.DatetimeIndex((np.arange(first, utc_min.max() // quarter + 1) * quarter * NS_PER_MINUTE).astype("datetime64[ns]"),
                            tz="UTC")
    offsets = (grid.tz_convert(zone).tz_localize(None).as_unit("ns").asi8 - grid.as_unit("ns").asi8) // NS_PER_MINUTE
    return utc_min + offsets[utc_min // quarter - first]


def trading_days(index: pd.DatetimeIndex, rules: AccountRules) -> tuple[np.ndarray, np.ndarray]:
    """(trading day number of every bar, True where the bar opens in the flat window).

    A bar opening at or after ``day_start`` local time belongs to the next calendar day's
    session (Sunday 17:00 CT opens Monday's); the zone's own offsets handle DST, so 15:10 CT
    is 20:10 UTC in summer and 21:10 UTC in winter.
    """
    local = wall_clock_minutes(index, rules.timezone)
    minute = local % MINUTES_PER_DAY
    start, flat_from = _minutes(rules.day_start), _minutes(rules.flatten_at)
    day = local // MINUTES_PER_DAY + (minute >= start)
    in_window = (minute >= flat_from) & (minute < start) if flat_from < start else \
        (minute >= flat_from) | (minute < start)
    return day.astype(np.int64), in_window


@dataclass
class RulesResult:
    """The account's path under the rules, per bar, and its verdict."""

    rules: AccountRules
    index: pd.DatetimeIndex
    execution: ExecutionResult  # positions, fills and P&L after the rules (0 after the end)
    equity: np.ndarray  # live equity at each close
    threshold: np.ndarray  # the trailing threshold in force at each bar
    day_floor: np.ndarray  # the daily loss floor in force at each bar (NaN without a daily limit)
    day: np.ndarray  # trading day number of each bar
    breached: str | None = None  # "trailing_max_loss", "daily_loss_limit" or None
    breach_bar: int | None = None
    passed: bool = False
    pass_bar: int | None = None
    # Per trading day of the strategy as traded before any stop: start, end, pnl, low, threshold.
    daily: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def end_bar(self) -> int | None:
        """The bar after which nothing is traded: the breach, or the end of the passing day."""
        return self.breach_bar if self.breached else self.pass_bar

    @property
    def trading_days(self) -> int:
        """Trading days with a position or a trade, up to the end of the evaluation."""
        end = len(self.index) if self.end_bar is None else self.end_bar + 1
        active = (self.execution.position[:end] != 0) | (self.execution.trade_qty[:end] != 0)
        return int(len(np.unique(self.day[:end][active])))

    @property
    def final_balance(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.rules.starting_balance

    def summary(self) -> dict:
        at = (lambda i: None if i is None else self.index[i].isoformat())
        return {
            "rules": self.rules.name, "passed": self.passed, "breached": self.breached,
            "breach_time": at(self.breach_bar) if self.breached else None,
            "pass_time": at(self.pass_bar) if self.passed else None,
            "final_balance": round(self.final_balance, 2), "trading_days": self.trading_days,
        }


def rules_target(target, in_window: np.ndarray, rules: AccountRules, root: str) -> np.ndarray:
    """The target the rules allow: capped at the contract limit, 0 in and just before the flat window."""
    limit = rules.max_contracts(root)
    target = np.clip(np.asarray(target, dtype=np.float64), -limit, limit)
    closing = in_window.copy()
    closing[:-1] |= in_window[1:]  # decided on the bar before the window: filled flat at its first bar
    return np.where(closing, 0.0, target)


def apply_rules(index: pd.DatetimeIndex, target, open_, close, execution: ExecutionModel, rules: AccountRules,
                segments=None, *, stops: dict | None = None) -> RulesResult:
    """Trade ``target`` through the broker and the account's rules (see the module doc).

    ``stops``: ``{"high", "low", "atr", "stop_atr", "target_atr"}`` adds volatility stops and
    targets checked inside each bar (``trademl.market.broker.apply_stops``) before the rules.
    """
    open_, close = np.asarray(open_, np.float64), np.asarray(close, np.float64)
    day, in_window = trading_days(index, rules)
    allowed = rules_target(target, in_window, rules, execution.spec.root)
    executed = simulate(execution, allowed, open_, close, segments)
    if stops is not None:
        executed = apply_stops(executed, execution, open_, stops["high"], stops["low"], close, stops["atr"],
                               stop_atr=stops["stop_atr"], target_atr=stops["target_atr"])
    equity = rules.starting_balance + np.cumsum(executed.pnl)
    days = _day_table(equity, day, rules)
    breach_bar, breached = _first_breach(equity, days)
    pass_bar = _first_pass(days, executed, rules, breach_bar)
    if pass_bar is not None and (breach_bar is None or pass_bar < breach_bar):
        breached, breach_bar = None, None
        executed = _stopped_after(executed, pass_bar, execution, close, liquidate=True)
    elif breach_bar is not None:
        pass_bar = None
        executed = _stopped_after(executed, breach_bar, execution, close, liquidate=True)
    equity = rules.starting_balance + np.cumsum(executed.pnl)
    lengths = days["bars"].to_numpy()
    return RulesResult(rules, index, executed, equity, np.repeat(days["threshold"].to_numpy(), lengths),
                       np.repeat(days["daily_floor"].to_numpy(), lengths), day, breached, breach_bar,
                       pass_bar is not None, pass_bar, days)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _day_table(equity: np.ndarray, day: np.ndarray, rules: AccountRules) -> pd.DataFrame:
    """One row per trading day: its first bar and bar count, start and end balance, P&L, worst
    live equity, and the limits in force during it (from the days before it only)."""
    start = rules.starting_balance
    first = np.flatnonzero(segment_start_mask(day))  # a trading day is a run of equal day numbers
    last = np.r_[first[1:], len(day)] - 1
    eod = equity[last]
    sod = np.r_[start, eod[:-1]]  # a day starts with the previous end of day (the starting balance first)
    peak_before = np.maximum.accumulate(sod)  # the highest end-of-day balance before the day
    threshold = rules.trailing_threshold(peak_before)
    floor = rules.daily_floor(sod) if rules.daily_loss_limit is not None else np.full(len(sod), np.nan)
    lowest = np.minimum.reduceat(equity, first) if len(first) else np.zeros(0)
    return pd.DataFrame({"trading_day": day[first], "first_bar": first, "bars": last - first + 1,
                         "start_balance": sod, "end_balance": eod, "pnl": eod - sod,
                         "low": np.minimum(lowest - sod, 0.0), "lowest_equity": lowest,
                         "threshold": threshold, "daily_floor": floor})


def _first_breach(equity: np.ndarray, days: pd.DataFrame) -> tuple[int | None, str | None]:
    """The first bar whose live equity is at or below the day's trailing threshold or daily floor."""
    lowest, threshold = days["lowest_equity"].to_numpy(), days["threshold"].to_numpy()
    floor = np.nan_to_num(days["daily_floor"].to_numpy(), nan=-np.inf)
    d = _first((lowest <= threshold) | (lowest <= floor))  # the day, from one number per day
    if d is None:
        return None, None
    a = int(days["first_bar"].iloc[d])
    span = equity[a: a + int(days["bars"].iloc[d])]
    bar = a + _first((span <= threshold[d]) | (span <= floor[d]))
    return bar, "trailing_max_loss" if equity[bar] <= threshold[d] else "daily_loss_limit"


def _first_pass(days: pd.DataFrame, executed: ExecutionResult, rules: AccountRules, breach_bar) -> int | None:
    """The last bar of the first trading day that passes (before a breach), or None."""
    if not len(days):
        return None
    first = days["first_bar"].to_numpy()
    last = first + days["bars"].to_numpy() - 1
    eod, pnl = days["end_balance"].to_numpy(), days["pnl"].to_numpy()
    profit = eod - rules.starting_balance
    active = (executed.position != 0) | (executed.trade_qty != 0)
    days_traded = np.cumsum(np.logical_or.reduceat(active, first))
    ok = (profit >= rules.profit_target) & (days_traded >= rules.min_trading_days)
    if rules.consistency_max_share is not None:
        ok &= np.maximum.accumulate(pnl) <= rules.consistency_max_share * np.maximum(profit, 0)
    if breach_bar is not None:
        ok &= last < breach_bar
    hit = _first(ok)
    return None if hit is None else int(last[hit])


def _stopped_after(executed: ExecutionResult, bar: int, execution: ExecutionModel, close: np.ndarray, *,
                   liquidate: bool) -> ExecutionResult:
    """Nothing traded after ``bar``; with ``liquidate`` the position held then is closed at its close,
    unless a stop or target already closed it inside that bar (its exit stands, paid once)."""
    position, qty = executed.position.copy(), executed.trade_qty.copy()
    fill, pnl, costs = executed.fill_price.copy(), executed.pnl.copy(), executed.costs.copy()
    exit_fill = np.full(len(position), np.nan) if executed.exit_fill is None else executed.exit_fill.copy()
    held = position[bar]
    stopped = exit_fill[bar + 1] if bar + 1 < len(position) else np.nan  # booked on the bar after, as fills are
    after = slice(bar + 1, None)
    position[after], qty[after], pnl[after], costs[after] = 0.0, 0.0, 0.0, 0.0
    fill[after], exit_fill[after] = np.nan, np.nan
    if np.isfinite(stopped):  # the stop's exit, without the entry that may have shared its bar
        qty[bar + 1], fill[bar + 1], exit_fill[bar + 1] = -held, stopped, stopped
    elif liquidate and held != 0:
        cost = abs(held) * execution.cost_per_contract  # a market order at that close: slippage + commission
        pnl[bar] -= cost
        costs[bar] += cost
        if bar + 1 < len(position):  # booked on the next bar for the trade list, at the close it filled at
            qty[bar + 1] = -held
            fill[bar + 1] = execution.fill_price(close[bar], -held)
    return ExecutionResult(position, qty, fill, pnl, costs, exit_fill)
