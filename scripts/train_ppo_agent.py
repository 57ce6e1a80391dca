#!/usr/bin/env python3
"""The guide's `python3 scripts/train_ppo_agent.py`: same as `trademl train ppo`.

With the system python3 it restarts itself in the project's .venv (scripts/_venv.py); or run
`.venv/bin/python scripts/train_ppo_agent.py`. All `trademl train ppo` options apply
(`--resume`, `--timesteps`, `--synthetic N`, `--algo ppo|a2c|sac`, `--config trademl.toml`, a bars
file or dataset).
"""

import sys
from pathlib import Path

import _venv

_venv.use_project_venv()  # the guide's `python3 scripts/...` with the system python3
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["train", "ppo", *sys.argv[1:]], prog_name="train_ppo_agent.py")
