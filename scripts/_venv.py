"""Run the guide's scripts with the project's environment.

The guide says ``python3 scripts/build_dataset.py``; with the system python3 the project's
dependencies (typer, numpy, ...) are not there. When ``.venv`` exists (``make setup``) and this
interpreter is not it, the script is started again with ``.venv/bin/python`` and the same
arguments; without ``.venv`` it says how to make one instead of failing on an import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"


def use_project_venv() -> None:
    """Re-exec the running script with the project's venv python unless it is the one running."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if python.exists():
        os.execv(str(python), [str(python), sys.argv[0], *sys.argv[1:]])
    try:
        import typer  # noqa: F401  (a python with the dependencies installed some other way)
    except ImportError:
        sys.exit(f"{Path(sys.argv[0]).name}: the project's environment is missing: run `make setup` in {ROOT} "
                 f"(or use {python} once it exists)")
