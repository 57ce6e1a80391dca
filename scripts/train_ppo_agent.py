#!/usr/bin/env python3
"""The guide's `python3 scripts/train_ppo_agent.py`: same as `trademl train ppo`.

Run it with the project's environment active (`source .venv/bin/activate`), or through
`.venv/bin/python scripts/train_ppo_agent.py`. All `trademl train ppo` options apply
(`--resume`, `--timesteps`, `--synthetic N`, `--config trademl.toml`, a bars file or dataset).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["train", "ppo", *sys.argv[1:]], prog_name="train_ppo_agent.py")
