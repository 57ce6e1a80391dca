"""The backtest report: one self-contained HTML file that opens offline.

The page is ``trademl.html_page``'s: plotly.js inlined once (no CDN) and a tiny error
collector, installed before any other script, that records uncaught errors and
console.error calls and, once the page has loaded, writes them and the number of rendered
plots into ``<pre id="report-status">``: a headless browser test reads that back.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from trademl.backtest.baselines import comparison_table
from trademl.backtest.engine import BacktestResult
from trademl.backtest.metrics import MIN_SESSIONS_TO_ANNUALISE, daily_pnl, drawdowns, hit_rate_by_confidence
from trademl.config import resolve_config
from trademl.errors import TradeMLError
from trademl.html_page import figures_html, metrics_table, write_page

MAX_POINTS_PER_LINE = 4000  # a 1M-bar equity curve is decimated to this many points (last of each step)


def _decimate(index: pd.DatetimeIndex, *arrays: np.ndarray):
    """The kept bars' positions, stamps and values (the last bar of each step, and the last one)."""
    step = max(1, math.ceil(len(index) / MAX_POINTS_PER_LINE))
    keep = np.r_[np.arange(step - 1, len(index), step), len(index) - 1] if len(index) else np.zeros(0, int)
    keep = np.unique(keep)
    return (keep, index[keep], *(a[keep] for a in arrays))


# Time-series charts run in trading time: x is the bar's position, the real stamp is its tick
# label and hover text. Against clock time every gap between sessions (weeks, in the bundled ES
# file) is a long flat line. Plotly's rangebreaks cannot close them: they take a weekly or daily
# pattern, or a list of breaks all of one duration (dvalue), and real gaps (a holiday, a missing
# week, a data outage) are irregular.
TIME_TICKS = 8  # stamps written under a trading-time axis


def _stamp_texts(stamps: pd.DatetimeIndex) -> list[str]:
    return [f"{s:%Y-%m-%d %H:%M}" for s in stamps]


def trading_time_axis(stamps: pd.DatetimeIndex) -> dict:
    """Layout of an x axis whose values are positions in ``stamps``: evenly spaced ticks labelled by their times."""
    ticks = np.unique(np.linspace(0, len(stamps) - 1, TIME_TICKS).round().astype(int)) if len(stamps) else []
    return dict(tickmode="array", tickvals=[int(t) for t in ticks],
                ticktext=[f"{stamps[t]:%Y-%m-%d}<br>{stamps[t]:%H:%M}" for t in ticks])


def _all_stamps(runs: dict[str, BacktestResult]) -> pd.DatetimeIndex:
    """Every bar of the runs in time order: one trading-time axis for all (they usually share their bars)."""
    stamps = None
    for run in runs.values():
        stamps = run.index if stamps is None or run.index.equals(stamps) else stamps.union(run.index)
    return stamps.unique()


def equity_figure(runs: dict[str, BacktestResult]):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05,
                        subplot_titles=("Equity ($)", "Drawdown (% below peak)"))
    from plotly.colors import qualitative

    palette = qualitative.Plotly
    stamps = _all_stamps(runs)
    for i, (name, run) in enumerate(runs.items()):
        dd_usd, dd_pct = drawdowns(run.equity, run.initial_balance)
        _, when, equity, dd = _decimate(run.index, run.equity, dd_pct)
        x, text = stamps.get_indexer(when), _stamp_texts(when)
        line = dict(color=palette[i % len(palette)], width=2.5 if i == 0 else 1.2)
        fig.add_trace(go.Scatter(x=x, y=equity, name=name, legendgroup=name, mode="lines", line=line, text=text,
                                 hovertemplate="%{text}: $%{y:,.0f}"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=-100 * dd, name=name, legendgroup=name, mode="lines", line=line,
                                 showlegend=False, text=text, hovertemplate="%{text}: %{y:.2f}%"), row=2, col=1)
    fig.update_xaxes(**trading_time_axis(stamps))
    fig.update_xaxes(title_text="trading time (gaps between sessions closed)", row=2, col=1)
    fig.update_layout(height=600, margin=dict(t=40, b=30))
    return fig


