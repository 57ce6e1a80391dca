"""The HTML report: self-contained, written atomically, and rendered by a real headless Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trademl.backtest.baselines import run_baselines
from trademl.backtest.engine import run_backtest
from trademl.backtest.report import write_report
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report_inputs():
    bars = synthetic_bars(6000, seed=12, edge_ic=0.1, edge_horizon=5, symbol="ES")
    edge = bars["edge"].to_numpy()
    signals = {"action": np.sign(edge), "confidence": np.clip(np.abs(edge) / 2.5, 0, 1)}
    strategy = run_backtest(bars, signals, name="ensemble")
    runs = run_baselines(bars, strategy, model_signals={"lgbm": signals})
    return bars, runs


def render(path: Path, tmp_path: Path) -> tuple[str, str]:
    """(DOM after load, browser log) of the page in headless Chromium, offline."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=15000", "--dump-dom", path.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_errors(log: str) -> list[str]:
    """Console messages in Chromium's stderr log that report an error."""
    messages = re.findall(r'CONSOLE[:(]\d+\)?\] "(.*)", source:', log)
    return [m for m in messages if re.search(r"error|uncaught", m, re.IGNORECASE)]


def status_of(dom: str) -> dict:
    match = re.search(r'<pre id="report-status"([^>]*)>', dom)
    assert match, "the report's status element is missing from the rendered DOM"
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', match.group(1)))


def test_report_is_self_contained_and_atomic(report_inputs, tmp_path):
    bars, runs = report_inputs
    out = write_report(tmp_path / "reports" / "backtest.html", runs, bars=bars, confidence_threshold=0.7)
    text = out.read_text()
    external = re.findall(r"<(?:script|link)[^>]+(?:src|href)=", text)
    assert external == []  # plotly.js is inlined, nothing is fetched: the file opens offline
    assert len(text) > 3_000_000  # ... and it is really there (plotly.min.js is ~4.5 MB)
    assert text.count("Plotly.newPlot") == 4
    for name in runs:
        assert f"<th>{name}</th>" in text  # one column per run
    assert [p.name for p in out.parent.iterdir()] == ["backtest.html"]  # no temp file left behind
    with pytest.raises(TradeMLError, match="no run named"):
        write_report(tmp_path / "other.html", runs, main="nope")
    assert not (tmp_path / "other.html").exists()


def test_report_without_signals_says_why_there_is_no_confidence_chart(tmp_path):
    bars = synthetic_bars(3000, seed=1, symbol="NQ")
    run = run_backtest(bars, target=np.ones(len(bars)))
    text = write_report(tmp_path / "r.html", {"hold": run}).read_text()
    assert text.count("Plotly.newPlot") == 3 and "no confidence vs hit-rate chart" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: `make setup-browser` (needs root)")
def test_report_renders_in_headless_chromium_without_errors(report_inputs, tmp_path):
    bars, runs = report_inputs
    out = write_report(tmp_path / "backtest.html", runs, bars=bars, confidence_threshold=0.7)
    dom, log = render(out, tmp_path)
    status = status_of(dom)
    assert status["errors"] == "0", dom[dom.find('id="report-status"'):][:2000]
    assert status["plots"] == "4"
    assert int(status["rendered-svgs"]) >= 4  # every plot drew its SVG layers
    assert dom.count('class="main-svg"') >= 4
    assert "Equity ($)" in dom and "Daily P&amp;L by session" in dom and "Confidence vs realized hit rate" in dom
    assert console_errors(log) == []


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: `make setup-browser` (needs root)")
def test_the_chromium_check_catches_a_broken_page(report_inputs, tmp_path):
    """The error collector must see a script error, or the test above would prove nothing."""
    bars, runs = report_inputs
    out = write_report(tmp_path / "broken.html", runs)
    out.write_text(out.read_text().replace("</body>", "<script>notAFunction();</script></body>"))
    dom, log = render(out, tmp_path)
    assert status_of(dom)["errors"] == "1"
    assert any("notAFunction" in m for m in console_errors(log))


def test_backtest_report_runs_from_the_config(tmp_path):
    from trademl.backtest.report import backtest_report
    from trademl.config import load_config

    bars = synthetic_bars(4000, seed=5, edge_ic=0.1, edge_horizon=5, symbol="MES")
    edge = bars["edge"].to_numpy()
    signals = {"action": np.where(edge > 0, "BUY", "SELL"), "confidence": np.abs(edge) / 3}
    cfg = load_config(overrides={"backtest": {"confidence_threshold": 0.3}, "account": {"max_position_size": 2},
                                 "costs": {"commission_per_side": 0.5}})
    runs, table, out = backtest_report(bars, signals, config=cfg, path=tmp_path / "bt.html")
    strategy = runs["ensemble"]
    assert strategy.model.max_position == 2 and strategy.model.commission_per_side == 0.5
    assert strategy.model.spec.root == "MES"
    assert np.abs(strategy.position).max() == 2
    assert list(table.index)[:4] == ["ensemble", "flat", "buy_and_hold", "random (seed 0)"]
    assert out.exists() and "Confidence vs realized hit rate" in out.read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: `make setup-browser` (needs root)")
