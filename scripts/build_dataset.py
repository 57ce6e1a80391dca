#!/usr/bin/env python3
"""The guide's `python3 scripts/build_dataset.py`: same as `trademl data build`.

With the system python3 it restarts itself in the project's .venv (scripts/_venv.py); or run
`.venv/bin/python scripts/build_dataset.py`. All `trademl data build` options apply.
"""

import sys
from pathlib import Path

import _venv

_venv.use_project_venv()  # the guide's `python3 scripts/...` with the system python3
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["data", "build", *sys.argv[1:]], prog_name="build_dataset.py")
