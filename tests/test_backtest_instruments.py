"""Instruments and time zones in the backtests (issue 14): backtest-signals prices an instrument
described only on the command line and reads the signals' naive stamps in --tz; the walk-forward
takes the same options."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.cli import app

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPY = SHARED / "spy_1min_2011_ninjatrader.txt"
SPY_FLAGS = ["--symbol", "SPY", "--tick-size", "0.01", "--point-value", "1", "--commission", "0"]
NY = "America/New_York"
pytestmark = pytest.mark.skipif(not SPY.exists(), reason="shared SPY file not on this machine")


def _spy_days(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Two days of the SPY file, written with explicit UTC offsets (so --tz does not move them)."""
    from trademl.data.bars import load_bars

    bars = load_bars(SPY, symbol="SPY", tz="UTC").loc["2011-01-04":"2011-01-05"]
    out = bars.reset_index()
    out["timestamp"] = [t.isoformat() for t in bars.index]
    path = tmp_path / "spy_two_days.csv"
    out.to_csv(path, index=False)
    return path, bars


def _signals(tmp_path: Path, name: str, stamps) -> Path:
    """BUY at the first stamp, SELL at the second (back to flat): one long trade of one share."""
    path = tmp_path / name
    path.write_text("timestamp,action,confidence\n" + "".join(f"{s},{a},0.9\n" for s, a in zip(stamps, ("BUY", "SELL"))))
    return path


def _pnl(tmp_path: Path, argv: list[str]) -> float:
    out = tmp_path / "r.json"
    done = CliRunner().invoke(app, ["backtest-signals", *argv, "--threshold", "0.5", "--json", str(out)])
    assert done.exit_code == 0, done.output
    return json.loads(out.read_text())["runs"]["signals"]["total_pnl"]


def test_backtest_signals_prices_spy_as_given_and_reads_signal_stamps_in_tz(tmp_path):
    path, bars = _spy_days(tmp_path)
    i, j = 100, 160  # decided at these bars' closes (open + 1 minute), filled at the next bars' opens
    closes = [bars.index[k] + pd.Timedelta(minutes=1) for k in (i, j)]
    expected = bars["open"].iloc[j + 1] - bars["open"].iloc[i + 1] - 2 * 0.01  # a tick of slippage each way
    utc = _signals(tmp_path, "utc.csv", [t.isoformat() for t in closes])
    refused = CliRunner().invoke(app, ["backtest-signals", str(path), str(utc)])
    assert refused.exit_code == 2 and "--symbol" in refused.output and "Traceback" not in refused.output
    assert _pnl(tmp_path, [str(path), str(utc), *SPY_FLAGS]) == pytest.approx(expected, abs=1e-9)
    # the same instants written as naive New York times: right with --tz, five hours off without
    local = _signals(tmp_path, "ny.csv", [t.tz_convert(NY).strftime("%Y-%m-%d %H:%M:%S") for t in closes])
    assert _pnl(tmp_path, [str(path), str(local), *SPY_FLAGS, "--tz", NY]) == pytest.approx(expected, abs=1e-9)
    assert _pnl(tmp_path, [str(path), str(local), *SPY_FLAGS]) != pytest.approx(expected, abs=1e-9)


def test_the_walk_forward_takes_the_instrument_and_zone_options(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text("[lgbm]\nn_estimators = 10\nn_folds = 2\nnum_leaves = 7\nmin_child_samples = 200\nmin_rows = 500\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["backtest", str(SPY), "--models", "lgbm", "--folds", "2", "-c", str(toml)])
    assert refused.exit_code == 2 and "--symbol" in refused.output and "Traceback" not in refused.output
    bad_zone = runner.invoke(app, ["backtest", str(SPY), *SPY_FLAGS, "--tz", "Mars/Olympus"])
    assert bad_zone.exit_code == 2 and "unknown timezone" in bad_zone.output
    out = tmp_path / "wf.json"
    done = runner.invoke(app, ["backtest", str(SPY), *SPY_FLAGS, "--tz", "UTC", "--models", "lgbm", "--folds", "2",
                               "-c", str(toml), "--json", str(out), "-o", str(tmp_path / "wf.html")])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["bars"] > 0
