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

