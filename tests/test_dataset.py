"""Dataset build: chunked == whole, nothing crosses the ES roll or gaps, atomic, decisions."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trademl.config import Config, load_config
from trademl.data.bars import load_bars
from trademl.data.dataset import build_dataset, dataset_from_bars, load_dataset
from trademl.errors import DataError

DATA = Path(__file__).parent / "data"
ES_SLICE = DATA / "es_1min_lean_slice.csv"


@pytest.fixture(scope="module")
def es_slice_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "es"
    return build_dataset(ES_SLICE, out, symbol="ES", config=Config())


def test_build_writes_parquet_and_manifest(es_slice_dataset):
    ds = load_dataset(es_slice_dataset.path)
    m = ds.manifest
    bars = load_bars(ES_SLICE, symbol="ES")
    assert m["rows"] == len(bars) == len(ds.frame)
    assert m["symbol"] == "ES" and m["contract"]["point_value"] == 50.0
    assert m["span"]["start"] == bars.index[0].isoformat()
    assert ds.frame.columns.is_unique
    assert ds.X.shape == (len(bars), len(ds.feature_names)) and ds.X.dtype == np.float32
    assert set(m["label_balance"]) == {"5", "30"}
    assert m["feature_schema"]["hash"] == ds.schema.hash


def test_no_label_spans_the_roll_or_a_gap(es_slice_dataset):
    ds = load_dataset(es_slice_dataset.path)
    frame = ds.frame
    seg = frame["segment"].to_numpy()
    assert "contract" in frame and frame["contract"].nunique() == 2, "the slice holds the ESZ13 -> ESH14 roll"
    pos = np.arange(len(frame))
    for h in (5, 30):
        labelled = pos[frame[f"win_long_{h}"].notna().to_numpy()]
        # the exit bar t+h+1 is in the same segment and the same contract
        assert (seg[labelled + h + 1] == seg[labelled]).all()
        c = frame["contract"].to_numpy()
        assert (c[labelled + h + 1] == c[labelled]).all()
    roll = np.flatnonzero(frame["contract"].to_numpy()[1:] != frame["contract"].to_numpy()[:-1])[0] + 1
    assert frame.index[roll].date().isoformat() == "2013-12-18"
    assert seg[roll] != seg[roll - 1]


def test_full_bundled_es_has_no_label_across_roll_or_gaps():
    from trademl.data.bars import bundled_sample_path

    bars = load_bars(bundled_sample_path(), symbol="ES")
    ds = dataset_from_bars(bars, Config(), symbol="ES")
    seg = ds.segments
    stamps = ds.frame.index.as_unit("ns").asi8
    for h in (5, 30):
        t = np.flatnonzero(ds.frame[f"win_long_{h}"].notna().to_numpy())
        assert (seg[t + h + 1] == seg[t]).all()
        # the whole window is minute-contiguous within 15 minutes per step: no gap inside
        span_minutes = (stamps[t + h + 1] - stamps[t]) / 60e9
        assert span_minutes.max() <= 15 * (h + 1)


def test_chunked_build_equals_in_memory(tmp_path):
    cfg = load_config(overrides={"data": {"chunk_rows": 700}})
    built = load_dataset(build_dataset(ES_SLICE, tmp_path / "chunked", symbol="ES", config=cfg).path)
    whole = dataset_from_bars(load_bars(ES_SLICE, symbol="ES"), Config(), symbol="ES")
    pd.testing.assert_frame_equal(built.frame, whole.frame, check_freq=False, check_index_type=False)
    assert built.manifest["label_balance"] == whole.manifest["label_balance"]
    assert built.manifest["segments"] == whole.manifest["segments"]


def test_failed_rebuild_keeps_the_old_dataset(tmp_path):
    out = tmp_path / "es"
    build_dataset(ES_SLICE, out, symbol="ES")
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_utc,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,2,0.5,1.5,3\n2024-01-02T00:01:00Z,x,y,z,w,v\n")
    with pytest.raises(DataError, match="bad.csv"):
        build_dataset(bad, out, symbol="ES")
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_killed_build_leaves_no_dataset(tmp_path):
    """SIGKILL in the middle of writing: the target folder never appears half-written."""
    out = tmp_path / "es"
    script = textwrap.dedent(f"""
        import os, signal
        import trademl.data.dataset as d
        real = d._features_and_labels
        calls = []
        def slow(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        d._features_and_labels = slow
        from trademl.config import load_config
        d.build_dataset({str(ES_SLICE)!r}, {str(out)!r}, symbol="ES",
                        config=load_config(overrides={{"data": {{"chunk_rows": 700}}}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(DataError, match="not a dataset folder"):
        load_dataset(out)


def test_decision_log_is_joined_into_the_dataset(tmp_path):
    bars = load_bars(ES_SLICE, symbol="ES")
    # a decision 30 s after the close of bar 30 (a long with a realized loss) and one
    # 10 s after the close of bar 60 with no outcome: labelled from the bars
    closes = bars.index + pd.Timedelta(minutes=1)
    log = tmp_path / "decisions.jsonl"
    rows = [
        {"timestamp": (closes[30] + pd.Timedelta(seconds=30)).isoformat(), "symbol": "ESZ3", "side": "BUY", "pnl": -125.0},
        {"timestamp": (closes[60] + pd.Timedelta(seconds=10)).isoformat(), "symbol": "ES", "side": "short"},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = build_dataset(ES_SLICE, tmp_path / "ds", decisions_path=log, symbol="ES")
    ds = load_dataset(result.path)
    dec = ds.decisions
    assert result.manifest["decisions"]["rows"] == 2
    assert dec["bar_index"].tolist() == [30, 60]
    assert dec["win"].iloc[0] == 0.0 and dec["label_source"].iloc[0] == "outcome"
    expected = ds.frame["win_short_5"].iloc[60]
    assert dec["win"].iloc[1] == pytest.approx(expected, nan_ok=True)


def test_synthetic_dataset_carries_the_edge_feature():
    from trademl.data.synthetic import synthetic_bars

    cfg = load_config(overrides={"data": {"extra_feature_columns": ["edge"]}})
    ds = dataset_from_bars(synthetic_bars(5_000, seed=1, edge_ic=0.1), cfg)
    assert ds.feature_names[-1] == "edge"
    assert np.array_equal(ds.frame["edge"].to_numpy(np.float32), ds.X[:, -1])


def _table_cells(text: str) -> dict[str, str]:
    """The rows of a printed rich table (first cell -> second cell)."""
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]
    return {r[0]: r[1] for r in rows if len(r) >= 2}


def test_cli_build_prints_summary_and_paths(tmp_path, es_slice_dataset):
    env = dict(os.environ, COLUMNS="200")  # one table row per line
    out = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "trademl.cli", "data", "build", str(ES_SLICE), "--out", str(out), "--symbol", "ES"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rows" in proc.stderr and "data.parquet" in proc.stderr
    # What it wrote: the dataset the library builds from the same file, one row per bar.
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet", "manifest.json"]
    built, same = load_dataset(out), load_dataset(es_slice_dataset.path)
    assert len(built.frame) == len(load_bars(ES_SLICE, symbol="ES")) == 101
    pd.testing.assert_frame_equal(built.frame, same.frame)
    m = built.manifest
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["symbol"] == "ES" and m["rows"] == len(built.frame) and m["feature_schema"] == same.manifest["feature_schema"]
    # What it printed: the manifest's figures, then the files written.
    cells = _table_cells(proc.stderr)
    assert cells["rows"] == f"{m['rows']:,}"
    assert cells["segments"] == str(m["segments"])
    assert cells["span"] == f"{m['span']['start']} .. {m['span']['end']}"
    assert cells["features"] == f"{len(m['feature_schema']['names'])} (schema {m['feature_schema']['hash'][:12]})"
    for h, b in m["label_balance"].items():
        assert cells[f"labels {h} bars = {m['horizon_minutes'][h]:g} min"].startswith(f"{b['rows_labelled']:,} labelled; win long {b['win_long_rate']}")
    written = proc.stderr[proc.stderr.index("written:"):].split()[1:]
    assert written == [str(out / "data.parquet"), str(out / "manifest.json")]

    proc = subprocess.run([sys.executable, "-m", "trademl.cli", "data", "build", str(tmp_path / "nope.csv")],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "nope.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stdout == ""
    assert not (tmp_path / "artifacts").exists()  # nothing written for a file that is not there


def test_resampled_build_keeps_sessions_as_segments(tmp_path):
    cfg = Config()
    ds30 = load_dataset(build_dataset(ES_SLICE, tmp_path / "r30", symbol="ES", resample_minutes=30, config=cfg).path)
    ds1 = load_dataset(build_dataset(ES_SLICE, tmp_path / "r1", symbol="ES", config=cfg).path)
    # 30-minute bars must not each become a segment: same session structure as 1-minute bars
    assert ds30.manifest["segments"] <= ds1.manifest["segments"]
    assert ds30.manifest["resample_minutes"] == 30
    assert (ds30.frame.index[1:] > ds30.frame.index[:-1]).all()


def test_feature_matrix_names_missing_or_repeated_columns():
    from trademl.data.synthetic import synthetic_bars

    ds = dataset_from_bars(synthetic_bars(3_000, seed=2), Config())
    broken = type(ds)(ds.frame.drop(columns=["rsi"]), ds.manifest)
    with pytest.raises(DataError, match=r"no feature columns \['rsi'\]"):
        broken.X
    twice = type(ds)(pd.concat([ds.frame, ds.frame[["rsi"]]], axis=1), ds.manifest)
    with pytest.raises(DataError, match=r"columns \['rsi'\] appear twice"):
        twice.X


# --------------------------------------------------------------------------- no valid rows (issue 14's crash)


@pytest.mark.parametrize("chunk_rows", [500_000, 2])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_build_with_repair_of_a_file_with_no_valid_rows_is_a_data_error(tmp_path, chunk_rows, suffix):
    """Every chunk emptied by repair (one chunk, or many small ones): a DataError naming the
    file and the first bad row, never an IndexError from re-cutting the chunks into segments."""
    stamps = pd.date_range("2024-01-02 14:00", periods=5, freq="min", tz="UTC")
    bad = pd.DataFrame({"timestamp": stamps, "open": np.nan, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0})
    path = tmp_path / f"all_bad{suffix}"
    if suffix == ".parquet":
        bad.to_parquet(path)
    else:
        bad.to_csv(path, index=False)
    cfg = load_config(None, {"data": {"chunk_rows": chunk_rows}})
    with pytest.raises(DataError, match=r"no valid bars: repair dropped all 5 rows; the first, (line 2|row 1): open is missing"):
        build_dataset(path, tmp_path / "ds", repair=True, config=cfg)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_dataset_from_an_empty_bars_frame_is_a_data_error():
    bars = load_bars(Path(__file__).parent / "data" / "es_1min_lean_slice.csv").iloc[:0]
    with pytest.raises(DataError, match="no bars to build a dataset from"):
        dataset_from_bars(bars)
