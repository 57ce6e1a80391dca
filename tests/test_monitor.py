"""trademl monitor: outcome join with known answers and no look-ahead, per-model scores, drift,
calibration alerts, the CLI's exit code, and the HTML report in headless Chromium."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.config import load_config
from trademl.data.features import compute_features
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel
from trademl.models.store import ModelStore
from trademl.monitor.alerts import EXIT_ALERT, calibration_alerts
from trademl.data.reference import feature_reference
from trademl.monitor.drift import drift_table, psi
from trademl.predict.log import PredictionLog
from trademl.monitor.outcomes import join_outcomes, model_calls, score_models, trade_outcomes
from trademl.monitor.report import parse_since, run_monitor

CHROMIUM = Path("/usr/bin/chromium")
# Features whose distribution does not depend on the price level or the session's volatility
# regime much: an undisturbed later span of the same market should not drift on them.
STEADY = ["rsi", "ret_1", "ret_5", "clv", "body_ratio", "bb_pctb_20", "sma_dist_20", "tod_sin"]

# --- the join ----------------------------------------------------------------------------------

EXECUTION = ExecutionModel(contract_spec("NQ"), commission_per_side=2.0, slippage_ticks=1.0, max_position=5)
RT = 2 * (2.0 + 1.0 * 5.0)  # round trip: commission + one tick ($5 on NQ) per side, twice
PV = 20.0


def _hand_bars() -> pd.DataFrame:
    """Two sessions of 20 one-minute bars (14:00-14:19 and 15:00-15:19, a 41-minute gap), opens
    on a parabola so that every window has its own P&L."""
    stamps = pd.date_range("2024-01-02 14:00", periods=20, freq="1min", tz="UTC").append(
        pd.date_range("2024-01-02 15:00", periods=20, freq="1min", tz="UTC"))
    o = 18000.0 + 0.25 * np.arange(40.0) ** 2
    bars = pd.DataFrame({"open": o, "high": o + 3.0, "low": o - 3.0, "close": o + 1.0, "volume": 10.0},
                        index=pd.DatetimeIndex(stamps, name="timestamp"))
    bars.attrs["symbol"] = "NQ"
    return bars


def _predictions(stamps, decision_bars=None) -> pd.DataFrame:
    ts = pd.to_datetime(stamps, utc=True)
    bars = pd.to_datetime(decision_bars or [None] * len(stamps), utc=True)
    return pd.DataFrame({"ts_utc": ts, "decision_bar": bars}, index=np.arange(100, 100 + len(stamps)))


def _long(bars, entry: int, h: int) -> float:
    return (bars["open"].iloc[entry + h] - bars["open"].iloc[entry]) * PV - RT


def test_outcome_join_known_answers():
    bars = _hand_bars()
    preds = _predictions(
        ["2024-01-02T14:05:00Z",  # exactly at the close of the 14:04 bar: enters at the 14:05 open
         "2024-01-02T14:05:30Z",  # mid-bar: the 14:05 bar opened before it, enters at 14:06
         "2024-01-02T14:05:00Z",  # computed from bars whose last one is the 14:05 bar: a decision at its close
         "2024-01-02T13:59:00Z",  # before any bar
         "2024-01-02T14:16:00Z",  # 2 bars fit before the gap, 5 do not
         "2024-01-02T14:40:00Z",  # inside the gap: its trade would straddle it
         "2024-01-02T15:30:00Z",  # after the last bar: pending
         "2024-01-02T14:07:30Z"],  # bars up to 14:05 sent with a later timestamp: waits for 14:08
        [None, None, "2024-01-02T14:05:00Z", None, None, None, None, "2024-01-02T14:05:00Z"])
    out = join_outcomes(preds, bars, EXECUTION, horizons=(2, 5))
    assert list(out.index) == list(preds.index)
    stamp = lambda hhmm: pd.Timestamp(f"2024-01-02 {hhmm}", tz="UTC")  # noqa: E731
    assert list(out["decision_bar"].iloc[:3]) == [stamp("14:04"), stamp("14:04"), stamp("14:05")]
    assert list(out["entry_bar"].iloc[:3]) == [stamp("14:05"), stamp("14:06"), stamp("14:06")]
    for h in (2, 5):
        assert out[f"pnl_long_{h}"].iloc[0] == pytest.approx(_long(bars, 5, h))
        assert out[f"pnl_long_{h}"].iloc[1] == pytest.approx(_long(bars, 6, h))
        assert out[f"pnl_long_{h}"].iloc[2] == pytest.approx(_long(bars, 6, h))
        gross = _long(bars, 5, h) + RT
        assert out[f"pnl_short_{h}"].iloc[0] == pytest.approx(-gross - RT)
    assert np.isnan(out["pnl_long_2"].iloc[3]) and pd.isna(out["decision_bar"].iloc[3])
    assert out["pnl_long_2"].iloc[4] == pytest.approx(_long(bars, 16, 2))
    assert np.isnan(out["pnl_long_5"].iloc[4])  # would exit after the gap
    assert np.isnan(out["pnl_long_2"].iloc[5]) and np.isnan(out["pnl_long_5"].iloc[5])
    assert out[["pnl_long_2", "pnl_long_5"]].iloc[6].isna().all()
    assert out["decision_bar"].iloc[7] == stamp("14:05") and out["entry_bar"].iloc[7] == stamp("14:08")
    assert out["pnl_long_5"].iloc[7] == pytest.approx(_long(bars, 8, 5))


@pytest.mark.parametrize("when, entry", [("2024-01-02T14:05:00Z", 5), ("2024-01-02T14:05:30Z", 6)])
def test_no_bar_before_the_prediction_or_past_the_horizon_moves_the_outcome(when, entry):
    bars, h = _hand_bars(), 5
    preds = _predictions([when])
    base = join_outcomes(preds, bars, EXECUTION, horizons=(h,))["pnl_long_5"].iloc[0]
    rng = np.random.default_rng(0)
    changed = bars.copy()
    before = changed.index < pd.Timestamp(when)
    after = np.arange(len(bars)) > entry + h
    cols = ["open", "high", "low", "close"]
    changed.loc[before | after, cols] = changed.loc[before | after, cols] * rng.uniform(0.9, 1.1, (int((before | after).sum()), 1))
    changed.iloc[entry:entry + h + 1, changed.columns.get_indexer(["high", "low", "close"])] += 7.0  # not the fills
    assert join_outcomes(preds, changed, EXECUTION, horizons=(h,))["pnl_long_5"].iloc[0] == pytest.approx(base)
    moved = bars.copy()
    moved.iloc[entry + h, moved.columns.get_loc("open")] += 10.0  # the exit fill does count
    assert join_outcomes(preds, moved, EXECUTION, horizons=(h,))["pnl_long_5"].iloc[0] == pytest.approx(base + 10 * PV)


# --- what each model said, and its score ----------------------------------------------------------


def _output(rec="BUY", conf=0.8, win5=0.7, lstm=(0.6, 0.3, 0.1), ppo=(0.2, 0.5, 0.3)) -> dict:
    return {"ensemble_recommendation": rec, "confidence_score": conf, "win_5m_prob": win5, "win_30m_prob": 0.45,
            "lstm_buy_prob": lstm[0], "lstm_sell_prob": lstm[1], "lstm_hold_prob": lstm[2],
            "ppo_buy_prob": ppo[0], "ppo_sell_prob": ppo[1], "ppo_hold_prob": ppo[2]}


def test_model_calls_and_scores_from_known_outputs():
    preds = pd.DataFrame({"output": [_output(), _output("HOLD", 0.4, win5=0.3, lstm=(0.1, 0.2, 0.7)),
                                     _output("SELL", 0.6, win5=0.8), None],
                          "side": ["long", "long", "short", None]}, index=[7, 8, 9, 10])
    calls = model_calls(preds)
    by = calls.set_index(["prediction", "model"])
    assert by.loc[(7, "lgb_5m")].tolist() == [1, True, 0.7]
    assert by.loc[(8, "lgb_5m")].tolist() == [1, False, 0.3]  # below 0.5: no trade, still calibrated
    assert by.loc[(9, "lgb_5m")].tolist() == [-1, True, 0.8]  # the short side's win probability
    assert by.loc[(7, "lstm")].tolist() == [1, True, 0.6] and by.loc[(8, "lstm")].tolist() == [0, False, 0.7]
    assert by.loc[(7, "ppo")].tolist() == [-1, True, 0.5]
    assert by.loc[(8, "ensemble")].tolist() == [0, False, 0.4] and by.loc[(9, "ensemble")].tolist() == [-1, True, 0.6]
    assert 10 not in set(calls["prediction"])  # a failed request says nothing
    outcomes = pd.DataFrame({"pnl_long_5": [100.0, -50.0, 30.0, np.nan], "pnl_short_5": [-128.0, 22.0, -58.0, np.nan]},
                            index=[7, 8, 9, 10])
    scored = trade_outcomes(calls, outcomes, (5,))
    scores, tables = score_models(scored, (5,), bins=2)
    ens = scores.set_index("model").loc["ensemble"]
    assert (ens["calls"], ens["judged"]) == (2, 2)
    assert ens["hit_rate"] == 0.5 and ens["pnl"] == pytest.approx(100.0 - 58.0)
    lgb = scores.set_index("model").loc["lgb_5m"]
    assert lgb["calls"] == 2 and lgb["pnl"] == pytest.approx(100.0 - 58.0)
    assert lgb["calibrated_on"] == 3  # every prediction, taken or not
    assert tables[("lgb_5m", 5)]["count"].sum() == 3


def test_calibration_alert_needs_a_gap_and_enough_outcomes():
    rng = np.random.default_rng(1)
    n = 1000
    won = rng.random(n) < 0.5
    pnl = np.where(won, 50.0, -50.0)
    calls = pd.DataFrame({"prediction": np.arange(n), "model": "ensemble", "trade": 1, "acts": True,
                          "prob": rng.uniform(0.85, 0.95, n)})
    honest = calls.assign(prob=rng.uniform(0.45, 0.55, n))
    outcomes = pd.DataFrame({"pnl_long_5": pnl, "pnl_short_5": -pnl}, index=np.arange(n))
    over, _ = score_models(trade_outcomes(calls, outcomes, (5,)), (5,))
    fair, _ = score_models(trade_outcomes(honest, outcomes, (5,)), (5,))
    alerts = calibration_alerts(over, 0.1, 300, ["ensemble"])
    assert len(alerts) == 1 and alerts[0].startswith("calibration: ensemble at 5 bars")
    assert calibration_alerts(fair, 0.1, 300, ["ensemble"]) == []
    assert calibration_alerts(over, 0.1, 2000, ["ensemble"]) == []  # too few outcomes to alert on
    assert calibration_alerts(over, 0.1, 300, ["lgb_5m", "lgb_30m"]) == []  # the default: opt-in for the ensemble


# --- drift ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market():
    """One synthetic market: its features over 30,000 bars (first 20,000 = training span)."""
    bars = synthetic_bars(30_000, seed=21, symbol="NQ")
    return bars, compute_features(bars, names=STEADY)


def test_reference_bins_and_psi_basics():
    x = np.arange(1000.0)
    ref = feature_reference(np.c_[x, np.r_[np.full(999, 3.0), np.nan], np.r_[np.zeros(500), np.ones(500)]],
                            ["linear", "constant", "binary"], bins=10)
    lin = ref["features"]["linear"]
    assert len(lin["edges"]) == 9 and np.allclose(lin["proportions"], 0.1)
    assert ref["features"]["constant"]["missing"] == pytest.approx(0.001)
    assert ref["features"]["binary"]["proportions"] == [0.5, 0.5]
    assert psi(lin, x)[0] == pytest.approx(0.0, abs=1e-12)
    assert psi(lin, x + 500)[0] > 1.0
    assert json.loads(json.dumps(ref)) == ref  # manifest-ready
    with pytest.raises(TradeMLError, match="shape"):
        feature_reference(np.zeros((5, 2)), ["a"])


def test_planted_drift_is_flagged_and_an_undisturbed_stream_is_not(market):
    bars, feats = market
    reference = feature_reference(feats.iloc[:20_000].to_numpy(), STEADY)
    later = feats.iloc[25_000:30_000]
    steady = drift_table(reference, later, threshold=0.2, min_samples=200)
    assert not steady["flagged"].any(), steady
    assert steady["psi"].max() < 0.15  # volatility regimes move returns a little; well under 0.2
    shifted = later.copy()
    shifted["rsi"] = shifted["rsi"] + 15.0  # a shifted feature
    shifted["ret_5"] = shifted["ret_5"] * 3.0  # a scaled one
    table = drift_table(reference, shifted, threshold=0.2, min_samples=200).set_index("feature")
    assert set(table.index[table["flagged"]]) == {"rsi", "ret_5"}
    wild = compute_features(synthetic_bars(5_000, seed=22, symbol="NQ", daily_vol=0.04), names=STEADY)
    wild_table = drift_table(reference, wild, threshold=0.2, min_samples=200).set_index("feature")
    assert wild_table.loc["ret_1", "flagged"] and wild_table.loc["ret_5", "flagged"]  # a market 3x as volatile
    few = drift_table(reference, shifted.iloc[:50], threshold=0.2, min_samples=200)
    assert not few["flagged"].any()  # 50 values: reported, too few to alert on


# --- end to end: log + bars + store -> tables, HTML, exit code ------------------------------------


def _write_log(path, bars, feats, rows, *, scale=1.0, overconfident=False):
    """Predictions at the close of the given bars, the ensemble following the planted edge."""
    log = PredictionLog(path)
    close_time = bars.index + pd.Timedelta(minutes=1)
    rng = np.random.default_rng(5)
    for i in rows:
        edge = float(bars["edge"].iloc[i])
        direction = "BUY" if edge > 0 else "SELL"
        conf = 0.5 + 0.1 * min(abs(edge), 1.0)
        p = 0.5 + 0.05 * np.tanh(edge)
        if overconfident:  # a LightGBM model sure that every long wins
            p = 0.9 + 0.05 * rng.random()
        output = {"timestamp": close_time[i].isoformat(), "models_used": ["lgb_5m"], "win_5m_prob": p,
                  "ensemble_recommendation": direction, "confidence_score": conf,
                  "model_versions": {"lgb_5m": "v-test"}}
        features = {n: float(v) * scale for n, v in zip(STEADY, feats.iloc[i])}
        log.append({"timestamp": output["timestamp"], "symbol": "NQZ4", "request_digest": str(i), "output": output,
                    "model_versions": output["model_versions"], "latency_ms": 2.0 + (i % 7), "features": features,
                    "side": "long"})
    log.append_error("validation", "features.rsi: not a number", symbol="NQZ4")
    return path


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    base = tmp_path_factory.mktemp("monitor")
    bars = synthetic_bars(8_000, seed=4, edge_ic=0.3, symbol="NQ")
    feats = compute_features(bars, names=STEADY)
    root = base / "models"
    store = ModelStore(root)
    # The feature_reference a trainer stores; the version name the log refers to.
    with store.writer("lgb_5m", feature_schema={"names": STEADY},
                      feature_reference=feature_reference(feats.iloc[:5000].to_numpy(), STEADY)) as w:
        (w.path / "model.txt").write_text("not a real model: the monitor reads the manifest only")
    version = w.stored.version
    rows = range(5_100, 7_900, 2)
    logs = {}
    for name, kw in {"fine": {}, "drifted": {"scale": 3.0}, "overconfident": {"overconfident": True}}.items():
        path = _write_log(base / f"{name}.sqlite", bars, feats, rows, **kw)
        with __import__("sqlite3").connect(path) as db:  # the log names the stored version
            db.execute("UPDATE predictions SET model_versions_json = ?, output_json = replace(output_json, 'v-test', ?)",
                       (json.dumps({"lgb_5m": version}), version))
        logs[name] = path
    bars_path = base / "bars.parquet"
    bars.to_parquet(bars_path)
    cfg = load_config(None, {"paths": {"model_root": str(root), "report_dir": str(base / "reports")},
                             "data": {"symbol": "NQ"}})
    return base, bars, bars_path, logs, cfg, version


def test_run_monitor_scores_a_planted_edge_without_alert(monitored):
    base, bars, _, logs, cfg, version = monitored
    result = run_monitor(logs["fine"], bars, config=cfg, html_path=base / "fine.html")
    scores = result.scores.set_index(["model", "horizon"])
    ens = scores.loc[("ensemble", 5)]
    assert ens["predictions"] == 1400 and ens["judged"] >= 1390
    assert ens["hit_rate"] > 0.55 and ens["pnl"] > 0  # it follows a real edge
    assert result.errors.set_index("kind").loc["validation", "count"] == 1
    assert result.latency["p50"] == pytest.approx(5.0) and result.latency["max"] == 8.0
    assert list(result.drift) == [("lgb_5m", version)]
    assert not result.drift[("lgb_5m", version)]["flagged"].any()
    assert result.alerts == [] and result.exit_code == 0


def test_since_and_symbol_narrow_the_log(monitored):
    base, bars, _, logs, cfg, _ = monitored
    since = bars.index[7000]
    result = run_monitor(logs["fine"], bars, config=cfg, since=since)
    assert result.predictions["ts_utc"].min() >= since and len(result.predictions) == 450
    assert run_monitor(logs["fine"], bars, config=cfg, symbol="ESZ4").predictions.empty
    assert abs(parse_since("24h") - (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=24))) < pd.Timedelta(seconds=5)
    assert parse_since("2024-01-02") == pd.Timestamp("2024-01-02", tz="UTC")
    with pytest.raises(TradeMLError, match="look-back"):
        parse_since("last tuesday")


def _number(text: str) -> float:
    """A printed figure ("1,400", "57.0%", "-$32,128", "0.500", "-") as a number (NaN for "-")."""
    if text == "-":
        return float("nan")
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * float(text.lstrip("-").lstrip("$").rstrip("%").replace(",", ""))


def _assert_prints_the_library_result(invoked, expected, html_path) -> None:
    """`trademl monitor` printed what run_monitor computes from the same log, bars and config:
    the exit code, the counts, every score, the drift of each model, each alert, the report."""
    out = invoked.stderr
    assert invoked.exit_code == expected.exit_code
    ok = expected.predictions
    assert out.splitlines()[0] == (f"{len(ok):,} predictions ({ok['ts_utc'].min()} .. {ok['ts_utc'].max()}), "
                                   f"{int(expected.errors['count'].sum())} failed requests, from {expected.log_path}")
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in out.splitlines()
            if line.strip().startswith("│")]
    scores = [r for r in rows if len(r) == 11]
    assert [(r[0], int(r[1])) for r in scores] == list(zip(expected.scores["model"], expected.scores["horizon"]))
    precision = [1, 1, 1, 1, 0.0005, 0.5, 0.5, 0.0005, 0.0005]  # what each printed column rounds to
    for printed, row in zip(scores, expected.scores.itertuples()):
        want = [row.predictions, row.calls, row.judged, row.pending, row.hit_rate, row.pnl, row.pnl_per_call,
                row.mean_confidence, row.calibration_error]
        got = [_number(t) for t in printed[2:]]
        got[4] /= 100.0  # hit rate in percent
        for g, w, tol in zip(got, want, precision):
            assert (np.isnan(g) and not np.isfinite(w)) or g == pytest.approx(w, abs=tol * 1.001), (printed, row)
    text = " ".join(out.split())
    for (kind, version), drift in expected.drift.items():
        assert f"Feature drift, {kind} {version}: {int(drift['flagged'].sum())} of {len(drift)} flagged" in text
        worst = drift.sort_values("psi", ascending=False).head(8)  # the table shows the worst 8
        printed_psi = {r[0]: r[1] for r in rows if len(r) == 4 and r[0] in set(drift["feature"])}
        assert printed_psi == {f: f"{v:.3f}" for f, v in zip(worst["feature"], worst["psi"])}
    assert [line for line in out.splitlines() if line.startswith("ALERT")] == [f"ALERT {a}" for a in expected.alerts]
    assert f"report: {html_path}" in out.splitlines() and html_path.is_file()


def test_cli_exit_codes_and_stderr_lines(monitored):
    from trademl.cli import app

    base, _, bars_path, logs, cfg, _ = monitored
    cfg_path = base / "trademl.toml"
    cfg_path.write_text(f'[paths]\nmodel_root = "{base / "models"}"\nreport_dir = "{base / "reports"}"\n')
    runner = CliRunner(env={"COLUMNS": "250"})  # one table row per line
    fine = runner.invoke(app, ["monitor", "--log", str(logs["fine"]), "--bars", str(bars_path), "-c", str(cfg_path)])
    assert fine.exit_code == 0, fine.output
    assert "ALERT" not in fine.stderr and (base / "reports" / "monitor.html").exists()
    _assert_prints_the_library_result(fine, run_monitor(logs["fine"], bars_path, config=load_config(cfg_path)),
                                      base / "reports" / "monitor.html")
    drifted = runner.invoke(app, ["monitor", "--log", str(logs["drifted"]), "--bars", str(bars_path), "-c", str(cfg_path),
                                  "--out", str(base / "drifted.html")])
    assert drifted.exit_code == EXIT_ALERT
    assert "ALERT drift: lgb_5m" in drifted.stderr
    _assert_prints_the_library_result(drifted, run_monitor(logs["drifted"], bars_path, config=load_config(cfg_path)),
                                      base / "drifted.html")
    over = runner.invoke(app, ["monitor", "--log", str(logs["overconfident"]), "--bars", str(bars_path),
                               "-c", str(cfg_path), "--out", str(base / "over.html")])
    assert over.exit_code == EXIT_ALERT and "ALERT calibration: lgb_5m at 5 bars" in over.stderr
    _assert_prints_the_library_result(over, run_monitor(logs["overconfident"], bars_path, config=load_config(cfg_path)),
                                      base / "over.html")
    copy = base / "copy.sqlite"
    # a WAL database is the main file plus its -wal file: copy it through SQLite's backup API
    with sqlite3.connect(logs["fine"]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    kept = runner.invoke(app, ["monitor", "--log", str(copy), "-c", str(cfg_path), "--out", str(base / "copy.html"),
                               "--export", str(base / "rows.parquet"), "--prune-before", "2024-01-09T00:00:00Z"])
    assert kept.exit_code == 0, kept.output
    assert len(pd.read_parquet(base / "rows.parquet")) == 1401  # 1,400 predictions and the failed request
    assert PredictionLog(copy).query()["ts_utc"].min() >= pd.Timestamp("2024-01-09", tz="UTC")
    missing = runner.invoke(app, ["monitor", "--log", str(base / "nope.sqlite"), "-c", str(cfg_path)])
    assert missing.exit_code == 2 and "no prediction log" in missing.stderr


def test_html_report_is_self_contained_and_atomic(monitored):
    base, bars, _, logs, cfg, _ = monitored
    out = run_monitor(logs["drifted"], bars, config=cfg, html_path=base / "r" / "monitor.html").report_path
    text = out.read_text()
    assert "<script src=" not in text and text.count("Plotly.newPlot") == 5
    assert 'class="alert"' in text and "Drifted features" in text
    assert [p.name for p in out.parent.iterdir()] == ["monitor.html"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: `make setup-browser` (needs root)")
def test_html_report_renders_in_headless_chromium(monitored, tmp_path):
    from test_report import console_errors, render, status_of

    base, bars, _, logs, cfg, _ = monitored
    out = run_monitor(logs["drifted"], bars, config=cfg, html_path=tmp_path / "monitor.html").report_path
    dom, browser_log = render(out, tmp_path)
    status = status_of(dom)
    assert status["errors"] == "0", dom[dom.find('id="report-status"'):][:2000]
    assert status["plots"] == "5" and int(status["rendered-svgs"]) >= 5
    assert "Calibration: stated probability" in dom and "Feature drift: PSI" in dom
    assert console_errors(browser_log) == []


def test_an_empty_log_or_one_of_errors_only_reports_without_alert(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite")
    bars = synthetic_bars(300, seed=2, symbol="NQ")
    empty = run_monitor(tmp_path / "p.sqlite", bars, html_path=tmp_path / "empty.html")
    assert empty.scores.empty and empty.exit_code == 0 and empty.report_path.exists()
    log.append_error("no_model", "no model is loaded")
    errors_only = run_monitor(tmp_path / "p.sqlite", None)
    assert errors_only.errors["kind"].tolist() == ["no_model"] and errors_only.exit_code == 0
    assert any("no bars given" in n for n in errors_only.notes)


def test_unreadable_rows_are_reported_and_pruning_still_works(tmp_path, monkeypatch):
    """A year-9999 stamp, a stamp that is no time, broken JSON and a control-character symbol in
    the log: the monitor reports them and goes on; --prune-before runs even when the report
    cannot be made; absurd look-backs and a damaged database are one clear error."""
    from trademl.cli import app

    path = tmp_path / "p.sqlite"
    log = PredictionLog(path)
    bars = synthetic_bars(300, seed=2, symbol="NQ")
    for i, stamp in enumerate(bars.index[50:53]):
        log.append({"timestamp": stamp.isoformat(), "symbol": "NQ", "recommendation": "BUY", "confidence": 0.6,
                    "output": _output(), "model_versions": {"lgb_5m": "v1"}, "latency_ms": 1.0})
    log.append_error("validation", "bad \x1b[2J request", symbol="NQ\x1b[31m")
    log.close()
    with sqlite3.connect(path) as db:
        good = db.execute("SELECT * FROM predictions WHERE error_kind IS NULL LIMIT 1").fetchone()
        cols = [d[0] for d in db.execute("SELECT * FROM predictions").description]
        row = dict(zip(cols, good))
        for stamp, output in (("9999-12-31T23:59:59+00:00", row["output_json"]), ("not a time", row["output_json"]),
                              (row["ts_utc"], "{broken json")):
            values = dict(row, id=None, ts_utc=stamp, output_json=output)
            db.execute(f"INSERT INTO predictions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       [values[c] for c in cols])
    result = run_monitor(path, bars, html_path=tmp_path / "r.html")
    assert len(result.predictions) == 3  # the three good rows
    note = next(n for n in result.notes if "unreadable log rows" in n)
    assert note.startswith("3 unreadable log rows left out") and "9999-12-31" in note and "not valid JSON" in note
    runner = CliRunner()
    out = runner.invoke(app, ["monitor", "--log", str(path), "--out", str(tmp_path / "r2.html")],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.output and "\\x1b[2J" in out.output  # a logged escape is shown, not obeyed
    # --prune-before on its own: the bars file is missing, the report fails, the pruning is done.
    failed = runner.invoke(app, ["monitor", "--log", str(path), "--bars", str(tmp_path / "missing.csv"),
                                 "--prune-before", "2200-01-01"])
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    # Every row stamped before 2200 went; the year-9999 row and the one with no time stay.
    assert "pruned 5 rows older than 2200-01-01" in failed.output and "file not found" in failed.output
    assert PredictionLog(path).count() == 2
    for since in ("99999999999d", "999999999999999999999m", "yesterday"):
        bad = runner.invoke(app, ["monitor", "--log", str(path), "--since", since, "--out", str(tmp_path / "x.html")])
        assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output, (since, bad.output)
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    broken = runner.invoke(app, ["monitor", "--log", str(damaged), "--out", str(tmp_path / "y.html")])
    assert broken.exit_code == 2 and "prediction log" in broken.output and "Traceback" not in broken.output


# --- with the real predictor -----------------------------------------------------------------------


def test_monitor_of_the_real_predictor_recomputes_features_from_bars(trained_store, tmp_path):
    from trademl.predict.ensemble import EnsemblePredictor

    p = EnsemblePredictor(trained_store.root, trained_store.config, log_dir=tmp_path / "logs")
    bars = trained_store.bars
    cols = ["open", "high", "low", "close", "volume", "edge"]
    for end in range(len(bars) - 400, len(bars) - 40, 12):
        window = bars.iloc[end - 150:end]
        p.ensemble_predict({"symbol": "NQ", "bars": [{"timestamp": t.isoformat(), **dict(zip(cols, map(float, r)))}
                                                     for t, r in zip(window.index, window[cols].to_numpy())]})
    result = run_monitor(tmp_path / "logs" / "predictions.sqlite", bars, config=trained_store.config,
                         reference_bars=bars.iloc[:10_000])
    assert len(result.predictions) == 30
    assert set(result.scores["model"]) == {"lgb_5m", "lgb_30m", "lstm", "ppo", "ensemble"}
    assert (result.scores["predictions"] == 30).all()
    assert sorted(k for k, _ in result.drift) == ["lgb_30m", "lgb_5m", "lstm", "ppo"]
    for table in result.drift.values():
        assert (table["n_live"] == 30).all() and table["psi"].notna().all()
        assert not table["flagged"].any()  # 30 values are too few to alert on
    # the decision bar is the last bar each request sent, not the bar before it
    assert (result.predictions["decision_bar"] == result.predictions["ts_utc"]).all()
