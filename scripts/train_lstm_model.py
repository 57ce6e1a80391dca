#!/usr/bin/env python3
"""The guide's `python3 scripts/train_lstm_model.py`: same as `trademl train lstm`.

Run it with the project's environment active (`source .venv/bin/activate`), or through
`.venv/bin/python scripts/train_lstm_model.py`. All `trademl train lstm` options apply
(dataset folder, --resume, --epochs, --config); settings live in the [lstm] section of
trademl.toml under the guide's names (SEQUENCE_LENGTH, PREDICTION_HORIZON, HIDDEN_SIZE, ...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["train", "lstm", *sys.argv[1:]], prog_name="train_lstm_model.py")