def account_figure(verdict):
    """Live equity against the trailing threshold and the daily floor (trademl.risk), with the
    breach or the pass marked: how close the account came to each limit."""
    import plotly.graph_objects as go

    x, when, equity, threshold, floor = _decimate(verdict.index, verdict.equity, verdict.threshold,
                                                  verdict.day_floor)
    text = _stamp_texts(when)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=equity, name="live equity", mode="lines", line=dict(color="#4472c4", width=2),
                             text=text, hovertemplate="%{text}: $%{y:,.0f}"))
    fig.add_trace(go.Scatter(x=x, y=threshold, name="trailing threshold", mode="lines",
                             line=dict(color="#c00000", dash="dash"), text=text, hovertemplate="%{text}: $%{y:,.0f}"))
    if np.isfinite(floor).any():
        fig.add_trace(go.Scatter(x=x, y=floor, name="daily loss floor", mode="lines",
                                 line=dict(color="#ed7d31", dash="dot"), text=text,
                                 hovertemplate="%{text}: $%{y:,.0f}"))
    target = verdict.rules.starting_balance + verdict.rules.profit_target
    fig.add_hline(y=target, line=dict(color="#70ad47", dash="dash"), annotation_text="profit target")
    for bar, label, color in ((verdict.breach_bar if verdict.breached else None, f"breach: {verdict.breached}", "#c00000"),
                              (verdict.pass_bar if verdict.passed else None, "passed", "#70ad47")):
        if bar is not None:
            fig.add_trace(go.Scatter(x=[int(bar)], y=[verdict.equity[bar]], name=label, mode="markers",
                                     marker=dict(color=color, size=12, symbol="x"),
                                     text=_stamp_texts(verdict.index[[bar]]), hovertemplate="%{text}: $%{y:,.0f}"))
    fig.update_xaxes(**trading_time_axis(verdict.index), title_text="trading time (gaps between sessions closed)")
    fig.update_layout(height=420, margin=dict(t=30, b=30), yaxis_title="$",
                      title=f"{verdict.rules.name}: " + ("passed" if verdict.passed else
                                                         f"failed ({verdict.breached})" if verdict.breached else
                                                         "not passed yet"))
    return fig


def trade_pnl_figure(run: BacktestResult):
    import plotly.graph_objects as go

    pnl = run.trades["pnl"]
    fig = go.Figure(go.Histogram(x=pnl, nbinsx=60, marker_color="#4472c4"))
    fig.update_layout(title=f"Trade P&L, net of costs ($) - {run.name}: {len(pnl)} round trips",
                      xaxis_title="P&L per round trip ($)", yaxis_title="trades", height=380, margin=dict(t=50, b=40))
    return fig


def daily_heatmap_figure(run: BacktestResult):
    """Calendar: one column per week, one row per weekday, colour = session P&L."""
    import plotly.graph_objects as go

    day = daily_pnl(run.pnl, run.index)
    dates = pd.DatetimeIndex(day.index)
    week = (dates - pd.to_timedelta(dates.day_of_week, unit="D")).strftime("%Y-%m-%d")
    weekday = dates.day_name().str[:3]
    grid = pd.DataFrame({"week": week, "weekday": weekday, "pnl": day.to_numpy()}).pivot_table(
        index="weekday", columns="week", values="pnl", aggfunc="sum")
    rows = [d for d in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun") if d in grid.index]
    grid = grid.reindex(rows)
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.size else 1.0
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=rows, colorscale="RdBu", zmid=0,
                               zmin=-limit, zmax=limit, colorbar=dict(title="$"),
                               hovertemplate="week of %{x}, %{y}: $%{z:,.0f}<extra></extra>"))
    fig.update_layout(title=f"Daily P&L by session ({run.name})", xaxis_title="week starting",
                      yaxis=dict(autorange="reversed"), height=320, margin=dict(t=50, b=40))
    return fig


def hit_rate_figure(calibration: pd.DataFrame, name: str, threshold: float | None):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=calibration["confidence"], y=calibration["hit_rate"], mode="lines+markers",
                               name="realized", text=[f"{c} signals" for c in calibration["count"]]))
    lo = float(min(calibration["confidence"].min(), 0.5))
    hi = float(max(calibration["confidence"].max(), 0.5))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="confidence = hit rate",
                             line=dict(dash="dot", color="#999")))
    fig.add_hline(y=0.5, line_dash="dash", line_color="#ccc")
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#c00", annotation_text="threshold")
    fig.update_layout(title=f"Confidence vs realized hit rate ({name})", xaxis_title="confidence (bucket mean)",
                      yaxis_title="hit rate", height=380, margin=dict(t=50, b=40))
    return fig


def reliability_figure(calibration: dict, name: str, threshold: float | None, horizon: int):
    """Reliability diagram: each bin's mean confidence against how often the recommended trade
    won after costs; on the diagonal a confidence is a probability of a win."""
    import plotly.graph_objects as go

    conf, hit, count = (np.array(col, dtype=np.float64) for col in zip(*calibration["bins"]))
    # the stacker's calibration judges both sides' probability at every bar, the vote's its BUY/SELL bars
    units = "probabilities (long and short, every bar)" if calibration.get("of", "").startswith("stacker") \
        else "BUY/SELL bars"
    fig = go.Figure(go.Scatter(x=conf, y=hit, mode="lines+markers", name="won after costs",
                               marker=dict(size=6 + 14 * np.sqrt(count / count.max())),
                               text=[f"{c:,.0f} {units}" for c in count]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(dash="dot", color="#999")))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#c00", annotation_text="threshold")
    fig.update_layout(title=f"Reliability of the {name}'s confidence: ECE {calibration['ece']:.3f} over "
                            f"{calibration['n']:,} {units} (a win: net P&L > 0 after {horizon} bars)",
                      xaxis=dict(title="confidence (bin mean)", range=[0, 1]),
                      yaxis=dict(title="share of trades that won after costs", range=[0, 1]),
                      height=420, margin=dict(t=50, b=40))
    return fig