def test_reliability_diagram_and_pbo_render_in_headless_chromium(report_inputs, tmp_path):
    """The walk-forward's report: the reliability diagram of wins after costs replaces the
    hit-rate chart, its title carries the ECE, and the PBO is stated under the table."""
    from trademl.backtest.metrics import confidence_calibration, trade_won

    bars, runs = report_inputs
    run = runs["ensemble"]
    won = trade_won(bars, run.segments, run.model, run.action, horizon=5)
    calibration = confidence_calibration(run.confidence, won)
    assert calibration["n"] > 1000
    out = write_report(tmp_path / "wf.html", runs, bars=bars, confidence_threshold=0.7, hit_rate_horizon=5,
                       calibration=calibration, pbo=0.25)
    text = out.read_text()
    assert text.count("Plotly.newPlot") == 4 and "Confidence vs realized hit rate" not in text
    assert "Probability of backtest overfitting" in text and "0.250: the share of train/test splits" in text
    dom, log = render(out, tmp_path)
    status = status_of(dom)
    assert status["errors"] == "0" and status["plots"] == "4" and int(status["rendered-svgs"]) >= 4
    assert f"ECE {calibration['ece']:.3f} over {calibration['n']:,} BUY/SELL bars" in dom
    assert console_errors(log) == []


def _cells_of(text: str, metric: str) -> list[str]:
    row = re.search(rf"<tr><td>{metric}</td>(.*?)</tr>", text)
    assert row, f"no {metric} row in the report's table"
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_equity_curve_runs_in_trading_time_on_the_bundled_es_bars(tmp_path):
    """16 sessions six years apart: the x values are bar positions (no jump across a gap), the
    real stamps are the hover text and tick labels, and CAGR is '-' (too few sessions)."""
    from trademl.backtest.report import equity_figure
    from trademl.data.bars import bundled_sample_path, load_bars

    bars = load_bars(bundled_sample_path())
    runs = {"long": run_backtest(bars, target=np.ones(len(bars)), name="long")}
    fig = equity_figure(runs)
    equity, drawdown = fig.data[0], fig.data[1]
    x = np.asarray(equity.x)
    step = int(np.ceil(len(bars) / 4000))
    assert np.array_equal(x, np.asarray(drawdown.x))
    assert set(np.diff(x)) <= {step} | {len(bars) - 1 - x[-2]}  # even steps; the last bar always kept
    assert x[-1] == len(bars) - 1
    when = pd.DatetimeIndex(list(equity.text), tz="UTC")
    assert (np.diff(when) > np.timedelta64(7, "D")).any()  # ... though weeks pass between some of them
    assert list(when) == list(bars.index[x].floor("min"))
    axis = fig.layout.xaxis2
    assert axis.tickvals[0] == 0 and axis.tickvals[-1] == len(bars) - 1
    assert axis.ticktext[0].startswith(f"{bars.index[0]:%Y-%m-%d}") and axis.ticktext[-1].startswith(
        f"{bars.index[-1]:%Y-%m-%d}")
    text = write_report(tmp_path / "es.html", runs, bars=bars).read_text()
    assert _cells_of(text, "cagr") == ["-"] and _cells_of(text, "calmar") == ["-"]
    assert not re.search(r"<td>[^<]*nan[^<]*</td>", text, re.IGNORECASE)  # no figure prints as "nan"


def test_account_chart_runs_in_trading_time(report_inputs):
    from trademl.backtest.report import account_figure

    bars, _ = report_inputs
    verdict = run_backtest(bars, target=np.ones(len(bars)), account="topstep-50k").account
    fig = account_figure(verdict)
    x = np.asarray(fig.data[0].x)
    assert x[-1] == len(verdict.index) - 1 and len(set(np.diff(x))) <= 2  # even steps, the last bar kept
    assert fig.layout.xaxis.ticktext[-1].startswith(f"{verdict.index[-1]:%Y-%m-%d}")
    marks = [t for t in fig.data if t.mode == "markers"]
    for mark in marks:  # a breach or pass marker sits on its bar's position, its stamp as the hover text
        assert mark.text[0] == f"{verdict.index[mark.x[0]]:%Y-%m-%d %H:%M}"
