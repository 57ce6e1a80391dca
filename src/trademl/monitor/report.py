"""``run_monitor``: the prediction log + the bars that came since -> how the models are doing.

Per model (LightGBM by its win probability, LSTM and PPO by their argmax, and the ensemble
by its recommendation): hit rate, P&L of following it through the execution model and
calibration at 5 and 30 bars; feature drift against each model's training distribution;
latency percentiles and errors by kind. Printed as rich tables and written as one
self-contained HTML page in the backtest report's style (same error collector, so the
headless-browser check applies). Alerts from ``trademl.monitor.alerts``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trademl.data.reference import feature_reference
from trademl.errors import TradeMLError
from trademl.html_page import figures_html, metrics_table, write_page
from trademl.monitor.alerts import calibration_alerts, drift_alerts
from trademl.monitor.drift import drift_table
from trademl.predict.log import PredictionLog
from trademl.monitor.outcomes import NATIVE_HORIZON, join_outcomes, model_calls, score_models, trade_outcomes

LATENCY_PERCENTILES = (50, 90, 99)


@dataclass
class MonitorResult:
    log_path: Path
    predictions: pd.DataFrame  # the successful rows, with their outcomes joined
    errors: pd.DataFrame  # kind, count, last message
    scores: pd.DataFrame  # per (model, horizon)
    calibration: dict  # (model, horizon) -> bins (confidence, hit_rate, count)
    scored_calls: pd.DataFrame  # one row per (prediction, model) with realized P&L per horizon
    drift: dict  # (kind, version) -> drift table
    latency: dict  # p50/p90/p99/max in ms
    horizons: tuple
    alerts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_path: Path | None = None
    novelty: dict = field(default_factory=dict)  # scored / novel / share of the predictions with a novelty score

    @property
    def exit_code(self) -> int:
        from trademl.monitor.alerts import EXIT_ALERT

        return EXIT_ALERT if self.alerts else 0


def run_monitor(log=None, bars=None, *, since=None, symbol: str | None = None, config=None, model_root=None,
                reference_bars=None, html_path=None) -> MonitorResult:
    """Read the log (path; default ``<paths.log_dir>/predictions.sqlite``) and ``bars`` (a
    bars file or frame; without it outcomes stay unjudged) and score everything.

    ``reference_bars``: bars of the training period, for models whose manifest carries no
    ``feature_reference``. ``html_path``: where to write the report (None: no report).
    """
    from trademl.config import resolve_config
    from trademl.data.bars import bar_length_minutes
    from trademl.data.labels import horizon_bars

    cfg = resolve_config(config)
    log_path = Path(log) if log is not None else Path(cfg.paths.log_dir) / "predictions.sqlite"
    if not log_path.exists():
        raise TradeMLError("no prediction log here", where=str(log_path),
                           hint="the predictor writes it (trademl predict / serve); pass --log")
    frame = PredictionLog(log_path).query(since=since, symbol=symbol)
    notes: list[str] = []
    skipped = frame.attrs.get("skipped_rows") or []
    if skipped:
        shown = "; ".join(f"row {row}: {why}" for row, why in skipped[:5])
        notes.append(f"{len(skipped)} unreadable log rows left out ({shown}{' ...' if len(skipped) > 5 else ''})")
    bars = _bars(bars, symbol or _main_symbol(frame), cfg)
    frame = _same_market(frame, bars, symbol, notes)
    failed = frame["error_kind"].notna()
    ok, errs = frame[~failed].copy(), frame[failed]
    horizons = tuple(horizon_bars(cfg.data.horizons, bar_length_minutes(bars) if bars is not None else None))

    execution = _execution(bars, ok, symbol, cfg)
    if bars is not None:
        outcomes = join_outcomes(ok, bars, execution, horizons=horizons, max_gap_minutes=cfg.data.max_gap_minutes)
    else:
        outcomes = join_outcomes(ok, _no_bars(), execution, horizons=horizons)
        notes.append("no bars given (--bars): outcomes, hit rates and P&L are not judged")
    ok = ok.drop(columns=["decision_bar"]).join(outcomes)  # the resolved decision bar (= the logged one, if any)
    scored = trade_outcomes(model_calls(ok), outcomes, horizons)
    scores, tables = score_models(scored, horizons, bins=cfg.monitor.calibration_bins)
    drift = _drift(ok, bars, reference_bars, model_root or cfg.paths.model_root, cfg, notes)

    result = MonitorResult(log_path, ok, _errors_by_kind(errs), scores, tables, scored, drift, _latency(frame),
                           horizons, notes=notes, novelty=_novelty(ok))
    mc = cfg.monitor
    result.alerts = drift_alerts(drift, mc.psi_threshold) + calibration_alerts(
        scores, mc.calibration_threshold, mc.min_calibration_samples, mc.calibration_models)
    if html_path is not None:
        result.report_path = write_html(result, html_path, config=cfg)
    return result


# --- inputs ----------------------------------------------------------------------------------


def parse_since(text: str | None):
    """'2024-01-02T14:30:00Z', '2024-01-02' (UTC) or a look-back: '90m', '24h', '7d'."""
    if text is None:
        return None
    text = text.strip()
    unit = {"m": "min", "h": "h", "d": "D"}.get(text[-1:].lower())
    if unit and text[:-1].replace(".", "", 1).isdigit():
        try:
            return pd.Timestamp.now(tz="UTC") - pd.Timedelta(float(text[:-1]), unit=unit)
        except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
            raise TradeMLError(f"{text!r} reaches back past what a timestamp can hold (about 1677)",
                               where="--since", hint="use a shorter look-back or an ISO time") from None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        raise TradeMLError(f"{text!r} is neither an ISO time (1677..2262) nor a look-back like 24h or 7d",
                           where="--since") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _bars(bars, symbol, cfg):
    if bars is None or isinstance(bars, pd.DataFrame):
        return bars
    from trademl.data.bars import load_bars

    return load_bars(bars, symbol=symbol, max_gap_minutes=cfg.data.max_gap_minutes, tz=cfg.data.timezone)


def _main_symbol(frame: pd.DataFrame) -> str | None:
    """The symbol most predictions are for: the market a bars file without one is read as."""
    symbols = frame["symbol"].dropna()
    return str(symbols.mode().iloc[0]) if len(symbols) else None


def _no_bars() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close")},
                        index=pd.DatetimeIndex([], tz="UTC", name="timestamp"))


def _same_market(frame: pd.DataFrame, bars, symbol, notes: list[str]) -> pd.DataFrame:
    """Predictions for another market than the bars cannot be judged with them: left out, said."""
    if bars is None or symbol is not None or frame.empty:
        return frame
    from trademl.market.contracts import root_of

    market = bars.attrs.get("symbol")
    if not market:
        return frame
    roots = frame["symbol"].map(lambda s: root_of(s) if isinstance(s, str) else None)
    other = roots.notna() & (roots != root_of(market))
    if other.any():
        notes.append(f"{int(other.sum())} predictions for other markets than the bars ({root_of(market)}) "
                     f"left out: {', '.join(sorted(set(frame.loc[other, 'symbol'])))}")
    return frame[~other]


def _execution(bars, ok: pd.DataFrame, symbol, cfg):
    from trademl.market.contracts import contract_spec
    from trademl.market.execution import ExecutionModel

    market = symbol or (bars.attrs.get("symbol") if bars is not None else None)
    if not market and not ok.empty and ok["symbol"].notna().any():
        market = ok["symbol"].dropna().mode().iloc[0]
    market = market or cfg.data.symbol
    if not market and ok.empty:  # no prediction to price: any spec gives the same (empty) outcomes
        market = "ES"
    spec = contract_spec(market, config=cfg)
    return ExecutionModel.from_config(spec, cfg.costs, cfg.account.max_position_size)


def _novelty(ok: pd.DataFrame) -> dict:
    """How many answered predictions had inputs unlike the training ones (the response's ``novelty``)."""
    found = [o.get("novelty") for o in ok.get("output", pd.Series(dtype=object)) if isinstance(o, dict)]
    scored = [n for n in found if isinstance(n, dict) and "novel" in n]
    novel = sum(bool(n["novel"]) for n in scored)
    return {"scored": len(scored), "novel": novel, "share": novel / len(scored) if scored else None}


def _errors_by_kind(errs: pd.DataFrame) -> pd.DataFrame:
    columns = ["kind", "count", "last_seen", "last_message"]
    if errs.empty:
        return pd.DataFrame(columns=columns)
    grouped = errs.sort_values("logged_at").groupby("error_kind")
    table = pd.DataFrame({"count": grouped.size(), "last_seen": grouped["logged_at"].last(),
                          "last_message": grouped["error_message"].last()})
    return table.rename_axis("kind").reset_index().sort_values("count", ascending=False)[columns]


def _latency(frame: pd.DataFrame) -> dict:
    values = frame["latency_ms"].dropna().to_numpy(np.float64)
    if len(values) == 0:
        return {}
    out = {f"p{p}": float(np.percentile(values, p)) for p in LATENCY_PERCENTILES}
    out["max"] = float(values.max())
    out["n"] = int(len(values))
    return out


# --- drift -------------------------------------------------------------------------------------


def _drift(ok: pd.DataFrame, bars, reference_bars, model_root, cfg, notes: list[str]) -> dict:
    from trademl.models.store import ModelStore

    store = ModelStore(model_root)
    used = _versions_used(ok)
    if not used:
        return {}
    fallback = None
    recomputed = {}
    result = {}
    for kind, version in used:
        try:
            manifest = store.load(kind, version, verify=False).manifest
        except TradeMLError as e:
            notes.append(f"drift of {kind} {version} not checked: {e}")
            continue
        names = list((manifest.get("feature_schema") or {}).get("names") or [])
        reference = manifest.get("feature_reference")
        if reference is None and reference_bars is not None:
            if fallback is None:
                fallback = _features_of(_bars(reference_bars, None, cfg), names, cfg)
            reference = feature_reference(fallback.reindex(columns=names).to_numpy(np.float64), names)
        if reference is None:
            notes.append(f"drift of {kind} {version} not checked: its manifest has no feature_reference "
                         "(trainers: trademl.data.reference.feature_reference) and no --reference-bars given")
            continue
        rows = ok[[isinstance(v, dict) and v.get(kind) == version for v in ok["model_versions"]]]
        live = _live_features(rows, names, bars, cfg, recomputed)
        result[(kind, version)] = drift_table(reference, live, threshold=cfg.monitor.psi_threshold,
                                              min_samples=cfg.monitor.min_drift_samples)
    return result


def _versions_used(ok: pd.DataFrame) -> list[tuple[str, str]]:
    seen = []
    for versions in ok["model_versions"]:
        for kind, version in (versions or {}).items():
            if (kind, version) not in seen:
                seen.append((kind, version))
    return seen


def _features_of(bars, names: list[str], cfg) -> pd.DataFrame:
    """The features of every bar, computed with the training code (registry names + bar columns)."""
    from trademl.data.features import FEATURES, compute_features

    registry = [n for n in names if n in FEATURES]
    extras = [n for n in names if n not in FEATURES and n in bars.columns]
    return compute_features(bars, names=registry, extra_columns=extras, max_gap_minutes=cfg.data.max_gap_minutes)


def _live_features(rows: pd.DataFrame, names: list[str], bars, cfg, cache: dict) -> pd.DataFrame:
    """The features each prediction was made on: as logged, else recomputed at its decision bar."""
    logged = pd.DataFrame([f if isinstance(f, dict) else {} for f in rows["features"]], index=rows.index,
                          columns=names, dtype="float64")
    missing = rows["features"].map(lambda f: not isinstance(f, dict))
    if missing.any() and bars is not None:
        key = tuple(names)
        if key not in cache:
            cache[key] = _features_of(bars, names, cfg)
        at = pd.DatetimeIndex(rows.loc[missing, "decision_bar"])
        logged.loc[missing] = cache[key].reindex(at).reindex(columns=names).to_numpy(np.float64)
    return logged


# --- terminal ----------------------------------------------------------------------------------


def _fmt(value, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "usd":
        return f"{'-' if value < 0 else ''}${abs(value):,.0f}"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.3f}"


_SCORE_COLUMNS = (("model", "str"), ("horizon", "int"), ("predictions", "int"), ("calls", "int"), ("judged", "int"),
                  ("pending", "int"), ("hit_rate", "pct"), ("pnl", "usd"), ("pnl_per_call", "usd"),
                  ("mean_confidence", "num"), ("calibration_error", "num"))


def printable(value) -> "Text":
    """Logged text (a symbol, an error message) as plain terminal text: control characters
    escaped (a logged "\x1b[2J" must not clear the reader's screen), no rich markup read."""
    from rich.text import Text

    text = str(value)
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


def print_summary(result: MonitorResult, console) -> None:
    from rich.table import Table

    ok = result.predictions
    span = f"{ok['ts_utc'].min()} .. {ok['ts_utc'].max()}" if len(ok) else "no predictions"
    console.print(f"[bold]{len(ok):,} predictions[/] ({span}), {int(result.errors['count'].sum()) if len(result.errors) else 0} "
                  f"failed requests, from {result.log_path}")
    if result.scores.empty:
        console.print("[yellow]no prediction to score in this selection of the log[/]")
    table = Table(title="Realized performance (one contract per call, net of costs)")
    for name, _ in _SCORE_COLUMNS:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in result.scores.itertuples():
        native = NATIVE_HORIZON.get(row.model) == row.horizon
        cells = [str(getattr(row, n)) if k == "str" else _fmt(getattr(row, n), k) for n, k in _SCORE_COLUMNS]
        table.add_row(*cells, style=None if native else "dim")
    if not result.scores.empty:
        console.print(table)
    if result.novelty.get("scored"):
        nv = result.novelty
        console.print(f"novel inputs (unlike the training ones): {nv['novel']:,} of {nv['scored']:,} predictions "
                      f"({nv['share']:.1%})")
    if result.latency:
        lat = result.latency
        console.print("latency ms: " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items() if k != "n")
                      + f" over {lat['n']:,} requests")
    if len(result.errors):
        errors = Table(title="Errors by kind")
        for name in ("kind", "count", "last_seen", "last_message"):
            errors.add_column(name)
        for row in result.errors.itertuples():
            errors.add_row(printable(row.kind), f"{row.count:,}", str(row.last_seen), printable(row.last_message)[:80])
        console.print(errors)
    for (kind, version), drift in result.drift.items():
        worst = drift.sort_values("psi", ascending=False, na_position="last").head(8)
        t = Table(title=f"Feature drift, {kind} {version}: {int(drift['flagged'].sum())} of {len(drift)} flagged (worst 8)")
        for name in ("feature", "psi", "n_live", "live_missing"):
            t.add_column(name, justify="left" if name == "feature" else "right")
        for row in worst.itertuples():
            t.add_row(row.feature, _fmt(row.psi), _fmt(row.n_live, "int"), _fmt(row.live_missing, "pct"),
                      style="red" if row.flagged else None)
        console.print(t)
    for note in result.notes:
        console.print("[yellow]note:[/] ", printable(note), sep="")
    if result.report_path is not None:
        console.print(f"report: {result.report_path}")


