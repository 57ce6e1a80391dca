"""The PPO agent (kind ``ppo``): a policy over hold / buy one contract / sell one contract that
observes a window of features and its account (position, balance, unrealized P&L, the last 10
actions), trained in the trading environment with real costs.

Training: ``trademl.models.ppo.train`` (SB3 PPO, A2C or SAC, ``[ppo] algo``, on the numpy
VecEnv, held-out evaluation, checkpoints, ONNX export checked against SB3). Serving:
``PPORuntime``: ``policy.onnx`` and ``obs_spec.json`` (the training span's normaliser and the
observation layout); the manifest's ``config.algo`` says which graph it is (none: PPO, an agent
stored before the choice existed). PPO's and A2C's vote is the policy's action probabilities.
SAC's graph gives a target position; its vote is ``target_vote``: the move the environment would
make (BUY when the target rounds above the position, SELL below, HOLD else) with scores that are
not probabilities of anything (the stacker calibrates them). Its votes depend on the account,
so ``needs_account`` is True: a backtest runs it bar by bar against the broker's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trademl.errors import DataError, ModelStoreError, SchemaError
from trademl.market.broker import RECENT_ACTIONS, AccountState
from trademl.models.base import ModelInputs, Runtime, TradeModel, Votes, check_onnx_contract, class_vote
from trademl.models.onnx_session import open_session
from trademl.models.ppo.algorithms import ALGORITHMS, DEFAULT_ALGORITHM
from trademl.models.ppo.observation import ACTION_NAMES, ObservationSpec

POLICY_FILE = "policy.onnx"
OBS_SPEC_FILE = "obs_spec.json"
OBS_INPUT = "observation"
OUTPUTS = ["action_probs", "state_value"]
SAC_OUTPUT = "target_position"
# SAC's scores: softmax of (0, k (d - 1/2), k (-d - 1/2)) for a target d contracts above the
# position; the largest is the move the environment makes, k sets how fast it dominates.
TARGET_SCORE_SHARPNESS = 4.0


def target_vote(target, position) -> np.ndarray:
    """[n, 3] (hold, buy, sell) scores of a continuous target position (contracts) against the
    current position: the argmax is the environment's move (``rounded_target``: BUY when the
    target rounds above the position, SELL below, HOLD else; a target exactly half a contract
    away ties, where the environment moves and this says HOLD). The scores only rank the moves
    and grow with the distance; they are not calibrated probabilities."""
    d = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    logits = TARGET_SCORE_SHARPNESS * np.stack([np.zeros_like(d), d - 0.5, -d - 0.5], axis=-1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class PPORuntime(Runtime):
    kind_pattern = "ppo"
    needs_account = True
    order = 30
    actions = ACTION_NAMES

    def __init__(self, session, spec: ObservationSpec, version: str = "", algo: str = DEFAULT_ALGORITHM):
        self.session = session
        self.spec = spec
        self.version = version
        self.algo = algo
        self.kind = "ppo"

    @classmethod
    def load(cls, stored_model, threads: int | None = None) -> "PPORuntime":
        """From a StoredModel of kind "ppo" (already checksum-verified by the store)."""
        where = str(stored_model.path)
        if stored_model.kind != "ppo":
            raise ModelStoreError(f"expected a ppo model, got {stored_model.kind!r}", where=where)
        spec = ObservationSpec.from_dict(json.loads(stored_model.file(OBS_SPEC_FILE).read_text()))
        if spec.feature_names != stored_model.feature_names:
            raise SchemaError(f"{OBS_SPEC_FILE} and the manifest list different features", where=where)
        algo = (stored_model.manifest.get("config") or {}).get("algo", DEFAULT_ALGORITHM)
        return cls.from_files(stored_model.file(POLICY_FILE), spec, stored_model.version, threads, algo)

    @classmethod
    def from_files(cls, onnx_path, spec: ObservationSpec, version: str = "", threads: int | None = None,
                   algo: str = DEFAULT_ALGORITHM) -> "PPORuntime":
        if algo not in ALGORITHMS:
            raise ModelStoreError(f"the agent's algorithm {algo!r} is not one of {', '.join(ALGORITHMS)}",
                                  where=str(onnx_path), hint="retrain the agent with this version")
        session = open_session(onnx_path, threads, where=str(onnx_path))
        # the contract: observations [n, obs_dim] -> action_probs [n, 3] (hold, buy, sell), state_value [n];
        # SAC: -> target_position [n] (contracts)
        outputs = [(SAC_OUTPUT, (None,))] if algo == "sac" else [(OUTPUTS[0], (None, 3)), (OUTPUTS[1], (None,))]
        check_onnx_contract(session, str(onnx_path), [(OBS_INPUT, (None, int(spec.obs_dim)))], outputs)
        return cls(session, spec, version, algo)

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def history(self) -> int:
        return self.spec.window

    def observation(self, features_window, position, balance, unrealized_pnl, recent_actions, room=None) -> np.ndarray:
        """Observation rows from RAW features [n, W, F] (model feature order, oldest row first),
        positions (contracts), balances and unrealized P&L (dollars), and the last 10 actions
        [n, 10] (0 hold, 1 buy, 2 sell, oldest first); for an agent trained under account rules,
        ``room`` [n, 2] (shares of each limit's allowance left; a fresh account's when None)."""
        x = np.asarray(features_window, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.window, len(self.feature_names)):
            raise DataError(f"features window must be [n, {self.window}, {len(self.feature_names)}], got {list(x.shape)}",
                            where="ppo features")
        n = len(x)
        recent = np.asarray(recent_actions, dtype=np.int64).reshape(n, -1)
        if recent.shape[1] != RECENT_ACTIONS or recent.min(initial=0) < 0 or recent.max(initial=0) > 2:
            raise DataError(f"recent_actions must be [n, {RECENT_ACTIONS}] codes 0 hold / 1 buy / 2 sell",
                            where="ppo recent_actions")
        state = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (position, balance, unrealized_pnl)]
        if any(not np.isfinite(s).all() for s in state):
            raise DataError("position, balance and unrealized_pnl must be finite numbers", where="ppo state")
        if room is not None:
            room = np.asarray(room, dtype=np.float64).reshape(n, -1)
            if room.shape[1] != 2 or not np.isfinite(room).all() or room.min() < 0:
                raise DataError("room must be [n, 2] shares >= 0 of the trailing and daily allowances", where="ppo room")
        return self.spec.build(self.spec.normalizer.transform(x), *state, recent, room)

    def policy(self, obs) -> tuple[np.ndarray, np.ndarray]:
        """PPO, A2C: (action probabilities [n, 3] in order hold, buy, sell; state value [n])."""
        if self.algo == "sac":
            raise ModelStoreError("a sac agent has no action probabilities: its target_position is voted on "
                                  "against the account's position (target_vote)", where="ppo")
        probs, value = self.session.run(OUTPUTS, {OBS_INPUT: self._rows(obs)})
        return probs, np.ravel(value)

    def target_position(self, obs) -> np.ndarray:
        """SAC: the target position [n] in contracts (continuous, within the cap), before rounding."""
        if self.algo != "sac":
            raise ModelStoreError(f"a {self.algo} agent has no target position (only sac has)", where="ppo")
        return np.ravel(self.session.run([SAC_OUTPUT], {OBS_INPUT: self._rows(obs)})[0])

    def _rows(self, obs) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None]
        if obs.shape[1] != self.spec.obs_dim:
            raise DataError(f"observation must have {self.spec.obs_dim} values, got {obs.shape[1]}",
                            where="ppo observation")
        return obs

    def predict(self, inputs: ModelInputs) -> Votes:
        """The policy at every prediction, observing ``inputs.account`` (a flat account of the
        training's initial balance when none is given; an agent trained under account rules reads
        the account's room to its limits, a fresh account's when the room is not known)."""
        from trademl.data.sequences import windows_at

        n = len(inputs)
        ok, why = inputs.complete_windows(self.window, "PPO agent")
        account = inputs.account if inputs.account is not None else AccountState.flat(n, self.spec.initial_balance)
        second = "target" if self.algo == "sac" else "value"
        out = {k: np.full(n, np.nan) for k in ("hold", "buy", "sell", second)}
        idx = np.flatnonzero(ok)
        if len(idx):
            a = account.take(idx)
            obs = self.observation(windows_at(inputs.X, inputs.at[idx], self.window), a.position, a.balance,
                                   a.unrealized_pnl, a.recent_actions, a.room)
            if self.algo == "sac":  # the move from the account's own position
                out["target"][idx] = target = self.target_position(obs)
                probs = target_vote(target, a.position)
            else:
                probs, out["value"][idx] = self.policy(obs)
            out["hold"][idx], out["buy"][idx], out["sell"][idx] = probs[:, 0], probs[:, 1], probs[:, 2]
        fields = {"ppo_buy_prob": "buy", "ppo_sell_prob": "sell", "ppo_hold_prob": "hold"}
        if self.algo != "sac":  # SAC has no state value (its critics value an action too)
            fields["ppo_state_value"] = "value"
        return Votes(self.kind, class_vote(out["hold"], out["buy"], out["sell"]), out, fields, why)


def training_bars(dataset):
    """The dataset's bars for the PPO trainer; a planted ``edge`` column (synthetic market)
    rides along so the agent's held-out evaluation can score it against the edge oracle."""
    bars = dataset.bars()
    if "edge" in dataset.frame.columns:
        bars["edge"] = dataset.frame["edge"].to_numpy(np.float64)
    return bars


class PPOAgent(TradeModel):
    """The guide's PPO trading agent (``[ppo]`` settings: learning_rate, clip_epsilon, n_steps, ...)."""

    section = "ppo"
    runtime = PPORuntime
    default_kinds = ("ppo",)

    def print_report(self, console) -> None:
        from trademl.models.ppo.train import print_summary

        print_summary(self.report, console)

    def _train(self, dataset, staging_root: Path, progress: bool = False, checkpoint_dir=None, resume: bool = False,
               console=None, **_):
        """``_``: options of other kinds (on_epoch_end) that do not apply here."""
        from trademl.models.ppo.train import train_ppo

        cfg = self.config.model_copy(deep=True)
        cfg.paths.model_root = str(staging_root)
        if checkpoint_dir is not None:
            cfg.ppo.checkpoint_dir = str(checkpoint_dir)
        return train_ppo(training_bars(dataset), cfg, features=dataset.X, schema=dataset.manifest["feature_schema"],
                         symbol=dataset.symbol, resume=resume, progress=bool(progress), console=console)
