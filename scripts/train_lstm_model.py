#!/usr/bin/env python3
"""The guide's `python3 scripts/train_lstm_model.py`: same as `trademl train lstm`.

With the system python3 it restarts itself in the project's .venv (scripts/_venv.py); or run
`.venv/bin/python scripts/train_lstm_model.py`. All `trademl train lstm` options apply
(dataset folder, --resume, --epochs, --config); settings live in the [lstm] section of
trademl.toml under the guide's names (SEQUENCE_LENGTH, PREDICTION_HORIZON, HIDDEN_SIZE, ...).
"""

import sys
from pathlib import Path

import _venv

_venv.use_project_venv()  # the guide's `python3 scripts/...` with the system python3
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["train", "lstm", *sys.argv[1:]], prog_name="train_lstm_model.py")
