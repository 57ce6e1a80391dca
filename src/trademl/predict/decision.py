"""The weighted vote: every model's vote on a bar (or a batch of bars) -> recommendation + confidence.

With ``[ensemble] method = "stacked"`` (the default) the stacker of ``trademl.models.stacker``
decides instead wherever the store has one fitted on the loaded versions; this vote decides
without one, and its confidence is not a probability.

This is the one function both the predictor (``EnsemblePredictor``, one request) and the
walk-forward backtest (every test bar) call, so serving and backtest cannot disagree.

Every kind turns its output into a vote, a probability over (HOLD, BUY, SELL) (the codes of
``trademl.market.actions``): LightGBM from the three exclusive outcomes of its win
probabilities (see ``kinds/lgbm.py``), the LSTM its signal head, the PPO agent its policy.
With weights w_m >= 0 over the models that voted on a row::

    P = sum_m w_m v_m / sum_m w_m                      (the weighted vote, sums to 1)
    recommendation = argmax P                          (ties go to HOLD, then BUY)
    agreement = sum_m w_m [argmax v_m == recommendation] / sum_m w_m
    confidence = P[recommendation] * agreement

A row where a model has no output (NaN) leaves that model out of that row. A row where every
model that voted has weight 0 is decided by those models with equal weights (``reweighted``
marks it: the predictor warns), rather than not at all. A row where nobody voted has
``voted`` False: the caller reports it, it is never turned into a HOLD.

Weights come from the configured ``[ensemble] weights`` or else from each model's stored
validation skill (``trademl.models.base.validation_skill``): the same in both callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from trademl.errors import TradeMLError
from trademl.market.actions import ACTION_NAMES, direction_of
from trademl.models.base import validation_skill


@dataclass
class Decision:
    """The decision for every row: codes, confidence and what led to it."""

    action: np.ndarray  # int8 [n]: 0 hold, 1 buy, 2 sell (0 where nobody voted)
    confidence: np.ndarray  # float64 [n] in [0, 1]; 0 where nobody voted
    probabilities: np.ndarray  # float64 [n, 3]: the weighted vote
    agreement: np.ndarray  # float64 [n]: weight share of the models whose own argmax won
    voted: np.ndarray  # bool [n]: at least one model voted
    reweighted: np.ndarray  # bool [n]: every model that voted had weight 0, equal weights used

    @property
    def recommendation(self) -> np.ndarray:
        return np.asarray(ACTION_NAMES, dtype=object)[self.action]

    @property
    def direction(self) -> np.ndarray:
        """+1 buy, -1 sell, 0 hold: what the broker adds to the position."""
        return direction_of(self.action)

    def counted(self, threshold: float) -> np.ndarray:
        """The rows whose BUY/SELL counts: confidence strictly above ``threshold``."""
        return self.voted & (self.confidence > threshold) & (self.action != 0)


def decide(votes: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> Decision:
    """Weighted argmax of the votes ({kind: [n, 3] or [3]}); NaN rows of a kind are skipped."""
    if not votes:
        raise ValueError("decide needs at least one model's votes")
    names = list(votes)
    stacked = np.array([np.asarray(votes[m], dtype=np.float64).reshape(-1, 3) for m in names])  # [M, n, 3]
    w = np.array([float(weights.get(m, 0.0)) for m in names], dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"ensemble weights must be finite and >= 0, got {dict(zip(names, w))}")
    present = np.isfinite(stacked).all(axis=2)  # [M, n]
    row_w = present * w[:, None]
    # Sums over the models in their given order, element by element: a row gets the same bits
    # whether it is decided alone (the predictor) or in a batch (the backtest).
    total = row_w[0].copy()
    for m in range(1, len(names)):
        total += row_w[m]
    voted = present.any(axis=0)
    reweighted = voted & (total == 0)
    if reweighted.any():  # only zero-weight models voted there: equal weights among them
        row_w = np.where(reweighted[None, :], present.astype(np.float64), row_w)
        total = np.where(reweighted, present.sum(axis=0).astype(np.float64), total)
    safe_total = np.where(voted, total, 1.0)
    filled = np.where(present[:, :, None], stacked, 0.0)
    probs = row_w[0][:, None] * filled[0]
    for m in range(1, len(names)):
        probs += row_w[m][:, None] * filled[m]
    probs /= safe_total[:, None]
    action = np.argmax(probs, axis=1).astype(np.int8)  # first maximum: ties go to HOLD (and 0 where nobody voted)
    agree = row_w * (np.argmax(filled, axis=2) == action)  # [M, n]
    agreeing = agree[0].copy()
    for m in range(1, len(names)):
        agreeing += agree[m]
    agreement = np.where(voted, agreeing / safe_total, 0.0)
    winning = probs[np.arange(len(action)), action]
    confidence = np.where(voted, np.clip(winning * agreement, 0.0, 1.0), 0.0)
    return Decision(action, confidence, probs, agreement, voted, reweighted)


def choose_weights(configured: Mapping[str, float] | None, metrics: Mapping[str, dict],
                   known_kinds=None) -> tuple[dict[str, float], str | None]:
    """(weights of the loaded kinds, a note or None): configured first, else stored skill, else equal.

    ``metrics`` maps each loaded kind to its manifest's metrics; the skill is read from
    ``metrics["validation_skill"]``, the one shape every kind stores.
    """
    kinds = list(metrics)
    if configured:
        if known_kinds is not None:
            unknown = sorted(set(configured) - set(known_kinds) - set(kinds))
            if unknown:
                raise TradeMLError(f"unknown model kinds {unknown} in ensemble.weights; kinds are {list(known_kinds)}",
                                   where="config [ensemble]")
        return {k: float(configured.get(k, 0.0)) for k in kinds}, None
    skills = {k: validation_skill(m) for k, m in metrics.items()}
    unknown = [k for k, s in skills.items() if s is None]
    if unknown:
        return {k: 1.0 for k in kinds}, f"equal ensemble weights: no validation skill in the manifest of {unknown}"
    if kinds and not any(s > 0 for s in skills.values()):
        return {k: 1.0 for k in kinds}, "equal ensemble weights: no model beat its baseline in validation"
    return {k: float(s) for k, s in skills.items()}, None
