"""N trading environments stepped at once in numpy, as a stable-baselines3 VecEnv.

Its action space is the core's action mode: Discrete(3) (PPO, A2C) or a Box target position
in [-1, 1] of the cap (SAC); both step the same `TradingCore` and broker.

There are no sub-environments: one `TradingCore` holds every env's state as arrays, so
a step over 1024 envs is a handful of numpy operations instead of 1024 Python calls.
Done envs are reset inside ``step_wait`` (the VecEnv contract); their last observation
goes into ``infos[i]["terminal_observation"]`` with ``TimeLimit.truncated`` set when the
episode was cut by ``episode_length`` (SB3 then bootstraps its value), and
``infos[i]["episode"]`` carries the episode's reward sum, length and net P&L for logging.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from trademl.market.execution import ExecutionModel
from trademl.models.ppo.env import MarketData, TradingCore, action_space
from trademl.models.ppo.observation import ObservationSpec
from trademl.models.ppo.rewards import RewardSettings


class TradingVecEnv(VecEnv):
    render_mode = None

    def __init__(self, market: MarketData, execution: ExecutionModel, spec: ObservationSpec,
                 rewards: RewardSettings, n_envs: int = 64, episode_length: int | None = None,
                 seed: int | None = None, rules=None, account_start: str = "fresh", action_mode: str = "discrete"):
        self.core = TradingCore(market, execution, spec, rewards, n_envs, episode_length, seed, rules, account_start,
                                action_mode)
        obs_space = spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        super().__init__(n_envs, obs_space, action_space(action_mode))
        self._actions = np.zeros((n_envs, *self.action_space.shape), self.action_space.dtype)
        self._episode_reward = np.zeros(n_envs)
        self._t0 = time.time()

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.core.rng = np.random.default_rng(self._seeds[0])
            self._reset_seeds()
        self.core.reset()
        self._episode_reward[:] = 0.0
        return self.core.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        core = self.core
        r = core.step(self._actions)
        self._episode_reward += r.reward
        obs = core.observe()
        done = r.terminated | r.truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            idx = np.flatnonzero(done)
            for i in idx:
                infos[i] = {
                    "terminal_observation": obs[i].copy(),
                    "TimeLimit.truncated": bool(r.truncated[i]),
                    "episode": {"r": float(self._episode_reward[i]), "l": int(core.steps[i]),
                                "pnl": float(core.equity[i]), "t": round(time.time() - self._t0, 3),
                                "breached": bool(r.breached is not None and r.breached[i])},
                }
            core.reset(done)
            self._episode_reward[idx] = 0.0
            obs[idx] = core.observe(idx)
        return obs, r.reward, done, infos

    def close(self) -> None:
        pass

    def seed(self, seed: int | None = None):
        self.core.rng = np.random.default_rng(seed)
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    # There is one vectorised object rather than N sub-envs: attribute access is answered
    # by it (the same value for every index), which is what SB3's helpers need.
    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
