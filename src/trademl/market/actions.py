"""The action codes, defined once: what every model votes on, what the labels and the PPO
agent use, what the broker turns into contracts.

Codes 0 HOLD, 1 BUY, 2 SELL index every (hold, buy, sell) vector in the project: a model's
vote, the LSTM's signal head, the PPO policy's action probabilities, the `signal_{h}` label.
Their direction (contracts a code adds to the position) is 0, +1, -1.
"""

from __future__ import annotations

import numpy as np

HOLD, BUY, SELL = 0, 1, 2
#: The response's spelling, indexed by code (``ensemble_recommendation``).
ACTION_NAMES = ("HOLD", "BUY", "SELL")
#: Contracts each code adds to a position, indexed by code.
DIRECTION = np.array([0, 1, -1], dtype=np.int8)


def direction_of(codes) -> np.ndarray:
    """0 HOLD / 1 BUY / 2 SELL -> 0 / +1 / -1 (int8)."""
    return DIRECTION[np.asarray(codes, dtype=np.int64)]



def rounded_target(target, cap: int) -> np.ndarray:
    """A continuous target position (contracts) -> whole contracts within +/- ``cap``, rounded
    half up: how a continuous agent's (SAC's) action becomes a position."""
    return np.clip(np.floor(np.asarray(target, dtype=np.float64) + 0.5), -cap, cap).astype(np.int64)


def code_of_move(change) -> np.ndarray:
    """Contracts a position changes by -> 1 BUY (up), 2 SELL (down), 0 HOLD (none)."""
    change = np.asarray(change)
    return np.where(change > 0, BUY, np.where(change < 0, SELL, HOLD)).astype(np.int64)
