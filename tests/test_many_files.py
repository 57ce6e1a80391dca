"""Several bars files (issue 14): merged in time order, overlaps reported, identical duplicate bars
dropped with a count, conflicting ones an error naming both files."""

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.cli import app
from trademl.data.bars import bundled_sample_path, load_bars
from trademl.data.dataset import load_dataset
from trademl.errors import DataError

ES = bundled_sample_path()


def _split(tmp_path: Path) -> tuple[list[Path], int]:
    """The bundled ES file's rows in three files; the second repeats the last day of the first."""
    raw = pd.read_csv(ES)
    day = raw["timestamp_utc"].str[:10]
    days = day.unique()
    a_end = int((day <= days[5]).sum())  # file a: days 0..5
    b_start = int((day < days[5]).sum())  # file b: day 5 again (the overlap), up to day 10
    b_end = int((day <= days[10]).sum())
    parts = [raw.iloc[:a_end], raw.iloc[b_start:b_end], raw.iloc[b_end:]]
    paths = []
    for name, part in zip(("es_part_a.csv", "es_part_b.csv", "es_part_c.csv"), parts):
        paths.append(tmp_path / name)
        part.to_csv(paths[-1], index=False)
    return paths, a_end - b_start


def test_three_files_with_an_overlapping_day_build_the_whole_files_dataset(tmp_path):
    paths, repeated = _split(tmp_path)
    runner = CliRunner()
    whole = runner.invoke(app, ["data", "build", str(ES), "-o", str(tmp_path / "whole")])
    # given out of order, to show the files are put in time order
    parts = runner.invoke(app, ["data", "build", str(paths[2]), str(paths[0]), str(paths[1]), "-o", str(tmp_path / "p")])
    glob = runner.invoke(app, ["data", "build", str(tmp_path / "es_part_*.csv"), "-o", str(tmp_path / "g")])
    for done in (whole, parts, glob):
        assert done.exit_code == 0, done.output
    expected = load_dataset(tmp_path / "whole")
    for folder in ("p", "g"):
        got = load_dataset(tmp_path / folder)
        pd.testing.assert_frame_equal(got.frame, expected.frame)
        for key in ("rows", "span", "segments", "label_balance", "contract", "feature_schema"):
            assert got.manifest[key] == expected.manifest[key], key
        merged = " ".join(got.manifest["merged"])
        assert "merged 3 files in time order" in merged
        assert "es_part_b.csv overlaps" in merged and "es_part_a.csv" in merged
        assert f"dropped {repeated:,} duplicate bars" in merged
    assert repeated > 100  # a whole day of minute bars


def test_inspect_and_load_bars_take_several_files(tmp_path):
    paths, repeated = _split(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = load_bars(paths)
    assert merged.index.equals(load_bars(ES).index) and merged.attrs["symbol"] == "ES"
    assert sum(f"{repeated:,} identical duplicate bars" in str(w.message) for w in caught) == 1
    done = CliRunner().invoke(app, ["data", "inspect", *map(str, paths)])
    assert done.exit_code == 0 and "merged 3 files" in done.output.replace("\n", " ")


def test_a_conflicting_duplicate_bar_names_both_files(tmp_path):
    paths, _ = _split(tmp_path)
    b = pd.read_csv(paths[1])
    stamp = b.loc[3, "timestamp_utc"]
    b.loc[3, "close"] = b.loc[3, "close"] + 0.25  # the same minute, another close: which one is true?
    b.loc[3, "high"] = max(b.loc[3, "high"], b.loc[3, "close"])
    b.to_csv(paths[1], index=False)
    done = CliRunner().invoke(app, ["data", "build", *map(str, paths), "-o", str(tmp_path / "ds")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    text = done.output.replace("\n", "")
    assert "conflicting bars at" in text and pd.Timestamp(stamp, tz="UTC").isoformat(" ") in text
    assert "es_part_a.csv" in text and "es_part_b.csv" in text and "close" in text
    assert not (tmp_path / "ds").exists()


def test_files_that_cannot_be_merged_are_clear_errors(tmp_path):
    paths, _ = _split(tmp_path)
    with pytest.raises(DataError, match="no file matches"):
        load_bars(tmp_path / "nq_*.csv")
    nq = pd.read_csv(paths[2])
    nq["contract_yyyymm"] = nq["contract_yyyymm"].str.replace("ES", "NQ")
    nq.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match=r"different instruments: \['ES', 'NQ'\]"):
        load_bars([paths[0], tmp_path / "other.csv"])
    pd.read_csv(paths[2]).drop(columns=["volume"]).to_csv(tmp_path / "es_novol.csv", index=False)
    with pytest.raises(DataError, match="different columns"):
        load_bars([paths[0], tmp_path / "es_novol.csv"])


def test_train_and_monitor_read_several_files(tmp_path):
    """`train` builds its in-memory dataset from several files as `data build` does."""
    from trademl.config import load_config
    from trademl.data.dataset import load_training_dataset

    paths, _ = _split(tmp_path)
    cfg = load_config(None)
    merged = load_training_dataset([str(p) for p in paths], cfg)
    whole = load_training_dataset(ES, cfg)
    pd.testing.assert_frame_equal(merged.frame, whole.frame)
    assert json.dumps(merged.manifest["contract"]) == json.dumps(whole.manifest["contract"])
    # the monitor judges outcomes against bars given as several files (repeated --bars)
    from trademl.predict.log import PredictionLog

    log = tmp_path / "p.sqlite"
    PredictionLog(log).append({"timestamp": whole.frame.index[100].isoformat(), "symbol": "ES", "recommendation": "BUY",
                               "confidence": 0.8, "output": {"ensemble_recommendation": "BUY", "confidence_score": 0.8},
                               "model_versions": {}, "latency_ms": 1.0})
    argv = ["monitor", "--log", str(log), "-o", str(tmp_path / "m.html")]
    done = CliRunner().invoke(app, [*argv, *[a for p in paths for a in ("--bars", str(p))]])
    assert done.exit_code in (0, 3) and "Traceback" not in done.output, done.output
    assert "no bars given" not in done.output


def test_backtest_signals_reads_a_glob_of_bars_files(tmp_path):
    paths, _ = _split(tmp_path)
    bars = load_bars(ES)
    signals = tmp_path / "signals.csv"
    closes = bars.index + pd.Timedelta(minutes=1)
    rows = [(closes[k], a) for k, a in ((50, "BUY"), (90, "SELL"), (8000, "SELL"), (8100, "BUY"), (15000, "BUY"))]
    signals.write_text("timestamp,action,confidence\n" + "".join(f"{t.isoformat()},{a},0.9\n" for t, a in rows))
    results = []
    for source in (str(ES), str(tmp_path / "es_part_*.csv")):
        out = tmp_path / "r.json"
        done = CliRunner().invoke(app, ["backtest-signals", source, str(signals), "--threshold", "0.5", "--json", str(out)])
        assert done.exit_code == 0, done.output
        results.append(json.loads(out.read_text())["runs"]["signals"])
    assert results[0] == results[1] and results[0]["trades"] > 0
