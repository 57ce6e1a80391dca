"""The ensemble vote, vectorised: arrays of model outputs in, recommendation + confidence out.

Every model turns its output into a vote, a probability over (HOLD, BUY, SELL) - the
coding of the PPO actions and of the `signal_{h}` labels (0 hold, 1 buy, 2 sell):

* LightGBM (one vote per horizon) from its calibrated win probabilities of a long
  (p_l) and of a short (p_s) at the same bar::

      buy = p_l    sell = p_s    hold = 1 - p_l - p_s      (divided by their sum)

  A long and a short over the same window cannot both win after costs (the long wins
  when the move beats the round-trip cost upwards, the short when it beats it
  downwards), so "long wins", "short wins" and "neither clears its costs" are three
  exclusive outcomes: the vote is their probabilities. Where calibration noise makes
  p_l + p_s exceed 1, hold is 0 and the two sides are rescaled. (Treating the two as
  independent, buy = p_l (1 - p_s), would make HOLD win whenever p_l + p_s is near 1 and
  neither side is above ~0.71, silencing a model with a real directional lean.)
* LSTM: its signal head's (hold, buy, sell) probabilities as they are.
* PPO: its action probabilities (hold, buy, sell) as they are.

With weights w_m >= 0 over the models that voted on a row::

    P = sum_m w_m v_m / sum_m w_m                      (the weighted vote, sums to 1)
    recommendation = argmax P                          (ties go to HOLD, then BUY)
    agreement = sum_m w_m [argmax v_m == recommendation] / sum_m w_m
    confidence = P[recommendation] * agreement

A row where a model has no output (NaN) simply leaves that model out of that row, so
the backtester can pass whole series with gaps. A row where nobody voted is an error
for the caller to report (``voted`` is False there); it is never turned into a HOLD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOLD, BUY, SELL = 0, 1, 2
CLASS_NAMES = ("HOLD", "BUY", "SELL")


def lgbm_vote(p_long, p_short) -> np.ndarray:
    """[n, 3] (hold, buy, sell) from the win probabilities of a long and of a short."""
    p_long = np.asarray(p_long, dtype=np.float64)
    p_short = np.asarray(p_short, dtype=np.float64)
    hold = np.clip(1.0 - p_long - p_short, 0.0, None)
    vote = np.stack([hold, p_long, p_short], axis=-1)
    return vote / vote.sum(axis=-1, keepdims=True)


def signal_vote(hold, buy, sell) -> np.ndarray:
    """[n, 3] from class probabilities (LSTM head, PPO policy), renormalised against float drift."""
    v = np.stack([np.asarray(hold, np.float64), np.asarray(buy, np.float64), np.asarray(sell, np.float64)], axis=-1)
    return v / v.sum(axis=-1, keepdims=True)


@dataclass
class Combined:
    """The decision for every row: codes, names, confidence and what led to it."""

    action: np.ndarray  # int8 [n]: 0 hold, 1 buy, 2 sell (undefined where not voted)
    confidence: np.ndarray  # float64 [n] in [0, 1]; 0 where not voted
    probabilities: np.ndarray  # float64 [n, 3]: the weighted vote
    agreement: np.ndarray  # float64 [n]: weight share of the models whose own argmax won
    voted: np.ndarray  # bool [n]: at least one model with weight > 0 voted

    @property
    def recommendation(self) -> np.ndarray:
        return np.asarray(CLASS_NAMES, dtype=object)[self.action]


def combine_votes(votes: dict[str, np.ndarray], weights: dict[str, float]) -> Combined:
    """Weighted argmax of the votes ({model: [n, 3] or [3]}); NaN rows of a model are skipped."""
    if not votes:
        raise ValueError("combine_votes needs at least one model's votes")
    names = list(votes)
    stacked = np.stack([np.atleast_2d(np.asarray(votes[m], dtype=np.float64)) for m in names])  # [M, n, 3]
    w = np.array([float(weights.get(m, 0.0)) for m in names], dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"ensemble weights must be finite and >= 0, got {dict(zip(names, w))}")
    present = np.isfinite(stacked).all(axis=2)  # [M, n]
    row_w = np.where(present, w[:, None], 0.0)
    total = row_w.sum(axis=0)  # [n]
    voted = total > 0
    safe_total = np.where(voted, total, 1.0)
    filled = np.where(present[:, :, None], stacked, 0.0)
    probs = np.einsum("mn,mnk->nk", row_w, filled) / safe_total[:, None]
    action = np.argmax(probs, axis=1).astype(np.int8)  # first maximum: ties go to HOLD
    own = np.argmax(filled, axis=2)  # [M, n]
    agreement = (row_w * (own == action[None, :])).sum(axis=0) / safe_total
    winning = np.take_along_axis(probs, action[:, None].astype(np.int64), axis=1)[:, 0]
    confidence = np.where(voted, np.clip(winning * agreement, 0.0, 1.0), 0.0)
    return Combined(action, confidence, probs, np.where(voted, agreement, 0.0), voted)
