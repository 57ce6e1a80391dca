"""The PPO trading environment: the guide's `TradingEnvironment` and the batched core it runs on.

One decision per bar. The agent sees, at the close of bar t, a window of normalised
features (rows t-W+1..t) and its TradingState: position, balance, unrealized P&L and the
last 10 actions. Actions are 0 hold, 1 buy one contract, 2 sell one contract; the position
is capped at +/- max_position. A continuous agent (SAC, ``action_mode="target"``) instead asks
for a target position x * max_position, x in [-1, 1], rounded to whole contracts; the same
broker then trades the difference, and its recent actions record the move's code. Fills, costs and P&L come from the one execution model
through the one broker (`trademl.market.broker.Broker`, which also keeps the position, the
average entry price and the last 10 actions): the decision at the close of t fills at the
open of t+1 plus slippage, and the step's P&L is bar t+1's.

An episode starts at a random bar of the training span whose feature window is complete
and inside one segment, and ends at the segment's end (the position is closed at the open
of the segment's last bar, the broker's rule: terminated) or after
``episode_length`` decisions (truncated: the market goes on, the value is bootstrapped).

With account rules (``rules``, ``[ppo] account_rules``) the environment trades one prop-firm
account per env (``trademl.risk``): the contract cap is the smaller of the configured one and
the rules' (minis or micros), the position goes flat from the bar before 15:10 CT until the
next trading day, live equity at each close is checked against the trailing threshold and the
daily floor (``trademl.risk.limits.AccountLimits``, the same functions the backtest judges
with), and a breach liquidates the position at that close, costs the reward
``breach_penalty`` and ends the episode (terminated). An episode's account starts fresh or
anywhere along an evaluation (``account_start="random"``); the observation then carries the
room left to each limit.

`TradingCore` holds the state of N environments as numpy arrays and steps them all at
once; `TradingEnvironment` (gymnasium, one env) and `TradingVecEnv` (stable-baselines3,
N envs) are thin shells around it, so there is exactly one implementation of the dynamics.
The observation layout (`observation.ObservationSpec`) is numpy-only and shared with the
serving runtime (`trademl.models.kinds.ppo`), so training and serving build the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from trademl.config import resolve_config
from trademl.data.sequences import valid_window_ends
from trademl.errors import TradeMLError
from trademl.market.actions import DIRECTION, code_of_move, rounded_target
from trademl.market.broker import Broker
from trademl.market.execution import ExecutionModel
from trademl.models.ppo.observation import ObservationSpec
from trademl.models.ppo.rewards import RewardSettings, RewardShaper
from trademl.risk.limits import AccountLimits
from trademl.risk.rules import AccountRules
from trademl.segments import bars_to_end


ACTION_MODES = ("discrete", "target")


def action_space(mode: str) -> gym.spaces.Space:
    """The gymnasium action space of an action mode: Discrete(3) codes, or a target in [-1, 1]."""
    return gym.spaces.Discrete(3) if mode == "discrete" else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


@dataclass
class MarketData:
    """Prices and ready-made observation windows of one span of bars, shared by all envs.

    ``windows[t]`` is the flattened normalised feature window ending at bar t (a strided
    view, no copy). ``starts`` are the bars an episode may start at: complete window inside
    one segment, at least two bars left in the segment, inside the requested span.
    ``day`` and ``flat`` (for account rules: ``trademl.risk.account.trading_days``) are each
    bar's trading day and whether it opens in the flat window (15:10-17:00 CT).
    """

    windows: np.ndarray
    open: np.ndarray
    close: np.ndarray
    bars_to_end: np.ndarray
    starts: np.ndarray
    edge: np.ndarray | None = None
    day: np.ndarray | None = None
    flat: np.ndarray | None = None

    @classmethod
    def build(cls, features, open_, close, segments, spec: ObservationSpec, span=(0, None), edge=None,
              day=None, flat=None) -> "MarketData":
        features = np.asarray(features, dtype=np.float64)
        n, f = features.shape
        w = spec.window
        norm = spec.normalizer.transform(features)
        padded = np.vstack([np.zeros((w - 1, f), np.float32), norm])
        windows = np.lib.stride_tricks.sliding_window_view(padded.ravel(), w * f)[::f]
        seg = np.asarray(segments)
        left = bars_to_end(seg)
        complete = np.zeros(n, bool)
        complete[valid_window_ends(features, seg, w)] = True  # the window rule of the LSTM and of serving
        lo, hi = span[0], n if span[1] is None else span[1]
        rows = np.arange(n)
        starts = np.flatnonzero(complete & (left >= 2) & (rows >= lo) & (rows < hi))
        return cls(windows, np.asarray(open_, np.float64), np.asarray(close, np.float64), left, starts,
                   None if edge is None else np.asarray(edge, np.float64),
                   None if day is None else np.asarray(day, np.int64), None if flat is None else np.asarray(flat, bool))


@dataclass
class StepResult:
    """Per-env arrays of one step: the P&L of bar t+1 and what happened on it (``breached``: the
    account's rules ended the episode on it; ``position`` is what was held during the bar)."""

    reward: np.ndarray
    pnl: np.ndarray
    costs: np.ndarray
    trade_qty: np.ndarray
    position: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    breached: np.ndarray | None = None


@dataclass
class TradingCore:
    """N environments' state as arrays; ``step`` advances them all by one bar."""

    market: MarketData
    execution: ExecutionModel
    spec: ObservationSpec
    rewards: RewardSettings
    n_envs: int = 1
    episode_length: int | None = None  # None: [ppo] episode_length
    seed: int | None = None
    rules: AccountRules | None = None  # an account's rules (see the module doc); needs market.day/flat
    account_start: str = "fresh"  # with rules: "fresh" or "random" (AccountLimits.random_restart)
    action_mode: str = "discrete"  # "discrete": codes 0/1/2; "target": a target position in [-1, 1] of the cap
    t: np.ndarray = field(init=False)

    def __post_init__(self):
        if self.episode_length is None:
            self.episode_length = resolve_config().ppo.episode_length
        if len(self.market.starts) == 0:
            raise TradeMLError(
                "no bar can start an episode: every segment is shorter than the feature window plus two bars",
                where="ppo environment", hint=f"window={self.spec.window}; use more data or a shorter window",
            )
        n = self.n_envs
        self.rng = np.random.default_rng(self.seed)
        self.t = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.broker = Broker(self.execution, n, self.spec.initial_balance)
        self.shaper = RewardShaper(self.rewards, n)
        self.limits = None
        self.cap = self.execution.max_position
        if self.rules is not None:
            if self.market.day is None or self.market.flat is None:
                raise TradeMLError("account rules need the bars' trading days", where="ppo environment",
                                   hint="build the MarketData with day= and flat= (trademl.risk.account.trading_days)")
            if self.account_start not in ("fresh", "random"):
                raise TradeMLError(f"account_start must be fresh or random, not {self.account_start!r}",
                                   where="ppo.account_start")
            self.limits = AccountLimits(self.rules, n)
            self.cap = min(self.cap, self.rules.max_contracts(self.execution.spec.root))
        if self.action_mode not in ACTION_MODES:
            raise TradeMLError(f"action_mode must be one of {ACTION_MODES}, not {self.action_mode!r}",
                               where="ppo environment")

    # The account of every env lives in the broker; these are its views.
    @property
    def position(self) -> np.ndarray:
        return self.broker.position

    @property
    def equity(self) -> np.ndarray:
        """Net P&L of the episode so far, dollars."""
        return self.broker.equity

    @property
    def recent(self) -> np.ndarray:
        return self.broker.recent

    def reset(self, mask=None, starts=None) -> None:
        """Start new episodes in the envs of ``mask`` (all by default), at random or given bars."""
        idx = np.arange(self.n_envs) if mask is None else np.flatnonzero(mask)
        if starts is None:
            starts = self.market.starts[self.rng.integers(0, len(self.market.starts), len(idx))]
        self.t[idx] = starts
        self.steps[idx] = 0
        self.broker.restart(idx)
        self.shaper.reset(idx)
        if self.limits is not None:
            day = self.market.day[starts]
            if self.account_start == "random":
                self.limits.random_restart(idx, day=day, rng=self.rng)
            else:
                self.limits.restart(idx, day=day)

    def continue_accounts(self, idx, starts) -> None:
        """Move the envs in ``idx`` to bars ``starts`` (a later segment) with their accounts going
        on: the broker starts flat there, the rules' balances carry over (an evaluation's next day)."""
        idx = np.asarray(idx)
        self.limits.carry(idx, self.broker.equity[idx])
        self.t[idx] = starts
        self.broker.restart(idx)

    @property
    def unrealized_pnl(self) -> np.ndarray:
        return self.broker.unrealized(self.market.close[self.t])

    @property
    def balance(self) -> np.ndarray:
        """Cash: initial balance plus realized P&L net of all costs (equity minus the open trade);
        with rules, the account's (its balance at the episode's start plus the same)."""
        return self._balance(self.market.close[self.t], slice(None))

    def _balance(self, close, idx) -> np.ndarray:
        cash = self.broker.balance(close, idx)
        if self.limits is None:
            return cash
        return cash + self.limits.base[idx] - self.broker.initial_balance

    @property
    def account_equity(self) -> np.ndarray | None:
        """Live equity of every env's account under the rules (None without rules), dollars."""
        return None if self.limits is None else self.limits.equity(self.broker.equity)

    def observe(self, idx=None) -> np.ndarray:
        """A new observation array for all envs (or those in ``idx``); callers may keep it."""
        b = self.broker
        idx = slice(None) if idx is None else idx
        close = self.market.close[self.t[idx]]
        room = None
        if self.limits is not None and self.spec.rules is not None:
            room = self.limits.room(self.limits.equity(b.equity[idx], idx), idx)
        return self.spec.build(self.market.windows[self.t[idx]], b.position[idx], self._balance(close, idx),
                               b.unrealized(close, idx), b.recent[idx], room)

    def requested(self, actions) -> tuple[np.ndarray, np.ndarray]:
        """(position each env asks for, within the cap; its action code for the recent actions).
        Discrete: code 0/1/2 moves one contract. Target: x in [-1, 1] asks for x * cap contracts,
        rounded (``rounded_target``), recorded as the code of the move it makes."""
        position = self.broker.position
        if self.action_mode == "target":
            x = np.asarray(actions, dtype=np.float64).reshape(self.n_envs)
            if not np.isfinite(x).all() or np.abs(x).max(initial=0) > 1 + 1e-6:
                raise TradeMLError("target actions must be finite numbers in [-1, 1] (shares of the position cap)",
                                   where="action")
            new = rounded_target(x * self.cap, self.cap)
            return new, code_of_move(new - position)
        a = np.asarray(actions, dtype=np.int64).reshape(self.n_envs)
        if a.min(initial=0) < 0 or a.max(initial=0) > 2:
            raise TradeMLError(f"actions must be 0 hold, 1 buy or 2 sell, got {np.unique(a).tolist()}", where="action")
        return np.clip(position + DIRECTION[a], -self.cap, self.cap), a

    def step(self, actions) -> StepResult:
        new, a = self.requested(actions)
        m, t, b = self.market, self.t, self.broker
        # The next bar is the segment's last: the position is closed at its open, the episode ends.
        closing = m.bars_to_end[t] == 1
        if self.limits is not None:
            # The rules' flatten: decided on the bar before 15:10 CT or inside the window, flat.
            new = np.where(m.flat[t] | m.flat[t + 1], 0, new)
            self.limits.open_day(m.day[t + 1], self.limits.equity(b.equity))  # closes yesterday at its end
        new = np.where(closing, 0, new)
        pnl, costs, qty = b.fill(new, m.close[t], m.open[t + 1], m.close[t + 1])
        held = b.position.copy()
        b.record(a)  # every action counts here (no confidence threshold): the agent's own record
        self.t = t + 1
        self.steps += 1
        breached = None
        if self.limits is not None:
            breached, _ = self.limits.breach(self.limits.equity(b.equity))
            if breached.any():  # liquidated at this close: a market order's costs on top
                cost = b.liquidate(breached, m.close[t + 1])
                pnl, costs = pnl - cost, costs + cost
        reward = self.shaper(pnl, qty, b.equity, held, breached)
        terminated = closing if breached is None else closing | breached
        truncated = ~terminated & (self.steps >= self.episode_length)
        return StepResult(reward, pnl, costs, qty, held, terminated, truncated, breached)


class TradingEnvironment(gym.Env):
    """One trading environment with the gymnasium API (the guide's name).

    ``reset(options={"start": t})`` starts at bar t instead of a random one. ``info`` of
    ``step`` carries the bar's pnl, costs, trade, fill price, position, balance, unrealized
    P&L and equity, so a scripted run can be checked by hand.
    """

    metadata = {"render_modes": []}

    def __init__(self, market: MarketData, execution: ExecutionModel, spec: ObservationSpec,
                 rewards: RewardSettings, episode_length: int | None = None, seed: int | None = None,
                 rules: AccountRules | None = None, account_start: str = "fresh", action_mode: str = "discrete"):
        self.core = TradingCore(market, execution, spec, rewards, 1, episode_length, seed, rules, account_start,
                                action_mode)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        self.action_space = action_space(action_mode)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.core.rng = np.random.default_rng(seed)
        start = (options or {}).get("start")
        starts = self.core.market.starts  # sorted
        if start is not None and not (len(starts) and starts[min(np.searchsorted(starts, start), len(starts) - 1)] == start):
            raise TradeMLError(f"bar {start} cannot start an episode (warm-up, too close to a gap or outside the span)",
                               where="reset options")
        self.core.reset(starts=None if start is None else np.array([start]))
        return self.core.observe()[0], {"bar": int(self.core.t[0])}

    def step(self, action):
        r = self.core.step(np.asarray(action).reshape(1, -1)[:, 0])
        core = self.core
        o = core.market.open[core.t[0]]
        info = {
            "bar": int(core.t[0]),
            "pnl": float(r.pnl[0]),
            "costs": float(r.costs[0]),
            "trade_qty": int(r.trade_qty[0]),
            "fill_price": float(core.execution.fill_price(o, r.trade_qty[0])) if r.trade_qty[0] else None,
            "position": int(r.position[0]),
            "balance": float(core.balance[0]),
            "unrealized_pnl": float(core.unrealized_pnl[0]),
            "equity": float(core.equity[0]),
        }
        if core.limits is not None:
            info["account_equity"] = float(core.account_equity[0])
            info["breached"] = bool(r.breached[0])
        obs = core.observe()[0]
        return obs, float(r.reward[0]), bool(r.terminated[0]), bool(r.truncated[0]), info
