"""The CLI shows warnings through logging: one "warning: <message>" line per distinct message on
stderr, never Python's "file:line: RuntimeWarning: ..." block with a source line of ours."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from trademl.cli import WARNINGS_LOGGER, app

REPO = Path(__file__).resolve().parents[1]


def _naive_bars(path: Path) -> Path:
    """Ten naive-stamped 1-minute bars: loading them warns that they are read as UTC."""
    rows = [f"2024-01-02 14:{m:02d}:00,100,101,99,100.5,10" for m in range(10)]
    path.write_text("timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


def test_a_library_warning_is_one_logging_line_in_a_real_terminal_run(tmp_path):
    bars = _naive_bars(tmp_path / "es_naive.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "trademl.cli", "data", "inspect", str(bars)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"warning: {bars}: naive timestamps read as UTC; if they are local times give --tz ZONE "
                     "(or [data] timezone), e.g. --tz America/New_York"]
    assert "Warning:" not in done.stderr and ".py:" not in done.stderr


def test_numpy_runtime_warnings_and_repeats_are_logged_once_without_source_lines(tmp_path, monkeypatch):
    import trademl.data.bars as bars_mod

    describe = bars_mod.describe_bars

    def noisy(frame, *args, **kwargs):  # the library warns: numpy twice, then one message from two places
        np.log(np.zeros(2))
        np.log(np.zeros(3))
        warnings.warn("the bars look odd", UserWarning)
        warnings.warn("the bars look odd", UserWarning)
        return describe(frame, *args, **kwargs)

    monkeypatch.setattr(bars_mod, "describe_bars", noisy)
    done = CliRunner().invoke(app, ["data", "inspect", str(_naive_bars(tmp_path / "es_naive.csv")), "--tz", "UTC"])
    assert done.exit_code == 0, done.output
    shown = [line for line in done.stderr.splitlines() if line.strip()]
    assert shown == ["warning: divide by zero encountered in log", "warning: the bars look odd"]
    assert "RuntimeWarning" not in done.output and "np.log" not in done.output
    # the command's handler is gone afterwards: the library's warnings are Python's again outside the CLI
    assert not any(type(h).__name__ == "_EchoHandler" for h in logging.getLogger(WARNINGS_LOGGER).handlers)
    assert warnings.showwarning.__module__ != "trademl.cli"
