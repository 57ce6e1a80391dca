"""The agent's stable-baselines3 algorithms, ``[ppo] algo``: where each one differs.

* ``ppo`` (default) and ``a2c`` (the synchronous A3C): the same Discrete(3) environment
  (hold / buy one contract / sell one contract) and SB3's ``ActorCriticPolicy``, so the
  ONNX export (action probabilities + state value) and the serving runtime are shared.
  A2C reads the [ppo] settings it has (learning_rate, n_steps, n_envs, gamma, gae_lambda,
  ent_coef, vf_coef, max_grad_norm, net_arch) and takes one RMSprop step per rollout of
  n_envs x n_steps, so it wants far smaller rollouts than PPO's 8192 (the learning test uses
  16 x 8).
* ``sac``: the environment's ``target`` action mode, a continuous target position in
  [-1, 1] of the cap, rounded to contracts and traded by the same broker; SB3's SAC with
  the ``sac_*`` settings beside the shared ones (learning_rate, gamma, net_arch). Its
  deterministic action is the actor's tanh-squashed mean; the ONNX graph outputs that times
  the cap, in contracts (``export.SACTargetHead``).

Importing this module loads neither torch nor SB3 (the serving runtime reads ``ALGORITHMS``).
"""

from __future__ import annotations

import numpy as np

ALGORITHMS = ("ppo", "a2c", "sac")
# An agent stored before [ppo] algo existed was trained with PPO.
DEFAULT_ALGORITHM = "ppo"


def action_mode(algo: str) -> str:
    """The environment's action mode for ``algo``: "target" for SAC, "discrete" otherwise."""
    return "target" if algo == "sac" else "discrete"


def env_count(cfg) -> int:
    """Environments stepped together while training: SAC has its own (``sac_n_envs``)."""
    return cfg.ppo.sac_n_envs if cfg.ppo.algo == "sac" else cfg.ppo.n_envs


def new_model(env, cfg):
    """A fresh SB3 model of ``[ppo] algo`` on ``env``, with the [ppo] settings it reads."""
    p = cfg.ppo
    common = dict(learning_rate=p.learning_rate, gamma=p.gamma, policy_kwargs={"net_arch": list(p.net_arch)},
                  seed=p.seed, device="cpu", verbose=0)
    if p.algo == "a2c":
        from stable_baselines3 import A2C

        return A2C("MlpPolicy", env, n_steps=p.n_steps, gae_lambda=p.gae_lambda, ent_coef=p.ent_coef,
                   vf_coef=p.vf_coef, max_grad_norm=p.max_grad_norm, **common)
    if p.algo == "sac":
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", env, buffer_size=p.sac_buffer_size, learning_starts=p.sac_learning_starts,
                   batch_size=p.sac_batch_size, tau=p.sac_tau, train_freq=p.sac_train_freq,
                   gradient_steps=p.sac_gradient_steps, **common)
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", env, n_steps=p.n_steps, batch_size=p.batch_size, n_epochs=p.n_epochs,
               gae_lambda=p.gae_lambda, clip_range=p.clip_epsilon, ent_coef=p.ent_coef, vf_coef=p.vf_coef,
               max_grad_norm=p.max_grad_norm, **common)


def is_continuous(model) -> bool:
    from stable_baselines3 import SAC

    return isinstance(model, SAC)


def deterministic_actions(model):
    """``obs -> actions`` of the trained agent without exploration, as the environment takes
    them: the most probable code (PPO, A2C) or the actor's mean target in [-1, 1] (SAC)."""
    import torch

    if is_continuous(model):
        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.policy.actor(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).numpy()[:, 0]
        return act

    from trademl.models.ppo.export import sb3_outputs

    return greedy(lambda obs: sb3_outputs(model.policy, obs)[0])


def greedy(probabilities):
    """``obs -> codes`` from ``obs -> [n, 3] probabilities`` (hold, buy, sell): the argmax."""
    return lambda obs: np.argmax(probabilities(obs), axis=1)