# --- HTML --------------------------------------------------------------------------------------


def _calibration_figure(result: MonitorResult):
    import plotly.graph_objects as go

    fig = go.Figure()
    for (model, h), table in result.calibration.items():
        if NATIVE_HORIZON.get(model) != h or table.empty:
            continue
        fig.add_trace(go.Scatter(x=table["confidence"], y=table["hit_rate"], mode="lines+markers", name=f"{model} ({h} bars)",
                                 text=[f"{c} outcomes" for c in table["count"]]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="confidence = hit rate",
                             line=dict(dash="dot", color="#999")))
    fig.update_layout(title="Calibration: stated probability vs realized hit rate (each model at its own horizon)",
                      xaxis_title="stated probability (bin mean)", yaxis_title="realized hit rate",
                      height=420, margin=dict(t=50, b=40))
    return fig


def _pnl_figure(result: MonitorResult, horizon: int):
    import plotly.graph_objects as go

    scored = result.scored_calls
    stamps = result.predictions["ts_utc"]
    fig = go.Figure()
    for model in scored["model"].unique() if len(scored) else ():
        mine = scored[(scored["model"] == model) & scored["acts"].astype(bool)].copy()
        mine = mine[mine[f"pnl_{horizon}"].notna()]
        if mine.empty:
            continue
        mine["ts"] = stamps.reindex(mine["prediction"]).to_numpy()
        mine = mine.sort_values("ts")
        fig.add_trace(go.Scatter(x=mine["ts"], y=mine[f"pnl_{horizon}"].cumsum(), mode="lines", name=model))
    fig.update_layout(title=f"Cumulative P&L of following each model, {horizon}-bar trades, net of costs ($)",
                      xaxis_title="prediction time (UTC)", yaxis_title="$", height=420, margin=dict(t=50, b=40))
    return fig


