"""The PPO agent's observation: the feature normaliser and the layout of one observation vector.

numpy only (no gymnasium, no torch): the training environment (``env.py``) and the serving
runtime (``trademl.models.kinds.ppo``) both build observations with this code, so training
and serving see the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trademl.errors import DataError, TradeMLError
from trademl.market.actions import DIRECTION
from trademl.market.broker import RECENT_ACTIONS
from trademl.risk.limits import fresh_room
from trademl.risk.rules import AccountRules

ACTION_NAMES = ("hold", "buy", "sell")  # the policy's outputs, in code order (trademl.market.actions)
N_STATE_INPUTS = 3 + RECENT_ACTIONS  # position, balance, unrealized P&L, last 10 actions
N_ROOM_INPUTS = 2  # with account rules: the room left to the trailing max loss and to the daily limit
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
    + with ``rules`` (an agent trained under an account's rules): [room to the trailing max loss,
      room to the daily loss limit], each as a share of its allowance (``trademl.risk.limits``)
    """

    normalizer: FeatureNormalizer
    window: int
    max_position: int
    initial_balance: float
    pnl_scale: float
    rules: AccountRules | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.normalizer.names)

    @property
    def n_features(self) -> int:
        return len(self.normalizer.names)

    @property
    def obs_dim(self) -> int:
        return self.window * self.n_features + N_STATE_INPUTS + (N_ROOM_INPUTS if self.rules is not None else 0)

    def build(self, windows, position, balance, unrealized_pnl, recent_actions, room=None, out=None) -> np.ndarray:
        """Observation rows from already-normalised windows ([n, W*F] or [n, W, F]); ``room`` [n, 2]
        (shares of the allowances) is read when the spec has rules, a fresh account's when None."""
        windows = np.asarray(windows)
        n = len(windows)
        obs = np.empty((n, self.obs_dim), dtype=np.float32) if out is None else out
        wf = self.window * self.n_features
        obs[:, :wf] = windows.reshape(n, wf)
        obs[:, wf] = np.asarray(position, dtype=np.float64) / self.max_position
        obs[:, wf + 1] = np.clip((np.asarray(balance, dtype=np.float64) - self.initial_balance) / self.pnl_scale, -STATE_CLIP, STATE_CLIP)
        obs[:, wf + 2] = np.clip(np.asarray(unrealized_pnl, dtype=np.float64) / self.pnl_scale, -STATE_CLIP, STATE_CLIP)
        obs[:, wf + 3: wf + N_STATE_INPUTS] = DIRECTION[np.asarray(recent_actions, dtype=np.int64)]
        if self.rules is not None:
            obs[:, wf + N_STATE_INPUTS:] = fresh_room(n) if room is None else room
        return obs

    def to_dict(self) -> dict:
        return {
            "layout": "window[W*F, oldest first] + position/max_position + (balance-initial)/pnl_scale"
            " + unrealized/pnl_scale + last 10 actions (-1 sell, 0 hold, +1 buy; oldest first)"
            " [+ room to the trailing max loss and to the daily limit, shares of each allowance, with rules]",
            "window": self.window,
            "max_position": self.max_position,
            "initial_balance": self.initial_balance,
            "pnl_scale": self.pnl_scale,
            "n_recent_actions": RECENT_ACTIONS,
            "obs_dim": self.obs_dim,
            "actions": list(ACTION_NAMES),
            "normalizer": self.normalizer.to_dict(),
            "rules": None if self.rules is None else self.rules.model_dump(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ObservationSpec":
        return cls(FeatureNormalizer.from_dict(d["normalizer"]), int(d["window"]), int(d["max_position"]),
                   float(d["initial_balance"]), float(d["pnl_scale"]),
                   None if d.get("rules") is None else AccountRules.model_validate(d["rules"]))
