"""The PPO agent at serving time: ONNX Runtime and numpy only (no torch, no SB3, no lightgbm).

``PPORuntime.load(stored_model)`` opens ``policy.onnx`` and ``obs_spec.json`` (the feature
normaliser fitted on the training span and the observation layout). ``observation`` turns
RAW feature windows plus the account state into the exact vector the agent was trained on
(the layout code is the environment's own, `trademl.models.ppo.env.ObservationSpec`);
``predict`` returns action probabilities in the order hold, buy, sell and the state value.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

from trademl.errors import DataError, ModelStoreError, SchemaError
from trademl.models.ppo.env import ACTION_NAMES, N_RECENT_ACTIONS, ObservationSpec

POLICY_FILE = "policy.onnx"
OBS_SPEC_FILE = "obs_spec.json"
OBS_INPUT = "observation"
OUTPUTS = ["action_probs", "state_value"]


def _session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


class PPORuntime:
    actions = ACTION_NAMES

    def __init__(self, session: ort.InferenceSession, spec: ObservationSpec, version: str = ""):
        self.session = session
        self.spec = spec
        self.version = version

    @classmethod
    def load(cls, stored_model, threads: int | None = None) -> "PPORuntime":
        """From a StoredModel of kind "ppo" (already checksum-verified by the store)."""
        where = str(stored_model.path)
        if stored_model.kind != "ppo":
            raise ModelStoreError(f"expected a ppo model, got {stored_model.kind!r}", where=where)
        spec = ObservationSpec.from_dict(json.loads(stored_model.file(OBS_SPEC_FILE).read_text()))
        if spec.feature_names != stored_model.feature_names:
            raise SchemaError(f"{OBS_SPEC_FILE} and the manifest list different features", where=where)
        return cls.from_files(stored_model.file(POLICY_FILE), spec, stored_model.version, threads)

    @classmethod
    def from_files(cls, onnx_path, spec: ObservationSpec, version: str = "", threads: int | None = None) -> "PPORuntime":
        threads = threads or int(os.environ.get("TRADEML_ORT_THREADS", "1"))
        session = ort.InferenceSession(str(onnx_path), _session_options(threads), providers=["CPUExecutionProvider"])
        return cls(session, spec, version)

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    @property
    def window(self) -> int:
        return self.spec.window

    def observation(self, features_window, position, balance, unrealized_pnl, recent_actions) -> np.ndarray:
        """Observation rows from RAW features [n, W, F] (model feature order, oldest row first),
        positions (contracts), balances and unrealized P&L (dollars), and the last 10 actions
        [n, 10] (0 hold, 1 buy, 2 sell, oldest first)."""
        x = np.asarray(features_window, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.window, len(self.feature_names)):
            raise DataError(
                f"features window must be [n, {self.window}, {len(self.feature_names)}], got {list(x.shape)}",
                where="ppo features",
            )
        n = len(x)
        recent = np.asarray(recent_actions, dtype=np.int64).reshape(n, -1)
        if recent.shape[1] != N_RECENT_ACTIONS or recent.min(initial=0) < 0 or recent.max(initial=0) > 2:
            raise DataError(f"recent_actions must be [n, {N_RECENT_ACTIONS}] codes 0 hold / 1 buy / 2 sell", where="ppo recent_actions")
        state = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (position, balance, unrealized_pnl)]
        if any(not np.isfinite(s).all() for s in state):
            raise DataError("position, balance and unrealized_pnl must be finite numbers", where="ppo state")
        windows = self.spec.normalizer.transform(x)
        return self.spec.build(windows, *state, recent)

    def predict(self, obs) -> tuple[np.ndarray, np.ndarray]:
        """(action probabilities [n, 3] in order hold, buy, sell; state value [n])."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None]
        if obs.shape[1] != self.spec.obs_dim:
            raise DataError(f"observation must have {self.spec.obs_dim} values, got {obs.shape[1]}", where="ppo observation")
        probs, value = self.session.run(OUTPUTS, {OBS_INPUT: obs})
        return probs, value
