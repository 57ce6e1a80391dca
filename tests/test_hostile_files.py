"""Hostile and unlucky bar FILES through `trademl data inspect` / `data build` (issue 15).

Every case is one `error: ...` line naming the file (and the line where there is one),
exit code 2, no traceback, and nothing half-written left on disk. The good files keep
loading exactly as before (tests/test_bars.py checks those frames in detail).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.cli import app
from trademl.data.bars import MAX_RESAMPLE_MINUTES, bundled_sample_path, load_bars
from trademl.errors import TradeMLError

HEADER = "timestamp,open,high,low,close,volume\n"
STAMPS = [f"2024-01-02 10:{m:02d}:00" for m in range(10)]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(stamps, price="100.0", sep=","):
    return "".join(f"{s}{sep}{price}{sep}{price}{sep}{price}{sep}{price}{sep}10\n" for s in stamps)


def _with_line7(stamp=None, price="100.0"):
    """Ten good rows, the sixth (line 7) replaced."""
    return HEADER + _rows(STAMPS[:5]) + _rows([stamp or STAMPS[5]], price) + _rows(STAMPS[6:])


def _euro(sep=";", quote=""):
    q = quote
    head = sep.join(["timestamp", "open", "high", "low", "close", "volume"]) + "\n"
    return head + "".join(f"{s}{sep}{q}1234,50{q}{sep}{q}1235,25{q}{sep}{q}1233,75{q}{sep}{q}1234,00{q}{sep}10\n"
                          for s in STAMPS)


# name -> file text
FILES = {
    "y1600.csv": HEADER + _rows(s.replace("2024", "1600") for s in STAMPS),
    "y2300.csv": HEADER + _rows(s.replace("2024", "2300") for s in STAMPS),
    "one_1600.csv": _with_line7("1600-01-02 10:05:00"),
    "one_2300_compact.csv": HEADER + _rows(s.replace("-", "").replace(":", "") for s in STAMPS[:5])
    + _rows(["23000102 100500"]) + _rows(s.replace("-", "").replace(":", "") for s in STAMPS[6:]),
    "y1677.csv": _with_line7("1677-09-21 10:05:00"),
    "y2263.csv": _with_line7("2263-01-01 10:05:00"),
    "y9999.csv": _with_line7("9999-12-31 23:59:00"),
    "y9999_offset.csv": _with_line7("9999-12-31T23:59:00+05:00"),
    "y0001_us.csv": HEADER + _rows(f"01/02/0001 10:{m:02d}" for m in range(10)),
    "nul_bytes.csv": HEADER + "\0" * 5000 + "\n",
    "unix_overflow.csv": HEADER + _rows(str(10**25 + i) for i in range(10)),
    "unix_one_overflow.csv": HEADER + _rows(str(1704189600 + 60 * i) for i in range(5))
    + _rows(["99999999999999999999"]) + _rows(str(1704189600 + 60 * i) for i in range(6, 10)),
    "unix_ms_overflow.csv": HEADER + _rows(str(1704189600000 + 60000 * i) for i in range(5))
    + _rows(["9223372036854775807"]) + _rows(str(1704189600000 + 60000 * i) for i in range(6, 10)),
    "header_only.csv": HEADER,
    "header_blank_lines.csv": HEADER + "\n\n\n",
    "all_bad.csv": HEADER + "".join(f"x{i},a,b,c,d,e\n" for i in range(5)),
    "price_1e300.csv": _with_line7(price="1e300"),
    "price_f32max.csv": _with_line7(price="3.5e38"),
    "price_1e308.csv": _with_line7(price="1.7e308"),
    "price_inf.csv": _with_line7(price="inf"),
    "euro_comma.csv": "timestamp,open,high,low,close,volume\n"
    + "".join(f"{s},4002,72,4003,97,4001,08,4002,32,10\n" for s in STAMPS),
    "euro_comma_nohdr_bad.csv": "timestamp,open,high,low,close,volume\n"
    + "".join(f"{s},1234,50,1235,25,1233,75,1234,00,10\n" for s in STAMPS),
    # headerless EUR/USD-like prices: 1,0810 split into 1 and 0810 could pass as a bar by chance
    "fx_comma_nohdr.csv": "".join(f"{s},1,08{10 + i:02d},1,08{15 + i:02d},1,08{5 + i:02d},1,08{11 + i:02d},10\n"
                                  for i, s in enumerate(STAMPS)),
}

# (id, argv with {f} for the file's path, file name, regex the error line must match, line it names or None)
CASES = [
    ("year 1600", ["data", "inspect", "{f}"], "y1600.csv", r"line 2: timestamp outside the supported range", 2),
    ("year 1600 repair", ["data", "inspect", "{f}", "--repair"], "y1600.csv", r"repair dropped all 10 rows.*line 2", 2),
    ("year 2300", ["data", "inspect", "{f}"], "y2300.csv", r"outside the supported range", 2),
    ("year 2300 build", ["data", "build", "{f}", "-o", "{out}"], "y2300.csv", r"outside the supported range", 2),
    ("year 2300 build repair", ["data", "build", "{f}", "-o", "{out}", "--repair"], "y2300.csv",
     r"repair dropped all 10 rows", 2),
    ("one stamp 1600", ["data", "inspect", "{f}"], "one_1600.csv", r"'1600-01-02 10:05:00'", 7),
    ("one compact stamp 2300", ["data", "inspect", "{f}"], "one_2300_compact.csv", r"outside the supported range", 7),
    ("year 1677", ["data", "inspect", "{f}"], "y1677.csv", r"outside the supported range", 7),
    ("year 2263", ["data", "inspect", "{f}"], "y2263.csv", r"outside the supported range", 7),
    ("year 9999", ["data", "inspect", "{f}"], "y9999.csv", r"outside the supported range", 7),
    ("year 9999 with offset", ["data", "inspect", "{f}"], "y9999_offset.csv", r"outside the supported range|cannot read", 7),
    ("year 9999 tz", ["data", "inspect", "{f}", "--tz", "America/Chicago"], "y9999.csv", r"outside the supported range", 7),
    ("year 1 m/d/Y", ["data", "inspect", "{f}"], "y0001_us.csv", r"outside the supported range", 2),
    ("NUL bytes echoed short", ["data", "inspect", "{f}"], "nul_bytes.csv", r"cannot read timestamp '\\x00", 2),
    ("NUL bytes repair", ["data", "inspect", "{f}", "--repair"], "nul_bytes.csv", r"repair dropped all 1 rows", 2),
    ("unix overflow", ["data", "inspect", "{f}"], "unix_overflow.csv", r"outside the supported range", 2),
    ("unix overflow repair", ["data", "inspect", "{f}", "--repair"], "unix_overflow.csv", r"repair dropped all", 2),
    ("one unix overflow", ["data", "inspect", "{f}"], "unix_one_overflow.csv", r"'99999999999999999999'", 7),
    ("one unix ms overflow", ["data", "build", "{f}", "-o", "{out}"], "unix_ms_overflow.csv", r"outside the supported", 7),
    ("tz Mars inspect", ["data", "inspect", "{f}", "--tz", "Mars/Olympus"], "y1600.csv", r"--tz: unknown timezone 'Mars/Olympus'", None),
    ("tz Mars bundled", ["data", "inspect", "--tz", "Mars/Olympus"], None, r"unknown timezone", None),
    ("tz empty", ["data", "inspect", "--tz", ""], None, r"unknown timezone", None),
    ("tz garbage", ["data", "inspect", "--tz", "../../etc/passwd"], None, r"unknown timezone", None),
    ("resample huge inspect", ["data", "inspect", "--resample", "1000000000"], None, rf"1 to {MAX_RESAMPLE_MINUTES}", None),
    ("resample 0 inspect", ["data", "inspect", "--resample", "0"], None, r"not 0", None),
    ("resample -5 inspect", ["data", "inspect", "--resample", "-5"], None, r"not -5", None),
    ("resample week+1 inspect", ["data", "inspect", "--resample", str(MAX_RESAMPLE_MINUTES + 1)], None, r"a week", None),
    ("resample huge build", ["data", "build", "-o", "{out}", "--resample", "1000000000"], None, r"1 to 10080", None),
    ("resample 0 build", ["data", "build", "-o", "{out}", "--resample", "0"], None, r"not 0", None),
    ("resample -5 build", ["data", "build", "-o", "{out}", "--resample", "-5"], None, r"not -5", None),
    ("header only", ["data", "inspect", "{f}"], "header_only.csv", r"no data rows", None),
    ("header only repair", ["data", "inspect", "{f}", "--repair"], "header_only.csv", r"no data rows", None),
    ("header only build", ["data", "build", "{f}", "-o", "{out}"], "header_only.csv", r"no data rows", None),
    ("header and blank lines", ["data", "inspect", "{f}"], "header_blank_lines.csv", r"no data rows", None),
    ("no valid row repair", ["data", "inspect", "{f}", "--repair"], "all_bad.csv", r"repair dropped all 5 rows.*line 2", 2),
    ("no valid row build repair", ["data", "build", "{f}", "-o", "{out}", "--repair"], "all_bad.csv",
     r"repair dropped all 5 rows.*line 2", 2),
    ("price 1e300", ["data", "inspect", "{f}"], "price_1e300.csv", r"open too large \(float32 holds", 7),
    ("price 3.5e38", ["data", "inspect", "{f}"], "price_f32max.csv", r"too large \(float32 holds", 7),
    ("price 1.7e308 build", ["data", "build", "{f}", "-o", "{out}"], "price_1e308.csv", r"too large \(float32 holds", 7),
    ("price inf", ["data", "inspect", "{f}"], "price_inf.csv", r"open is infinite", 7),
    ("euro comma", ["data", "inspect", "{f}"], "euro_comma.csv", r"decimals written with commas", 2),
    ("euro comma repair", ["data", "inspect", "{f}", "--repair"], "euro_comma.csv", r"decimals written with commas", 2),
    ("euro comma headerless fx", ["data", "inspect", "{f}", "--repair"], "fx_comma_nohdr.csv",
     r"make valid bars read in pairs: decimals written with commas", 1),
    ("euro comma headerless fx build", ["data", "build", "{f}", "-o", "{out}"], "fx_comma_nohdr.csv",
     r"decimals written with commas", 1),
    ("euro comma build repair", ["data", "build", "{f}", "-o", "{out}", "--repair"], "euro_comma_nohdr_bad.csv",
     r"decimals written with commas", 2),
]


def _invoke(args):
    result = CliRunner().invoke(app, args)
    return result, result.output


def _assert_one_error(result, output, pattern, path=None, line=None):
    assert result.exit_code == 2, output
    assert "Traceback" not in output and not (result.exception and not isinstance(result.exception, SystemExit)), output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, output
    import re

    assert re.search(pattern, errors[0]), errors[0]
    if path is not None:
        assert str(path) in errors[0], errors[0]
    if line is not None:
        assert f"line {line}" in errors[0], errors[0]
    assert len(errors[0]) < 700, errors[0][:300]


@pytest.mark.parametrize("argv,name,pattern,line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_file_is_one_clear_error(tmp_path, argv, name, pattern, line):
    path = None
    if name:
        path = tmp_path / name
        path.write_text(FILES[name])
    out = tmp_path / "dataset"
    args = [a.format(f=path, out=out) for a in argv]
    result, output = _invoke(args)
    option_error = "--tz" in argv or "--resample" in argv  # named by the option, before any file is read
    _assert_one_error(result, output, pattern, None if option_error else path, line)
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".old"))]
    assert leftovers == []


def test_repair_drops_and_reports_inf_nan_and_oversized_prices(tmp_path):
    text = HEADER + _rows(STAMPS[:3]) + _rows([STAMPS[3]], "inf") + _rows([STAMPS[4]], "nan") \
        + _rows([STAMPS[5]], "-inf") + _rows([STAMPS[6]], "1e300") + _rows(STAMPS[7:])
    path = tmp_path / "nonfinite.csv"
    path.write_text(text)
    result, output = _invoke(["data", "inspect", str(path), "--repair"])
    assert result.exit_code == 0, output
    assert "dropped 4" in output
    for line in (5, 6, 7, 8):
        assert f"line {line}:" in output
    bars = load_bars(path, repair=True)
    assert len(bars) == 6 and np.isfinite(bars[["open", "high", "low", "close"]].to_numpy()).all()


@pytest.mark.parametrize("sep,quote", [(";", ""), ("\t", ""), ("|", ""), (",", '"'), (";", '"')])
def test_decimal_commas_are_read_as_decimals(tmp_path, sep, quote):
    path = tmp_path / "euro.csv"
    path.write_text(_euro(sep, quote))
    bars = load_bars(path)
    assert len(bars) == 10
    assert bars.iloc[0][["open", "high", "low", "close"]].tolist() == [1234.5, 1235.25, 1233.75, 1234.0]
    result, output = _invoke(["data", "inspect", str(path), "--repair"])
    assert result.exit_code == 0 and "dropped 0" in output, output


def test_decimal_commas_only_where_a_price_has_a_fraction(tmp_path):
    """Some tools write whole prices bare (4003) and quote only the others ("4002,75")."""
    path = tmp_path / "mixed.csv"
    path.write_text(HEADER + "".join(f'{s},"4002,75",4003,"4001,5",4002,10\n' for s in STAMPS))
    bars = load_bars(path)
    assert len(bars) == 10 and bars.iloc[0][["open", "high", "low", "close"]].tolist() == [4002.75, 4003, 4001.5, 4002]


def test_decimal_commas_headerless_and_one_bad_cell(tmp_path):
    lines = [f"{s};1234,50;1235,25;1233,75;1234,00;10" for s in STAMPS]
    lines[4] = f"{STAMPS[4]};12x4,50;1235,25;1233,75;1234,00;10"
    path = tmp_path / "euro_nohdr.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TradeMLError, match=r"line 5: open is not a number: '12x4,50'"):
        load_bars(path)
    bars = load_bars(path, repair=True)
    assert len(bars) == 9 and (bars["open"] == 1234.5).all()


def test_a_file_with_no_newline_is_refused_fast_and_not_echoed(tmp_path):
    path = tmp_path / "one_line.csv"
    with open(path, "w") as f:
        f.write("timestamp,open,high,low,close,volume" + "x" * (30 * 2**20))  # 30 MB, no newline
    start = time.perf_counter()
    result, output = _invoke(["data", "inspect", str(path)])
    took = time.perf_counter() - start
    _assert_one_error(result, output, r"line 1: line longer than 1,000,000 characters", path, 1)
    assert took < 5, took
    assert len(output) < 1000


def test_a_huge_bad_line_later_in_the_file_is_reported_short(tmp_path):
    good = [f"2024-01-02 {h:02d}:{m:02d}:00,100,100,100,100,10" for h in range(10, 16) for m in range(60)]
    lines = good[:300] + ["9" * (5 * 2**20) + ",100,100,100,100,10"] + good[300:]
    path = tmp_path / "long_later.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    result, output = _invoke(["data", "inspect", str(path)])
    _assert_one_error(result, output, r"line 302: ", path, 302)
    assert len(output) < 1500
    result, output = _invoke(["data", "inspect", str(path), "--repair"])
    assert result.exit_code == 0 and "line 302:" in output and len(output) < 5000, output[:2000]


def test_the_bundled_and_shared_files_still_load():
    bars = load_bars(bundled_sample_path())
    assert len(bars) > 1000 and bars.index.tz is not None
    for path in sorted(SHARED.glob("*")) if SHARED.is_dir() else []:
        if path.suffix == ".md":
            continue
        loaded = load_bars(path)
        assert len(loaded) > 0 and np.isfinite(loaded[["open", "high", "low", "close"]].to_numpy()).all()


# --------------------------------------------------------------------------- full disk


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_a_checkpoint_leaves_no_part(tmp_path, monkeypatch):
    import torch

    from trademl.models import lstm_train

    path = tmp_path / "fold0.pt"
    lstm_train._save_checkpoint(path, {"epoch": 1})
    real_save = torch.save

    def half_then_fail(obj, f, *a, **k):
        Path(f).write_bytes(b"half")  # something is on disk when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(lstm_train.torch, "save", half_then_fail)
    with pytest.raises(TradeMLError, match=r"fold0.pt: cannot write the training checkpoint"):
        lstm_train._save_checkpoint(path, {"epoch": 2})
    monkeypatch.setattr(lstm_train.torch, "save", _enospc)
    with pytest.raises(TradeMLError, match=r"No space left"):
        lstm_train._save_checkpoint(path, {"epoch": 3})
    monkeypatch.setattr(lstm_train.torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous checkpoint is intact


@pytest.fixture
def tiny_tmpfs(mount_tmpfs):
    """A full 64 KiB tmpfs (root only; skipped with the reason otherwise)."""
    return mount_tmpfs("64k")


def _fill(folder: Path) -> None:
    try:
        with open(folder / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:  # full: the close's flush fails too
        pass


def test_checkpoint_on_a_full_tmpfs_leaves_no_part(tiny_tmpfs):
    import torch

    from trademl.models import lstm_train

    path = tiny_tmpfs / "fold0.pt"
    with pytest.raises(TradeMLError, match="cannot write the training checkpoint") as caught:
        lstm_train._save_checkpoint(path, {"model": torch.zeros(100_000)})  # 400 KB into 64 KiB
    assert "Traceback" not in str(caught.value)
    del caught
    assert not list(tiny_tmpfs.glob("*.part")) and not path.exists()


@pytest.fixture(scope="module")
def lgbm_data():
    from trademl.config import Config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars

    cfg = Config()
    cfg.data.horizons = [5]
    cfg.data.extra_feature_columns = ["edge"]
    for key, value in dict(n_estimators=40, num_leaves=7, learning_rate=0.3, min_child_samples=200,
                           feature_fraction=1.0, early_stopping_rounds=10, n_folds=3, num_threads=1).items():
        setattr(cfg.lgbm, key, value)
    return dataset_from_bars(synthetic_bars(8_000, seed=3, edge_ic=0.2), cfg), cfg


def _store_is_clean(root: Path):
    from trademl.models.store import ModelStore

    assert ModelStore(root).latest("lgb_5m") is None
    leftovers = [p for p in root.rglob("*") if p.is_file() and p.name != "filler"]
    assert leftovers == [], leftovers


def test_full_disk_in_train_lgbm_leaves_nothing_half_written(tmp_path, monkeypatch, lgbm_data):
    from trademl.errors import ModelStoreError
    from trademl.models import lgbm
    from trademl.models.store import ModelStore

    dataset, cfg = lgbm_data
    monkeypatch.setattr(lgbm, "_write_json", _enospc)  # model.txt and model.onnx already written
    with pytest.raises(ModelStoreError, match="cannot write the model: No space left"):
        lgbm.train_win_model(dataset, 5, cfg, store=ModelStore(tmp_path))
    _store_is_clean(tmp_path)


def test_train_lgbm_on_a_full_tmpfs_leaves_nothing_half_written(tiny_tmpfs, lgbm_data):
    from trademl.errors import ModelStoreError
    from trademl.models import lgbm
    from trademl.models.store import ModelStore

    dataset, cfg = lgbm_data
    _fill(tiny_tmpfs)
    with pytest.raises(ModelStoreError, match="cannot write the model"):
        lgbm.train_win_model(dataset, 5, cfg, store=ModelStore(tiny_tmpfs))
    _store_is_clean(tiny_tmpfs)


def test_full_disk_in_dataset_build_leaves_nothing(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    class FullWriter:
        def __init__(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "ParquetWriter", FullWriter)
    out = tmp_path / "ds"
    result, output = _invoke(["data", "build", "-o", str(out)])
    _assert_one_error(result, output, r"cannot write the dataset: No space left", out)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def lstm_data():
    from trademl.config import Config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars

    cfg = Config()
    cfg.data.extra_feature_columns = ["edge"]
    for key, value in dict(SEQUENCE_LENGTH=8, HIDDEN_SIZE=8, NUM_LAYERS=1, EPOCHS=2, PATIENCE=2, N_FOLDS=1,
                           BATCH_SIZE=128, LEARNING_RATE=3e-3, TORCH_THREADS=1).items():
        setattr(cfg.lstm, key, value)
    return dataset_from_bars(synthetic_bars(6_000, seed=2, edge_ic=0.3, symbol="NQ"), cfg), cfg


def test_full_disk_during_train_lstm_leaves_no_part(tmp_path, monkeypatch, lstm_data):
    """The second checkpoint write fails: one clear error, fold0.pt from the first epoch, no .part."""
    import torch

    from trademl.models.lstm import train_lstm

    dataset, cfg = lstm_data
    real_save, calls = torch.save, []

    def fails_second(obj, f, *a, **k):
        calls.append(Path(f).name)
        if len(calls) == 2:
            Path(f).write_bytes(b"half")
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fails_second)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TradeMLError, match=r"fold0.pt: cannot write the training checkpoint"):
        train_lstm(dataset, cfg, store_root=tmp_path / "models", checkpoint_dir=ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["fold0.pt"]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.onnx"))


def test_full_disk_in_the_lstm_store_write_leaves_nothing(tmp_path, monkeypatch, lstm_data):
    import torch

    from trademl.errors import ModelStoreError
    from trademl.models.lstm import train_lstm
    from trademl.models.store import ModelStore

    dataset, cfg = lstm_data
    real_save = torch.save

    def full_for_the_model(obj, f, *a, **k):
        if Path(f).name == "model.pt":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_for_the_model)
    root = tmp_path / "models"
    with pytest.raises(ModelStoreError, match=r"cannot write the model: model.pt"):
        train_lstm(dataset, cfg, store_root=root, checkpoint_dir=tmp_path / "ckpt")
    assert ModelStore(root).latest("lstm") is None
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert not list((tmp_path / "ckpt").glob("*.part"))


def test_train_lstm_with_checkpoints_on_a_full_tmpfs(tiny_tmpfs, tmp_path, lstm_data):
    from trademl.models.lstm import train_lstm

    dataset, cfg = lstm_data
    _fill(tiny_tmpfs)
    with pytest.raises(TradeMLError, match="cannot write the training checkpoint") as caught:
        train_lstm(dataset, cfg, store_root=tmp_path / "models", checkpoint_dir=tiny_tmpfs)
    del caught
    assert not list(tiny_tmpfs.glob("*.part")) and not list(tiny_tmpfs.glob("*.pt"))


def _parquet(path: Path, stamps, close=1.0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(stamps)
    pq.write_table(pa.table({"timestamp": stamps, "open": [1.0] * n, "high": [1.0] * n, "low": [1.0] * n,
                             "close": [1.0] * (n - 1) + [close], "volume": [1.0] * n}), path)
    return path


@pytest.mark.parametrize("kind", ["year 1600 us", "unix overflow", "close 1e300"])
def test_hostile_parquet_is_one_clear_error(tmp_path, kind):
    import pyarrow as pa

    if kind == "year 1600 us":
        stamps = pa.array(np.array(["2024-01-02T10:00", "2024-01-02T10:01", "1600-01-02T10:02"], dtype="datetime64[us]"))
        path, pattern = _parquet(tmp_path / "y1600.parquet", stamps), r"row 3: timestamp outside the supported range"
    elif kind == "unix overflow":
        path = _parquet(tmp_path / "unix.parquet", pa.array([1704189600, 1704189660, 10**18]))
        pattern = r"row 3: timestamp outside the supported range"
    else:
        path = _parquet(tmp_path / "big.parquet", pa.array([1704189600, 1704189660, 1704189720]), close=1e300)
        pattern = r"row 3: close too large \(float32 holds"
    result, output = _invoke(["data", "inspect", str(path)])
    _assert_one_error(result, output, pattern, path, None)
    result, output = _invoke(["data", "inspect", str(path), "--repair"])
    assert result.exit_code == 0 and "row 3:" in output, output


def test_a_gzip_file_with_no_newline_is_refused(tmp_path):
    import gzip

    path = tmp_path / "one_line.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("1" * (8 * 2**20))
    result, output = _invoke(["data", "inspect", str(path)])
    _assert_one_error(result, output, r"line longer than 1,000,000 characters", path, 1)
    assert len(output) < 1000


def test_out_of_range_rows_in_a_later_chunk_of_a_build(tmp_path):
    """Chunked reading (the build path) names the line in a later chunk the same way."""
    stamps = [str(pd.Timestamp("2024-01-02 10:00") + pd.Timedelta(minutes=i)) for i in range(3000)]
    stamps[2500] = "2300-01-01 00:00:00"
    path = tmp_path / "later.csv"
    path.write_text(HEADER + _rows(stamps))
    cfg = tmp_path / "small_chunks.toml"
    cfg.write_text("[data]\nchunk_rows = 1000\n")
    out = tmp_path / "ds"
    result, output = _invoke(["data", "build", str(path), "-o", str(out), "-c", str(cfg)])
    _assert_one_error(result, output, r"outside the supported range", path, 2502)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("name,args,pattern", [
    ("y1600.csv", [], "outside the supported range"),
    ("unix_overflow.csv", ["--repair"], "repair dropped all"),
    ("y9999.csv", ["--tz", "Mars/Olympus"], "unknown timezone"),
    ("header_only.csv", ["--resample", "0"], "--resample"),
])
def test_the_real_command_prints_one_error_line(tmp_path, name, args, pattern):
    """Through the installed entry point: stderr is one `error:` line, no warning, no traceback."""
    import sys

    path = tmp_path / name
    path.write_text(FILES[name])
    done = subprocess.run([sys.executable, "-m", "trademl.cli", "data", "inspect", str(path), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Warning" not in done.stderr


def test_extra_columns_may_be_missing_but_not_infinite_or_beyond_float32(tmp_path):
    path = tmp_path / "extras.csv"
    path.write_text("timestamp,open,high,low,close,volume,edge\n"
                    + "".join(f"{s},1,1,1,1,1,{v}\n" for s, v in zip(STAMPS, ["0.5", "1e39", "inf", "", "-2"])))
    result, output = _invoke(["data", "inspect", str(path)])
    _assert_one_error(result, output, r"line 3: edge too large \(float32 holds", path, 3)
    bars = load_bars(path, repair=True)
    assert [d.line for d in bars.attrs["repair_report"].dropped] == [3, 4]
    assert bars["edge"].tolist()[0] == 0.5 and np.isnan(bars["edge"].tolist()[1]) and bars["edge"].tolist()[2] == -2


def test_full_disk_in_data_build_on_a_tmpfs_leaves_nothing(tiny_tmpfs):
    _fill(tiny_tmpfs)
    out = tiny_tmpfs / "ds"
    result, output = _invoke(["data", "build", "-o", str(out)])
    _assert_one_error(result, output, r"cannot write the dataset", out)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler"]
