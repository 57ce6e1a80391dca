"""N accounts' limits bar by bar: the incremental form of the backtest's day table.

``trademl.risk.account.apply_rules`` judges a whole target path at once; a policy that
*observes* its limits (the PPO agent in its environment, in the walk-forward and in the
predictor) needs them one bar at a time. ``AccountLimits`` keeps, per account, what the
two limits follow (the trading day's starting balance, the highest end-of-day balance) and
answers, for a live equity, the room left to each limit and whether it is breached, through
the same ``AccountRules.trailing_threshold`` / ``daily_floor``; a test checks that it
breaches on the same bar as ``apply_rules`` for the same path.

The room is given as a share of each limit's allowance (room / trailing_max_loss, room /
daily_loss_limit), so an agent trained on one account size reads the same inputs on
another; an account with no daily limit reads 1.0 there (a full allowance, always).

numpy only: the serving path imports it.
"""

from __future__ import annotations

import numpy as np

from trademl.risk.rules import AccountRules

#: No trading day opened yet (a fresh account, before its first bar).
NO_DAY = -(2**62)
#: A random start uses up to this share of each limit's allowance (it keeps at least 2%).
RANDOM_START_USED = 0.98
#: Rooms above this share of an allowance are read as this (an account far in profit). Random
#: starts reach about 2.5 (a profit near the target with no drawdown): inputs beyond what the agent
#: trained on would be extrapolation (an account $40k up once read 20).
ROOM_CLIP = 2.0


def room_shares(rules: AccountRules, equity, start_of_day, peak_eod) -> np.ndarray:
    """[n, 2] rooms as shares of the allowances: (equity - trailing threshold) / trailing_max_loss,
    (equity - daily floor) / daily_loss_limit (1.0 without a daily limit); 0 at or past a limit."""
    equity = np.asarray(equity, dtype=np.float64)
    trailing = (equity - rules.trailing_threshold(peak_eod)) / rules.trailing_max_loss
    if rules.daily_loss_limit is None:
        daily = np.ones_like(trailing)
    else:
        daily = (equity - rules.daily_floor(start_of_day)) / rules.daily_loss_limit
    return np.clip(np.stack([trailing, daily], axis=-1), 0.0, ROOM_CLIP)


def reported_balances(account) -> tuple[float, float]:
    """(start of day, peak end of day) of an account the bot reports (the request's ``account``):
    missing, the day started at the balance and the peak is the day's start."""
    sod = account.balance if account.start_of_day_balance is None else account.start_of_day_balance
    return sod, sod if account.peak_eod_balance is None else account.peak_eod_balance


def fresh_room(n: int) -> np.ndarray:
    """The rooms of an account at its start: a full allowance to both limits."""
    return np.ones((n, 2))


class AccountLimits:
    """Per account: the balance the broker's P&L is counted from, the day's starting balance,
    the highest end-of-day balance, and the trading day now open."""

    def __init__(self, rules: AccountRules, n: int):
        self.rules = rules
        start = rules.starting_balance
        self.base = np.full(n, start)  # account balance when the broker last restarted
        self.start_of_day = np.full(n, start)
        self.peak_eod = np.full(n, start)
        self.day = np.full(n, NO_DAY, np.int64)

    def restart(self, idx, *, day, base=None, start_of_day=None, peak_eod=None) -> None:
        """New accounts in ``idx``, opening trading day ``day``: fresh ones by default, or the
        balances given (a randomised start, an account the bot reports)."""
        start = self.rules.starting_balance
        self.base[idx] = start if base is None else base
        self.start_of_day[idx] = self.base[idx] if start_of_day is None else start_of_day
        # the trailing threshold follows the best end of day, counted from the starting balance
        self.peak_eod[idx] = np.maximum(np.maximum(start if peak_eod is None else peak_eod, self.start_of_day[idx]),
                                        start)
        self.day[idx] = day

    def random_restart(self, idx, *, day, rng: np.random.Generator, used: float = RANDOM_START_USED) -> None:
        """New accounts somewhere along an evaluation: a profit so far between ``used`` of the
        trailing loss down and ``used`` of the target up, a drawdown from the best end of day, a
        loss so far today; each limit keeps at least 1 - ``used`` of its allowance. An agent that
        only ever started fresh would rarely see a limit close, so could not learn what its room
        inputs mean: near a limit one bad bar breaches, which is where the lesson is."""
        r = self.rules
        n = self.base[idx].size
        start, tml = r.starting_balance, r.trailing_max_loss
        dll = tml if r.daily_loss_limit is None else min(r.daily_loss_limit, tml)
        profit = rng.uniform(-used * tml, used * r.profit_target, n)
        drawdown = np.where(profit > 0, rng.uniform(0.0, used * tml, n), 0.0)  # below the best end of day
        lost_today = rng.uniform(0.0, used * dll, n)
        base = start + profit
        self.restart(idx, day=day, base=base, start_of_day=base + lost_today,
                     peak_eod=np.maximum(base + drawdown, base + lost_today))

    def equity(self, broker_equity, idx=slice(None)) -> np.ndarray:
        """Live account equity from the broker's net P&L since its last restart."""
        return self.base[idx] + broker_equity

    def carry(self, idx, broker_equity) -> None:
        """The broker restarts (a segment start) but the account goes on: fold its P&L in."""
        self.base[idx] = self.base[idx] + broker_equity

    def open_day(self, day, eod_equity) -> np.ndarray:
        """Bar of trading day ``day`` [n] next: where it is a new day, the last one closed at
        ``eod_equity``, which becomes the new day's start and may raise the peak. Returns the
        mask of accounts whose day changed."""
        day = np.asarray(day, dtype=np.int64)
        new = day != self.day
        opened = new & (self.day != NO_DAY)
        self.start_of_day = np.where(opened, eod_equity, self.start_of_day)
        self.peak_eod = np.where(opened, np.maximum(self.peak_eod, eod_equity), self.peak_eod)
        self.day = day
        return new

    def room(self, equity, idx=slice(None)) -> np.ndarray:
        """[n, 2] rooms (shares of each allowance, see ``room_shares``) at live ``equity``."""
        return room_shares(self.rules, equity, self.start_of_day[idx], self.peak_eod[idx])

    def breach(self, equity) -> tuple[np.ndarray, np.ndarray]:
        """(breached, which) per account at live ``equity``: which is 0 trailing max loss, 1 daily limit."""
        trailing = equity <= self.rules.trailing_threshold(self.peak_eod)
        daily = equity <= self.rules.daily_floor(self.start_of_day)
        return trailing | daily, np.where(trailing, 0, 1)