def _drift_figure(result: MonitorResult, threshold: float):
    import plotly.graph_objects as go

    fig = go.Figure()
    for (kind, version), table in result.drift.items():
        fig.add_trace(go.Bar(x=table["feature"], y=table["psi"], name=f"{kind} {version[:15]}"))
    fig.add_hline(y=threshold, line_dash="dash", line_color="#c00", annotation_text=f"alert above {threshold:g}")
    fig.update_layout(title="Feature drift: PSI of live vs training distribution", yaxis_title="PSI", barmode="group",
                      height=420, margin=dict(t=50, b=120))
    return fig


def _latency_figure(result: MonitorResult):
    import plotly.graph_objects as go

    values = result.predictions["latency_ms"].dropna()
    fig = go.Figure(go.Histogram(x=values, nbinsx=60, marker_color="#4472c4"))
    fig.update_layout(title="Latency per prediction (ms)", xaxis_title="ms", yaxis_title="requests", height=320,
                      margin=dict(t=50, b=40))
    return fig


def _cell(value, kind: str) -> str:
    return html.escape(str(value) if kind == "str" else _fmt(value, kind))


def _table_html(frame: pd.DataFrame, formats: dict) -> str:
    """Columns formatted by ``formats`` (name -> pct/usd/int/num; others as text)."""
    rows = [[_cell(v, formats.get(c, "str")) for c, v in zip(frame.columns, row)]
            for row in frame.itertuples(index=False)]
    return metrics_table(frame.columns, rows)


