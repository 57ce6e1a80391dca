"""The PPO trading environment: the guide's `TradingEnvironment` and the batched core it runs on.

One decision per bar. The agent sees, at the close of bar t, a window of normalised
features (rows t-W+1..t) and its TradingState: position, balance, unrealized P&L and the
last 10 actions. Actions are 0 hold, 1 buy one contract, 2 sell one contract; the position
is capped at +/- max_position. Fills, costs and P&L come from the one execution model
(`trademl.market.execution.ExecutionModel.bar_pnl`): the decision at the close of t fills at
the open of t+1 plus slippage, and the step's P&L is bar t+1's.

An episode starts at a random bar of the training span whose feature window is complete
and inside one segment, and ends at the segment's end (the position is closed at the open
of the segment's last bar, exactly as ``ExecutionModel.simulate`` does: terminated) or after
``episode_length`` decisions (truncated: the market goes on, the value is bootstrapped).

`TradingCore` holds the state of N environments as numpy arrays and steps them all at
once; `TradingEnvironment` (gymnasium, one env) and `TradingVecEnv` (stable-baselines3,
N envs) are thin shells around it, so there is exactly one implementation of the dynamics.
The observation layout (`ObservationSpec`) is numpy-only and shared with the serving
runtime (`trademl.predict.runtime_ppo`), so training and serving build the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from trademl.config import resolve_config
from trademl.data.segments import bars_since_start, bars_to_end
from trademl.errors import DataError, TradeMLError
from trademl.market.execution import ExecutionModel
from trademl.models.ppo.rewards import RewardSettings, RewardShaper

HOLD, BUY, SELL = 0, 1, 2
ACTION_NAMES = ("hold", "buy", "sell")
# Contracts each action adds to the position.
ACTION_DIRECTION = np.array([0, 1, -1], dtype=np.int64)
N_RECENT_ACTIONS = 10
N_STATE_INPUTS = 3 + N_RECENT_ACTIONS  # position, balance, unrealized P&L, last 10 actions
# State inputs are clipped so that a runaway balance cannot saturate the network.
STATE_CLIP = 10.0


@dataclass(frozen=True)
class FeatureNormalizer:
    """z-scores fitted on the training span only, clipped; NaN (warm-up) becomes 0."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    clip: float = 5.0

    @classmethod
    def fit(cls, features: np.ndarray, names, rows: np.ndarray, clip: float = 5.0) -> "FeatureNormalizer":
        x = np.asarray(features, dtype=np.float64)[rows]
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 2:
            raise TradeMLError("no complete feature rows in the training span to fit the normaliser", where="features")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant feature stays 0 instead of dividing by 0
        return cls(tuple(names), mean, std, clip)

    def transform(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.shape[-1] != len(self.names):
            raise DataError(f"expected {len(self.names)} features, got {x.shape[-1]}", where="features")
        z = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNormalizer":
        return cls(tuple(d["names"]), np.asarray(d["mean"], float), np.asarray(d["std"], float), float(d["clip"]))


@dataclass(frozen=True)
class ObservationSpec:
    """Layout of one observation, stored with the model (obs_spec.json).

    [window of normalised features, oldest row first (W*F)] +
    [position / max_position, (balance - initial_balance) / pnl_scale,
     unrealized_pnl / pnl_scale, last 10 actions as -1 sell / 0 hold / +1 buy, oldest first]
    """

    normalizer: FeatureNormalizer
    window: int
    max_position: int
    initial_balance: float
    pnl_scale: float

    @property
    def feature_names(self) -> list[str]:
        return list(self.normalizer.names)

    @property
    def n_features(self) -> int:
        return len(self.normalizer.names)

    @property
    def obs_dim(self) -> int:
        return self.window * self.n_features + N_STATE_INPUTS

    def build(self, windows, position, balance, unrealized_pnl, recent_actions, out=None) -> np.ndarray:
        """Observation rows from already-normalised windows ([n, W*F] or [n, W, F])."""
        windows = np.asarray(windows)
        n = len(windows)
        obs = np.empty((n, self.obs_dim), dtype=np.float32) if out is None else out
        wf = self.window * self.n_features
        obs[:, :wf] = windows.reshape(n, wf)
        obs[:, wf] = np.asarray(position, dtype=np.float64) / self.max_position
        obs[:, wf + 1] = np.clip((np.asarray(balance, dtype=np.float64) - self.initial_balance) / self.pnl_scale, -STATE_CLIP, STATE_CLIP)
        obs[:, wf + 2] = np.clip(np.asarray(unrealized_pnl, dtype=np.float64) / self.pnl_scale, -STATE_CLIP, STATE_CLIP)
        obs[:, wf + 3 :] = ACTION_DIRECTION[np.asarray(recent_actions, dtype=np.int64)]
        return obs

    def to_dict(self) -> dict:
        return {
            "layout": "window[W*F, oldest first] + position/max_position + (balance-initial)/pnl_scale"
            " + unrealized/pnl_scale + last 10 actions (-1 sell, 0 hold, +1 buy; oldest first)",
            "window": self.window,
            "max_position": self.max_position,
            "initial_balance": self.initial_balance,
            "pnl_scale": self.pnl_scale,
            "n_recent_actions": N_RECENT_ACTIONS,
            "obs_dim": self.obs_dim,
            "actions": list(ACTION_NAMES),
            "normalizer": self.normalizer.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ObservationSpec":
        return cls(FeatureNormalizer.from_dict(d["normalizer"]), int(d["window"]), int(d["max_position"]),
                   float(d["initial_balance"]), float(d["pnl_scale"]))


@dataclass
class MarketData:
    """Prices and ready-made observation windows of one span of bars, shared by all envs.

    ``windows[t]`` is the flattened normalised feature window ending at bar t (a strided
    view, no copy). ``starts`` are the bars an episode may start at: complete window inside
    one segment, at least two bars left in the segment, inside the requested span.
    """

    windows: np.ndarray
    open: np.ndarray
    close: np.ndarray
    bars_to_end: np.ndarray
    starts: np.ndarray
    edge: np.ndarray | None = None

    @classmethod
    def build(cls, features, open_, close, segments, spec: ObservationSpec, span=(0, None), edge=None) -> "MarketData":
        features = np.asarray(features, dtype=np.float64)
        n, f = features.shape
        w = spec.window
        norm = spec.normalizer.transform(features)
        padded = np.vstack([np.zeros((w - 1, f), np.float32), norm])
        windows = np.lib.stride_tricks.sliding_window_view(padded.ravel(), w * f)[::f]
        seg = np.asarray(segments)
        left = bars_to_end(seg)
        complete = _complete_windows(features, seg, w)
        lo, hi = span[0], n if span[1] is None else span[1]
        rows = np.arange(n)
        starts = np.flatnonzero(complete & (left >= 2) & (rows >= lo) & (rows < hi))
        return cls(windows, np.asarray(open_, np.float64), np.asarray(close, np.float64), left, starts,
                   None if edge is None else np.asarray(edge, np.float64))


def _complete_windows(features: np.ndarray, seg: np.ndarray, window: int) -> np.ndarray:
    """True at bar t when rows t-W+1..t are all finite and in t's segment (no warm-up, no gap)."""
    finite = np.isfinite(features).all(axis=1)
    run = np.cumsum(np.r_[0, finite.astype(np.int64)])
    t = np.arange(len(finite))
    first = t - window + 1
    n_finite = run[t + 1] - run[np.maximum(first, 0)]
    return (first >= 0) & (n_finite == window) & (bars_since_start(seg) >= window - 1)


@dataclass
class StepResult:
    """Per-env arrays of one step: the P&L of bar t+1 and what happened on it."""

    reward: np.ndarray
    pnl: np.ndarray
    costs: np.ndarray
    trade_qty: np.ndarray
    position: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


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
        self.position = np.zeros(n, np.int64)
        self.avg_price = np.zeros(n)
        self.equity = np.zeros(n)  # net P&L of the episode so far, dollars
        self.steps = np.zeros(n, np.int64)
        self.recent = np.zeros((n, N_RECENT_ACTIONS), np.int64)
        self.shaper = RewardShaper(self.rewards, n)

    def reset(self, mask=None, starts=None) -> None:
        """Start new episodes in the envs of ``mask`` (all by default), at random or given bars."""
        idx = np.arange(self.n_envs) if mask is None else np.flatnonzero(mask)
        if starts is None:
            starts = self.market.starts[self.rng.integers(0, len(self.market.starts), len(idx))]
        self.t[idx] = starts
        self.position[idx] = 0
        self.avg_price[idx] = 0.0
        self.equity[idx] = 0.0
        self.steps[idx] = 0
        self.recent[idx] = HOLD
        self.shaper.reset(idx)

    @property
    def unrealized_pnl(self) -> np.ndarray:
        c = self.market.close[self.t]
        return self.position * (c - self.avg_price) * self.execution.spec.point_value

    @property
    def balance(self) -> np.ndarray:
        """Cash: initial balance plus realized P&L net of all costs (equity minus the open trade)."""
        return self.spec.initial_balance + self.equity - self.unrealized_pnl

    def observe(self, idx=None) -> np.ndarray:
        """A new observation array for all envs (or those in ``idx``); callers may keep it."""
        if idx is None:
            t, pos, bal, unr, rec = self.t, self.position, self.balance, self.unrealized_pnl, self.recent
            return self.spec.build(self.market.windows[t], pos, bal, unr, rec)
        unr = self.unrealized_pnl[idx]
        bal = self.spec.initial_balance + self.equity[idx] - unr
        return self.spec.build(self.market.windows[self.t[idx]], self.position[idx], bal, unr, self.recent[idx])

    def step(self, actions) -> StepResult:
        a = np.asarray(actions, dtype=np.int64).reshape(self.n_envs)
        if a.min(initial=0) < 0 or a.max(initial=0) > 2:
            raise TradeMLError(f"actions must be 0 hold, 1 buy or 2 sell, got {np.unique(a).tolist()}", where="action")
        m, t, prev = self.market, self.t, self.position
        # The next bar is the segment's last: the position is closed at its open, the episode ends.
        closing = m.bars_to_end[t] == 1
        new = self.execution.cap(prev + ACTION_DIRECTION[a])
        new = np.where(closing, 0, new).astype(np.int64)
        o, c = m.open[t + 1], m.close[t + 1]
        pnl, costs = self.execution.bar_pnl(prev, new, m.close[t], o, c)
        qty = new - prev
        self._update_entry_price(prev, new, qty, self.execution.fill_price(o, qty))
        self.equity += pnl
        self.position = new
        self.recent[:, :-1] = self.recent[:, 1:]
        self.recent[:, -1] = a
        self.t = t + 1
        self.steps += 1
        reward = self.shaper(pnl, qty, self.equity, new)
        truncated = ~closing & (self.steps >= self.episode_length)
        return StepResult(reward, pnl, costs, qty, new, closing, truncated)

    def _update_entry_price(self, prev, new, qty, fill) -> None:
        """Average entry price of the open position (what a broker reports), for unrealized P&L."""
        grows = (np.abs(new) > np.abs(prev)) & (prev * new >= 0)
        grown = (self.avg_price * np.abs(prev) + fill * np.abs(qty)) / np.maximum(np.abs(new), 1)
        avg = np.where(grows, grown, self.avg_price)
        avg = np.where(prev * new < 0, fill, avg)  # flipped through zero: the rest opened at the fill
        self.avg_price = np.where(new == 0, 0.0, avg)


class TradingEnvironment(gym.Env):
    """One trading environment with the gymnasium API (the guide's name).

    ``reset(options={"start": t})`` starts at bar t instead of a random one. ``info`` of
    ``step`` carries the bar's pnl, costs, trade, fill price, position, balance, unrealized
    P&L and equity, so a scripted run can be checked by hand.
    """

    metadata = {"render_modes": []}

    def __init__(self, market: MarketData, execution: ExecutionModel, spec: ObservationSpec,
                 rewards: RewardSettings, episode_length: int | None = None, seed: int | None = None):
        self.core = TradingCore(market, execution, spec, rewards, 1, episode_length, seed)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        self.action_space = gym.spaces.Discrete(3)

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
        r = self.core.step(np.array([action]))
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
        obs = core.observe()[0]
        return obs, float(r.reward[0]), bool(r.terminated[0]), bool(r.truncated[0]), info
