#!/usr/bin/env python3
"""The guide's `python3 scripts/backtest_models.py`: same as `trademl backtest`.

With the system python3 it restarts itself in the project's .venv (scripts/_venv.py); or run
`.venv/bin/python scripts/backtest_models.py`. All `trademl backtest` options apply, e.g.
`python3 scripts/backtest_models.py --folds 3 --budget small --out report.html`.
"""

import sys
from pathlib import Path

import _venv

_venv.use_project_venv()  # the guide's `python3 scripts/...` with the system python3
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["backtest", *sys.argv[1:]], prog_name="backtest_models.py")
