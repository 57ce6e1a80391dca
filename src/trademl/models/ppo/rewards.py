"""Reward shaping for the PPO agent (the guide's "reward shaping", chosen in [ppo] config).

Every reward starts from the step's net dollar P&L (from the execution model, costs
included), divided by ``reward_scale`` (one contract's typical bar P&L on the training
span) so that rewards are O(1) whatever the contract.

- ``pnl``: that scaled net P&L.
- ``sharpe`` (default): the differential Sharpe ratio of Moody & Saffell (1998): the
  change in an exponentially weighted Sharpe ratio caused by this step's return,
  D_t = (B dA - A dB / 2) / (B - A^2)^(3/2), with A, B the running first and second
  moments (rate ``dsr_eta``). The variance is floored at one contract's bar variance,
  so a flat account (zero variance) does not turn the first small trade into a huge reward.
- ``risk_penalty`` subtracts ``risk_penalty * position**2`` every bar: the expected variance
  of holding that many contracts for a bar, in reward units (one contract's bar variance
  is 1), i.e. a mean-variance trader. P&L and the Sharpe ratio alone are indifferent to
  holding a position that has no edge; this is what makes the agent go flat when it sees
  nothing (on a random walk) and scale out as a signal fades.
- ``drawdown_penalty`` subtracts that multiple of every new increase in drawdown;
  ``trade_penalty`` subtracts that much per contract traded (on top of real costs).
- ``breach_penalty`` (dollars, scaled like the P&L) is subtracted on the bar an account's
  rules are breached (the environment then ends the episode): the price of losing the account,
  which P&L alone does not carry (the evaluation fee and the profit it would have made).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trademl.config import resolve_config
from trademl.errors import TradeMLError

REWARD_KINDS = ("pnl", "sharpe")
# Variance floor of the differential Sharpe ratio, in units of one contract's bar variance.
DSR_VARIANCE_FLOOR = 1.0
DSR_CLIP = 10.0


@dataclass(frozen=True)
class RewardSettings:
    """``kind`` and ``dsr_eta`` left as None are [ppo] reward and dsr_eta; the penalties
    default to none at all (``from_config`` reads the configured ones)."""

    kind: str | None = None
    reward_scale: float = 1.0
    dsr_eta: float | None = None
    risk_penalty: float = 0.0
    drawdown_penalty: float = 0.0
    trade_penalty: float = 0.0
    breach_penalty: float = 0.0

    def __post_init__(self):
        if self.kind is None or self.dsr_eta is None:
            ppo = resolve_config().ppo
            if self.kind is None:
                object.__setattr__(self, "kind", ppo.reward)
            if self.dsr_eta is None:
                object.__setattr__(self, "dsr_eta", ppo.dsr_eta)
        if self.kind not in REWARD_KINDS:
            raise TradeMLError(f"unknown reward {self.kind!r}; choose one of {', '.join(REWARD_KINDS)}", where="ppo.reward")
        if not self.reward_scale > 0:
            raise TradeMLError(f"reward_scale must be > 0, got {self.reward_scale}", where="ppo.reward")

    @classmethod
    def from_config(cls, ppo_cfg, reward_scale: float) -> "RewardSettings":
        return cls(ppo_cfg.reward, float(reward_scale), ppo_cfg.dsr_eta, ppo_cfg.risk_penalty,
                   ppo_cfg.drawdown_penalty, ppo_cfg.trade_penalty, ppo_cfg.breach_penalty)


class RewardShaper:
    """Vectorised reward state for N environments (running moments, equity peak)."""

    def __init__(self, settings: RewardSettings, n_envs: int):
        self.s = settings
        self.mean = np.zeros(n_envs)  # A: running mean of scaled returns
        self.second = np.full(n_envs, DSR_VARIANCE_FLOOR)  # B: running second moment
        self.peak = np.zeros(n_envs)
        self.drawdown = np.zeros(n_envs)

    def reset(self, idx) -> None:
        self.mean[idx] = 0.0
        self.second[idx] = DSR_VARIANCE_FLOOR
        self.peak[idx] = 0.0
        self.drawdown[idx] = 0.0

    def __call__(self, pnl: np.ndarray, trade_qty: np.ndarray, equity: np.ndarray, position: np.ndarray,
                 breached: np.ndarray | None = None) -> np.ndarray:
        r = pnl / self.s.reward_scale
        reward = self._differential_sharpe(r) if self.s.kind == "sharpe" else r
        if self.s.risk_penalty:
            reward = reward - self.s.risk_penalty * np.square(position, dtype=np.float64)
        if self.s.drawdown_penalty:
            self.peak = np.maximum(self.peak, equity)
            dd = self.peak - equity
            reward = reward - self.s.drawdown_penalty * np.maximum(dd - self.drawdown, 0.0) / self.s.reward_scale
            self.drawdown = dd
        if self.s.trade_penalty:
            reward = reward - self.s.trade_penalty * np.abs(trade_qty)
        if self.s.breach_penalty and breached is not None:
            reward = reward - np.where(breached, self.s.breach_penalty / self.s.reward_scale, 0.0)
        return reward.astype(np.float32)

    def _differential_sharpe(self, r: np.ndarray) -> np.ndarray:
        a, b = self.mean, self.second
        d_a, d_b = r - a, r * r - b
        # Floor the second moment itself (not just the variance): after a long flat spell
        # B decays to ~0 and would otherwise scale every reward to ~0 through B * dA.
        b_floored = np.maximum(b, a * a + DSR_VARIANCE_FLOOR)
        dsr = (b_floored * d_a - 0.5 * a * d_b) / (b_floored - a * a) ** 1.5
        self.mean = a + self.s.dsr_eta * d_a
        self.second = b + self.s.dsr_eta * d_b
        return np.clip(dsr, -DSR_CLIP, DSR_CLIP)
