"""ONNX export of a trained SB3 PPO policy: observation -> (action probabilities, state value).

Serving never loads the SB3 zip (it is pickled); it runs this graph with ONNX Runtime.
The graph is SB3's own modules (features extractor, MLP extractor, action and value heads)
followed by a softmax, so its outputs equal SB3's ``get_distribution(obs).distribution.probs``
and ``predict_values(obs)`` to float32 rounding; ``check_onnx_matches`` proves it.
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


def export_policy(policy, obs_dim: int, path: Path) -> Path:
    """Write the policy as ONNX (dynamic batch) to ``path``."""
    heads = PolicyHeads(policy).eval()
    example = torch.zeros(2, obs_dim, dtype=torch.float32)
    path = Path(path)
    # The classic (TorchScript) exporter: the dynamo one needs onnxscript, which is not a
    # dependency; it warns that it is deprecated, which is not the user's concern.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            heads, (example,), str(path), input_names=[OBS_INPUT], output_names=list(OUTPUTS),
            dynamic_axes={OBS_INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    return path


def sb3_outputs(policy, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SB3's own action probabilities and values for ``obs`` (the reference for the export)."""
    with torch.no_grad():
        t = torch.as_tensor(obs, dtype=torch.float32)
        probs = policy.get_distribution(t).distribution.probs.numpy()
        values = policy.predict_values(t).squeeze(-1).numpy()
    return probs, values


def check_onnx_matches(policy, onnx_path: Path, obs: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """Largest difference between SB3 and the ONNX graph on ``obs``; raises above ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs, values = session.run(list(OUTPUTS), {OBS_INPUT: np.asarray(obs, np.float32)})
    ref_probs, ref_values = sb3_outputs(policy, obs)
    diff = float(max(np.abs(probs - ref_probs).max(), np.abs(values - ref_values).max()))
    if not diff <= tolerance:
        raise ModelStoreError(f"ONNX export differs from the SB3 policy by {diff:.2e} (> {tolerance:.0e})", where=str(onnx_path))
    return diff