def write_html(result: MonitorResult, path, *, config=None) -> Path:
    """The report, self-contained (plotly.js inlined once) and written atomically."""
    from trademl.config import resolve_config

    cfg = resolve_config(config)
    figures = [("Calibration", _calibration_figure(result))]
    figures += [(f"P&L at {h} bars", _pnl_figure(result, h)) for h in result.horizons]
    if result.drift:
        figures.append(("Feature drift", _drift_figure(result, cfg.monitor.psi_threshold)))
    if result.latency:
        figures.append(("Latency", _latency_figure(result)))
    ok = result.predictions
    span = f"{ok['ts_utc'].min()} .. {ok['ts_utc'].max()}" if len(ok) else "no predictions"
    formats = dict(_SCORE_COLUMNS)
    alerts = "".join(f'<p class="alert">{html.escape(a)}</p>' for a in result.alerts) or \
        '<p class="note">No alert: drift and calibration are within the thresholds.</p>'
    flagged = pd.concat([t.assign(model=f"{k} {v}") for (k, v), t in result.drift.items()]) if result.drift else None
    drift_html = ""
    if flagged is not None:
        flagged = flagged[flagged["flagged"]][["model", "feature", "psi", "n_live", "train_missing", "live_missing"]]
        drift_html = ("<h2>Drifted features</h2>" + (_table_html(flagged, {"psi": "num", "n_live": "int",
                      "train_missing": "pct", "live_missing": "pct"}) if len(flagged) else
                      '<p class="note">No feature above the PSI threshold.</p>'))
    errors_html = _table_html(result.errors, {"count": "int"}) if len(result.errors) else '<p class="note">No failed request.</p>'
    latency = ", ".join(f"{k} {v:.2f} ms" for k, v in result.latency.items() if k != "n") if result.latency else "-"
    body = f"""<p class="note">{len(ok):,} predictions, {html.escape(span)}; log {html.escape(str(result.log_path))}.
Each call is one contract entered at the open of the first bar after the prediction and exited h bars later,
through the execution model (slippage and commission); LightGBM calls when its win probability is above 0.5.</p>
{alerts}
<h2>Realized performance</h2>
{_table_html(result.scores, formats)}
<p class="note">Latency: {html.escape(latency)}.</p>
{"".join(f'<p class="note">{html.escape(n)}</p>' for n in result.notes)}
{drift_html}
<h2>Errors by kind</h2>
{errors_html}
{figures_html(figures)}"""
    return write_page(path, "trademl monitor", body, head="\n<style>.alert { color: #b00; font-weight: 600; }</style>")