def sizes_figure(sizes: np.ndarray, name: str):
    """How many contracts the bet size suggested on the BUY/SELL bars (``trademl.models.stacker.bet_size``)."""
    import plotly.graph_objects as go

    values, counts = np.unique(sizes.astype(np.int64), return_counts=True)
    fig = go.Figure(go.Bar(x=values, y=counts, name="BUY/SELL bars"))
    fig.update_layout(title=f"Suggested contracts on the {name}'s {len(sizes):,} BUY/SELL bars (Lopez de Prado's "
                            "bet size of the win probability)", xaxis=dict(title="contracts", dtick=1),
                      yaxis_title="bars", height=340, margin=dict(t=50, b=40))
    return fig


_PERCENT = {"total_return", "cagr", "max_drawdown_pct", "win_rate", "exposure"}
_DOLLARS = {"total_pnl", "max_drawdown_usd", "avg_trade", "costs_paid"}
_COUNTS = {"trades", "turnover_contracts", "dsr_trials"}


def _format_value(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if metric in _PERCENT:
        return f"{100 * value:,.2f}%"
    if metric in _DOLLARS:
        return f"{'-' if value < 0 else ''}${abs(value):,.0f}"
    if metric in _COUNTS:
        return f"{value:,.0f}"
    return f"{value:,.3f}"


def table_html(table: pd.DataFrame) -> str:
    """Metrics as rows, runs as columns: a handful of runs stay readable side by side."""
    rows = [[html.escape(str(metric)), *(_format_value(metric, table.at[run, metric]) for run in table.index)]
            for metric in table.columns]
    return metrics_table(["metric", *table.index], rows)


def write_report(path, runs: dict[str, BacktestResult], *, bars: pd.DataFrame | None = None, main: str | None = None,
                 table: pd.DataFrame | None = None, title: str = "trademl backtest",
                 confidence_threshold: float | None = None, hit_rate_horizon: int | None = None,
                 calibration: dict | None = None, pbo: float | None = None, sizes=None) -> Path:
    """Write the report for ``runs`` (the strategy and its baselines) to ``path``; returns the path.

    ``main`` names the run whose trades, days and signals are detailed (default: the first).
    The confidence chart needs ``bars`` (to measure realized moves) and a run made from signals;
    its ``hit_rate_horizon`` defaults to [backtest] hit_rate_horizon. ``calibration`` (the
    walk-forward's ``ensemble_calibration``) replaces it by the reliability diagram of wins
    after costs; ``pbo``: the probability of backtest overfitting, stated under the table;
    ``sizes``: the suggested contracts of the stacked ensemble's BUY/SELL bars (their histogram).
    """
    if not runs:
        raise TradeMLError("nothing to report: no backtest runs given", where="write_report")
    main = main or next(iter(runs))
    if main not in runs:
        raise TradeMLError(f"no run named {main!r}; runs: {', '.join(runs)}", where="write_report.main")
    run = runs[main]
    table = comparison_table(runs) if table is None else table
    figures = [("Equity and drawdown", equity_figure(runs)), ("Trade P&L", trade_pnl_figure(run)),
               ("Daily P&L", daily_heatmap_figure(run))]
    if run.account is not None:
        figures.insert(1, ("Account rules: equity against the limits", account_figure(run.account)))
    notes = []
    if hit_rate_horizon is None:
        hit_rate_horizon = resolve_config().backtest.hit_rate_horizon
    if calibration is not None:
        if calibration["bins"]:
            figures.append(("Reliability of the confidence",
                            reliability_figure(calibration, main, confidence_threshold, hit_rate_horizon)))
        else:
            notes.append("No BUY/SELL signal with a complete outcome window: no reliability diagram.")
    elif bars is not None and run.action is not None:
        hits = hit_rate_by_confidence(bars["open"].to_numpy(), bars["close"].to_numpy(), run.action,
                                      run.confidence, run.segments, horizon=hit_rate_horizon)
        if len(hits):
            figures.append(("Confidence", hit_rate_figure(hits, main, confidence_threshold)))
        else:
            notes.append("No BUY/SELL signal with a complete outcome window: no confidence chart.")
    else:
        notes.append("No per-bar signals with confidence (target-position run, or bars not given): "
                     "no confidence vs hit-rate chart.")

    if sizes is not None and len(sizes):
        figures.append(("Suggested sizes", sizes_figure(np.asarray(sizes), main)))

    span = f"{run.index[0]} .. {run.index[-1]}" if len(run.index) else "no bars"
    spec = run.model.spec
    summary = (f"{len(run.index):,} bars, {span}; contract {spec.root} (point value ${spec.point_value:g}); "
               f"commission ${run.model.commission_per_side:g}/side, slippage {run.model.slippage_ticks:g} tick(s); "
               f"max position {run.model.max_position}; fills at the next bar's open.")
    body = f"""<p class="note">{html.escape(summary)}</p>
<h2>Strategy vs baselines</h2>
{table_html(table)}
<p class="note">Sharpe and Sortino are annualised from daily (session) P&amp;L, 252 sessions a year; CAGR and
Calmar only over {MIN_SESSIONS_TO_ANNUALISE} sessions or more ("-" below that: a few weeks compounded to a year say
nothing). PSR is the
probability that the true Sharpe is above zero; DSR deflates it for the {int(table["dsr_trials"].max())} runs compared
(a DSR above 0.95 is a significant edge); a candidate that never traded counts as a trial with Sharpe 0.</p>
{_pbo_note(pbo)}
{"".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)}
{figures_html(figures)}"""
    return write_page(path, title, body)


def _pbo_note(pbo: float | None) -> str:
    if pbo is None:
        return ""
    said = ("-: too few candidates or sessions" if not math.isfinite(pbo) else
            f"{pbo:.3f}: the share of train/test splits of the sessions where the candidate best in sample "
            "ranked below the median out of sample (0.5: the choice is luck; near 0: the best stays best)")
    return (f'<p class="note">Probability of backtest overfitting (PBO, combinatorially symmetric cross-validation '
            f"over the candidates' daily returns) {html.escape(said)}.</p>")


def backtest_report(bars: pd.DataFrame, signals, *, config=None, model_signals: dict | None = None,
                    path=None, title: str = "trademl backtest", name: str = "ensemble"):
    """Signals -> backtest -> baselines -> comparison table -> HTML report, all from the config.

    The entry point a walk-forward (or a user with their own signals) calls: per-bar
    ``signals`` (action BUY/SELL/HOLD or +1/-1/0, and confidence), optional per-model
    signals for the "each model alone" rows. Returns (runs, table, report path).
    """
    from trademl.backtest.baselines import run_baselines
    from trademl.backtest.engine import run_backtest
    from trademl.market.contracts import spec_of_bars

    cfg = resolve_config(config)
    bt = cfg.backtest
    symbol = bars.attrs.get("symbol") or cfg.data.symbol
    strategy = run_backtest(bars, signals, spec=spec_of_bars(bars, symbol, cfg), name=name, config=cfg)
    runs = run_baselines(bars, strategy, model_signals=model_signals, confidence_threshold=bt.confidence_threshold,
                         seed=bt.random_baseline_seed)
    table = comparison_table(runs)
    out = Path(path) if path is not None else Path(cfg.paths.report_dir) / "backtest.html"
    write_report(out, runs, bars=bars, table=table, title=title, confidence_threshold=bt.confidence_threshold,
                 hit_rate_horizon=bt.hit_rate_horizon)
    return runs, table, out


def synthetic_demo(path, *, n_bars: int = 60_000, edge_ic: float = 0.1, seed: int = 0):
    """A report on a synthetic market with a planted edge: a strategy trading the edge, a model
    trading noise, and the baselines. Shows what the report looks like without any training."""
    from statistics import NormalDist

    from trademl.data.synthetic import synthetic_bars

    bars = synthetic_bars(n_bars, seed=seed, edge_ic=edge_ic, edge_horizon=5, symbol="ES")
    edge = bars["edge"].to_numpy()
    confidence = 2 * np.vectorize(NormalDist().cdf)(np.abs(edge)) - 1
    noise = np.random.default_rng(seed).permutation(edge)
    signals = {"action": np.sign(edge), "confidence": confidence}
    model_signals = {"noise model": {"action": np.sign(noise), "confidence": confidence}}
    return backtest_report(bars, signals, model_signals=model_signals, path=path,
                           title=f"trademl backtest on a synthetic market (edge IC {edge_ic})", name="edge strategy")


if __name__ == "__main__":
    import sys

    _runs, _table, _out = synthetic_demo(sys.argv[1] if len(sys.argv) > 1 else "artifacts/reports/backtest_synthetic.html")
    print(_table.to_string(float_format=lambda v: f"{v:,.3f}"))
    print(f"report: {_out}")
