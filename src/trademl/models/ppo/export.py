"""ONNX export of a trained SB3 agent.

PPO and A2C (one ``ActorCriticPolicy``): observation -> (action probabilities, state value).
The graph is SB3's own modules (features extractor, MLP extractor, action and value heads)
followed by a softmax, so its outputs equal SB3's ``get_distribution(obs).distribution.probs``
and ``predict_values(obs)`` to float32 rounding; ``check_onnx_matches`` proves it.

SAC: observation -> target position in contracts: the actor's deterministic action (its mean,
tanh-squashed into [-1, 1]) times the position cap, ``SACTargetHead``; ``check_onnx_matches``
compares it with SB3's ``actor(obs, deterministic=True) * cap``.

Serving never loads the SB3 zip (it is pickled); it runs this graph with ONNX Runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trademl.errors import ModelStoreError

OBS_INPUT = "observation"
OUTPUTS = ("action_probs", "state_value")
SAC_OUTPUT = "target_position"
# Largest absolute difference allowed between SB3 and the exported graph.
TOLERANCE = 1e-5


class PolicyHeads(nn.Module):
    """SB3's actor-critic forward pass without sampling: probabilities (hold, buy, sell) and value."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor):
        features = self.policy.extract_features(obs)
        if isinstance(features, tuple):  # separate actor and critic feature extractors
            latent_pi = self.policy.mlp_extractor.forward_actor(features[0])
            latent_vf = self.policy.mlp_extractor.forward_critic(features[1])
        else:
            latent_pi, latent_vf = self.policy.mlp_extractor(features)
        probs = torch.softmax(self.policy.action_net(latent_pi), dim=-1)
        value = self.policy.value_net(latent_vf).squeeze(-1)
        return probs, value


class SACTargetHead(nn.Module):
    """SB3 SAC's actor without sampling: tanh(mean action) * cap, the target position in contracts."""

    def __init__(self, actor, max_position: int):
        super().__init__()
        self.actor = actor
        self.max_position = float(max_position)

    def forward(self, obs: torch.Tensor):
        features = self.actor.extract_features(obs, self.actor.features_extractor)
        mean = self.actor.mu(self.actor.latent_pi(features))
        return torch.tanh(mean)[:, 0] * self.max_position


def export_policy(policy, obs_dim: int, path: Path) -> Path:
    """Write a PPO or A2C policy as ONNX (dynamic batch) to ``path``."""
    return _export(PolicyHeads(policy), obs_dim, path, list(OUTPUTS))


def export_sac_actor(actor, max_position: int, obs_dim: int, path: Path) -> Path:
    """Write SAC's deterministic actor, scaled to contracts, as ONNX (dynamic batch) to ``path``."""
    return _export(SACTargetHead(actor, max_position), obs_dim, path, [SAC_OUTPUT])


def _export(module: nn.Module, obs_dim: int, path: Path, outputs: list[str]) -> Path:
    example = torch.zeros(2, obs_dim, dtype=torch.float32)
    path = Path(path)
    # The classic (TorchScript) exporter: the dynamo one needs onnxscript, which is not a
    # dependency; it warns that it is deprecated, which is not the user's concern.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=[OBS_INPUT], output_names=outputs,
            dynamic_axes={OBS_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=17, dynamo=False,
        )
    return path


def export_agent(model, max_position: int, obs_dim: int, path: Path) -> Path:
    """The served graph of any of the agent's algorithms (see the module doc)."""
    from trademl.models.ppo.algorithms import is_continuous

    if is_continuous(model):
        return export_sac_actor(model.policy.actor, max_position, obs_dim, path)
    return export_policy(model.policy, obs_dim, path)


def sb3_outputs(policy, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SB3's own action probabilities and values for ``obs`` (the reference for the export)."""
    with torch.no_grad():
        t = torch.as_tensor(obs, dtype=torch.float32)
        probs = policy.get_distribution(t).distribution.probs.numpy()
        values = policy.predict_values(t).squeeze(-1).numpy()
    return probs, values


def sb3_target_position(actor, max_position: int, obs: np.ndarray) -> np.ndarray:
    """SB3 SAC's own deterministic action times the cap, in contracts (the reference for the export)."""
    with torch.no_grad():
        action = actor(torch.as_tensor(obs, dtype=torch.float32), deterministic=True)
    return action.numpy()[:, 0] * max_position


def check_onnx_matches(model, onnx_path: Path, obs: np.ndarray, max_position: int,
                       tolerance: float = TOLERANCE) -> float:
    """Largest difference between SB3 and the ONNX graph on ``obs``; raises above ``tolerance``."""
    import onnxruntime as ort

    from trademl.models.ppo.algorithms import is_continuous

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {OBS_INPUT: np.asarray(obs, np.float32)}
    if is_continuous(model):
        (target,) = session.run([SAC_OUTPUT], feed)
        diff = float(np.abs(target - sb3_target_position(model.policy.actor, max_position, obs)).max())
    else:
        probs, values = session.run(list(OUTPUTS), feed)
        ref_probs, ref_values = sb3_outputs(model.policy, obs)
        diff = float(max(np.abs(probs - ref_probs).max(), np.abs(values - ref_values).max()))
    if not diff <= tolerance:
        raise ModelStoreError(f"ONNX export differs from the SB3 policy by {diff:.2e} (> {tolerance:.0e})", where=str(onnx_path))
    return diff
