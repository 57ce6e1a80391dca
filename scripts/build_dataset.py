#!/usr/bin/env python3
"""The guide's `python3 scripts/build_dataset.py`: same as `trademl data build`.

Run it with the project's environment active (`source .venv/bin/activate`), or through
`.venv/bin/python scripts/build_dataset.py`. All `trademl data build` options apply.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trademl.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["data", "build", *sys.argv[1:]], prog_name="build_dataset.py")
