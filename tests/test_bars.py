"""Bars: every real file loads as it is; bad rows are named by line; repair drops exactly them."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trademl.data.bars import (
    bundled_sample_path,
    describe_bars,
    load_bars,
    read_bars_chunks,
    resample_bars,
    summary_rows,
)
from trademl.segments import segment_ids
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError

SHARED = Path(__file__).parents[2] / "shared" / "data"
SLICES = Path(__file__).parent / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is not on this machine")

# file, rows, first bar-open stamp, last bar-open stamp (UTC)
REAL_FILES = [
    ("es_1min_lean.csv", 19_083, "2013-10-06 22:00", "2020-01-06 23:59"),
    ("6e_1min_2024-01.csv.gz", 29_996, "2024-01-01 23:01", "2024-01-31 23:59"),
    ("btcperp_1min_2022-01.csv.gz", 45_031, "2021-12-31 23:01", "2022-02-01 05:31"),
    # NinjaTrader labels bars at their close: 20110103 090100 is the bar that opened at 09:00
    ("spy_1min_2011_ninjatrader.txt", 31_757, "2011-01-03 09:00", "2011-03-31 23:58"),
]
SLICE_FILES = [
    ("es_1min_lean_slice.csv", 101, "2013-10-06 22:00", "2013-12-18 00:46"),
    ("6e_1min_2024-01_slice.csv.gz", 120, "2024-01-01 23:01", "2024-01-02 01:05"),
    ("btcperp_1min_2022-01_slice.csv.gz", 120, "2021-12-31 23:01", "2022-01-01 01:00"),
    ("spy_1min_2011_ninjatrader_slice.txt", 120, "2011-01-03 09:00", "2011-01-03 13:42"),
]


def _check_span(bars, rows, first, last):
    assert len(bars) == rows
    assert bars.index[0] == pd.Timestamp(first, tz="UTC")
    assert bars.index[-1] == pd.Timestamp(last, tz="UTC")
    assert str(bars.index.tz) == "UTC" and bars.index.name == "timestamp"
    assert bars.index.is_monotonic_increasing and bars.index.is_unique
    assert bars.index.dtype == "datetime64[ns, UTC]"  # segments.py counts nanoseconds
    assert all(bars[c].dtype == np.float64 for c in ("open", "high", "low", "close", "volume"))


@needs_shared
@pytest.mark.parametrize("name,rows,first,last", REAL_FILES)
def test_every_shared_file_loads_as_it_is(name, rows, first, last):
    bars = load_bars(SHARED / name)
    _check_span(bars, rows, first, last)
    assert bars.attrs["source"] == str(SHARED / name)


@pytest.mark.parametrize("name,rows,first,last", SLICE_FILES)
def test_bundled_slices_load(name, rows, first, last):
    _check_span(load_bars(SLICES / name), rows, first, last)


def test_ninjatrader_stamp_is_shifted_to_bar_open_and_values_are_kept():
    bars = load_bars(SLICES / "spy_1min_2011_ninjatrader_slice.txt")
    # line 1: 20110103 090100;126.35;126.39;126.35;126.39;1579
    assert bars.index[0] == pd.Timestamp("2011-01-03 09:00", tz="UTC")
    assert bars.iloc[0][["open", "high", "low", "close", "volume"]].tolist() == [126.35, 126.39, 126.35, 126.39, 1579]
    as_open = load_bars(SLICES / "spy_1min_2011_ninjatrader_slice.txt", bar_stamp="open")
    assert (as_open.index - bars.index == pd.Timedelta(minutes=1)).all()


@pytest.mark.parametrize("source", [SLICES / "es_1min_lean_slice.csv", SHARED / "es_1min_lean.csv"])
def test_es_roll_and_multi_week_gaps_are_segment_boundaries(source):
    if not source.exists():
        pytest.skip(f"{source} is not on this machine")
    bars = load_bars(source)
    assert bars["contract"].dtype == "str" and bars["contract"].iloc[0] == "ES201312"
    roll = bars.index.get_loc(pd.Timestamp("2013-12-18 00:00", tz="UTC"))
    assert bars["contract"].iloc[roll - 1] == "ES201312" and bars["contract"].iloc[roll] == "ES201403"
    seg = segment_ids(bars)
    assert seg[roll] == seg[roll - 1] + 1
    # the roll is a boundary on its own, even where no gap would cut there
    no_gap_rule = segment_ids(bars, max_gap_minutes=1e9)
    assert no_gap_rule[roll] == no_gap_rule[roll - 1] + 1
    long_gaps = np.flatnonzero(np.diff(bars.index.asi8) > pd.Timedelta(days=7).value) + 1
    assert len(long_gaps) >= 1 and (seg[long_gaps] == seg[long_gaps - 1] + 1).all()
    if len(bars) == 19_083:  # the full file: five holes of two weeks or more, the last one six years
        assert [str(t.date()) for t in bars.index[long_gaps]] == [
            "2013-10-29", "2013-11-18", "2013-12-02", "2013-12-18", "2020-01-05"]
        info = describe_bars(bars)
        assert info["contracts"] == ["ES201312", "ES201403", "ES202003"]
        assert info["segments"] == 34 and info["median_bar_minutes"] == 1.0 and info["tz"] == "UTC"


def test_bundled_sample_is_the_es_file():
    path = bundled_sample_path()
    assert path.is_file() and (path.parent / "NOTICE").is_file()
    bars = load_bars(path)
    assert len(bars) == 19_083 and bars.attrs["symbol"] == "ES"


# ----------------------------------------------------------------------------- corruption

# slice, separator, has header, fields (ts, open, high, low, close)
CORRUPTIBLE = [
    ("es_1min_lean_slice.csv", ",", True),
    ("6e_1min_2024-01_slice.csv.gz", ",", True),
    ("btcperp_1min_2022-01_slice.csv.gz", ",", True),
    ("spy_1min_2011_ninjatrader_slice.txt", ";", False),
]


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return f.read().splitlines()


def _write_lines(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _corrupt(lines, sep, kind, at):
    """Corrupt 0-based list index ``at``; returns the 1-based line that is now bad."""
    fields = lines[at].split(sep)
    if kind == "duplicate":
        lines[at] = lines[at - 1]
    elif kind == "nan":
        fields[4] = "NaN"
        lines[at] = sep.join(fields)
    elif kind == "swapped_high_low":
        fields[2], fields[3] = fields[3], fields[2]
        if fields[2] == fields[3]:  # a flat bar: make the swap visible
            fields[3] = str(float(fields[3]) + 1)
        lines[at] = sep.join(fields)
    elif kind == "garbage":
        lines.insert(at, "#### not a bar at all ####")
    return at + 1


@pytest.mark.parametrize("name,sep,header", CORRUPTIBLE)
@pytest.mark.parametrize("kind", ["duplicate", "nan", "swapped_high_low", "garbage"])
def test_a_corrupted_copy_is_rejected_naming_the_line(tmp_path, name, sep, header, kind):
    lines = _read_lines(SLICES / name)
    bad_line = _corrupt(lines, sep, kind, at=30)
    path = _write_lines(tmp_path / name, lines)
    with pytest.raises(DataError) as err:
        load_bars(path)
    message = str(err.value)
    assert f"{path}, line {bad_line}:" in message
    assert "no other row has a problem" in message
    repaired = load_bars(path, repair=True)
    report = repaired.attrs["repair_report"]
    assert [d.line for d in report.dropped] == [bad_line]
    assert len(repaired) == len(load_bars(SLICES / name)) - (1 if kind in ("duplicate", "nan", "swapped_high_low") else 0)


@pytest.mark.parametrize("name,sep,header", CORRUPTIBLE)
def test_all_corruptions_at_once_are_counted_and_repair_drops_exactly_them(tmp_path, name, sep, header):
    lines = _read_lines(SLICES / name)
    expected = []
    for kind, at in [("duplicate", 10), ("nan", 20), ("swapped_high_low", 40), ("garbage", 60)]:
        expected.append(_corrupt(lines, sep, kind, at))
    path = _write_lines(tmp_path / name, lines)
    with pytest.raises(DataError, match=rf"line {expected[0]}: duplicated timestamp .*3 other row\(s\)"):
        load_bars(path)
    report = load_bars(path, repair=True).attrs["repair_report"]
    assert [d.line for d in report.dropped] == expected
    assert set(report.reasons()) == {"duplicated timestamp", "close is missing", "high < low", "cannot read timestamp"}
    text = str(report)
    assert "dropped 4" in text and all(f"line {n}:" in text for n in expected)


def _csv(tmp_path, text, name="bars.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "timestamp,open,high,low,close,volume\n"
ROWS = [
    "2024-01-02 14:30:00,100,101,99,100.5,10",
    "2024-01-02 14:31:00,100.5,102,100,101,0",
    "2024-01-02 14:32:00,101,101.5,100.5,101,7",
    "2024-01-02 14:33:00,101,101.25,100.75,101,3",
]


@pytest.mark.parametrize("row,problem", [
    ("2024-01-02 14:31:30,100,99,98,98.5,5", "high < max(open, close)"),
    ("2024-01-02 14:31:30,100,101,100.2,100.5,5", "low > min(open, close)"),
    ("2024-01-02 14:31:30,0,101,0,100.5,5", "non-positive price"),
    ("2024-01-02 14:31:30,100,inf,99,100.5,5", "high is infinite"),
    ("2024-01-02 14:31:30,100,101,99,abc,5", "close is not a number: 'abc'"),
    ("2024-01-02 14:31:30,100,101,99,100.5,-5", "negative volume"),
    ("2024-01-02 14:31:30,100,101,99", "close is missing"),
    ("2024-01-02 14:31:30,100,101,99,100.5,5,7,8", "more fields than the 6"),
    ("2024-01-02 14:31:30" + ",1" * 60, "more fields than the 6"),  # beyond the fast parser's room
    ("2024-01-02 14:20:00,100,101,99,100.5,5", "out of order"),
])
def test_each_kind_of_bad_row_is_named(tmp_path, row, problem):
    path = _csv(tmp_path, GOOD + "\n".join(ROWS[:2] + [row] + ROWS[2:]) + "\n")
    with pytest.raises(DataError, match=r"line 4: " + problem.replace("(", r"\(").replace(")", r"\)")):
        load_bars(path)
    assert len(load_bars(path, repair=True)) == 4


def test_one_mistyped_stamp_costs_one_row_not_every_row_after_it(tmp_path):
    rows = ROWS[:1] + ["2031-01-02 14:31:00,100.5,102,100,101,0"] + ROWS[2:]
    bars = load_bars(_csv(tmp_path, GOOD + "\n".join(rows) + "\n"), repair=True)
    assert len(bars) == 3 and [d.line for d in bars.attrs["repair_report"].dropped] == [3]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    text = GOOD + ROWS[0] + "\n\n" + ROWS[1] + "\ngarbage\n" + ROWS[2] + "\n\n"
    with pytest.raises(DataError, match=r"line 5: cannot read timestamp 'garbage'"):
        load_bars(_csv(tmp_path, text))


def test_zero_volume_is_legal_and_missing_volume_warns(tmp_path):
    assert load_bars(_csv(tmp_path, GOOD + "\n".join(ROWS)))["volume"].iloc[1] == 0.0
    no_volume = "time,open,high,low,close\n" + "\n".join(r.rsplit(",", 1)[0] for r in ROWS)
    with pytest.warns(UserWarning, match="no volume column"):
        bars = load_bars(_csv(tmp_path, no_volume, "novol.csv"))
    assert "volume" not in bars and len(bars) == 4


def test_missing_price_column_and_empty_file_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing required column\(s\) low .*columns found: timestamp, open, high, close"):
        load_bars(_csv(tmp_path, "timestamp,open,high,close\n2024-01-02 14:30:00,1,2,1.5\n"))
    with pytest.raises(DataError, match="empty"):
        load_bars(_csv(tmp_path, "\n\n", "empty.csv"))
    with pytest.raises(DataError, match="file not found"):
        load_bars(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- formats

EXPECTED = pd.DatetimeIndex(["2024-01-02 14:30", "2024-01-02 14:31"], tz="UTC", name="timestamp")


@pytest.mark.parametrize("text", [
    "TimeStamp;Open;High;Low;Close;Vol\n2024-01-02T14:30:00Z;100;101;99;100.5;10\n2024-01-02T14:31:00Z;100.5;102;100;101;0\n",
    "datetime,o,h,l,c,v\n2024-01-02 16:30:00+02:00,100,101,99,100.5,10\n2024-01-02 16:31:00+02:00,100.5,102,100,101,0\n",
    "time,open,high,low,close,volume\n1704205800,100,101,99,100.5,10\n1704205860,100.5,102,100,101,0\n",
    "time,open,high,low,close,volume\n1704205800000,100,101,99,100.5,10\n1704205860000,100.5,102,100,101,0\n",
    "20240102 14:30:00,100,101,99,100.5,10\n20240102 14:31:00,100.5,102,100,101,0\n",
    "<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>\n20240102,143000,100,101,99,100.5,10\n20240102,143100,100.5,102,100,101,0\n",
    "Date\tTime\tOpen\tHigh\tLow\tClose\tVolume\n01/02/2024\t14:30\t100\t101\t99\t100.5\t10\n01/02/2024\t14:31\t100.5\t102\t100\t101\t0\n",
])
def test_common_shapes_give_the_same_bars(tmp_path, text):
    bars = load_bars(_csv(tmp_path, text))
    assert bars.index.equals(EXPECTED)
    assert bars[["open", "high", "low", "close", "volume"]].to_numpy().tolist() == [
        [100, 101, 99, 100.5, 10], [100.5, 102, 100, 101, 0]]


def test_naive_stamps_are_read_in_the_given_zone(tmp_path):
    # 08:30 in Chicago in January (CST, UTC-6) is 14:30 UTC
    text = "timestamp,open,high,low,close,volume\n2024-01-02 08:30:00,100,101,99,100.5,10\n2024-01-02 08:31:00,100.5,102,100,101,0\n"
    assert load_bars(_csv(tmp_path, text), tz="America/Chicago").index.equals(EXPECTED)


def test_parquet_and_gzip_round_trip_with_extra_numeric_columns(tmp_path):
    bars = synthetic_bars(3_000, seed=3, edge_ic=0.1)
    bars.to_parquet(tmp_path / "bars.parquet")
    bars.to_csv(tmp_path / "bars.csv.gz")
    for name in ("bars.parquet", "bars.csv.gz"):
        back = load_bars(tmp_path / name)
        assert back.index.equals(bars.index)
        np.testing.assert_allclose(back[list(bars.columns)].to_numpy(), bars.to_numpy())
    bad = bars.copy()
    bad.iloc[7, bad.columns.get_loc("low")] = bad["high"].iloc[7] + 1
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet, row 8: high < low"):
        load_bars(tmp_path / "bad.parquet")


def test_chunks_equal_the_whole_and_catch_a_duplicate_across_chunks(tmp_path):
    bars = synthetic_bars(2_500, seed=4)
    bars.to_csv(tmp_path / "bars.csv")
    whole = load_bars(tmp_path / "bars.csv")
    parts = list(read_bars_chunks(tmp_path / "bars.csv", 700))
    assert [len(p) for p in parts] == [700, 700, 700, 400]
    pd.testing.assert_frame_equal(pd.concat(parts), whole, check_freq=False)
    lines = (tmp_path / "bars.csv").read_text().splitlines()
    lines.insert(701, lines[700])  # line 702 (first of chunk 2) repeats line 701 (last of chunk 1)
    (tmp_path / "dup.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 702: duplicated timestamp .*first at line 701"):
        list(read_bars_chunks(tmp_path / "dup.csv", 700))
    repaired = list(read_bars_chunks(tmp_path / "dup.csv", 700, repair=True))
    assert sum(len(p) for p in repaired) == 2_500
    assert [d.line for p in repaired for d in p.attrs["repair_report"].dropped] == [702]


# ----------------------------------------------------------------------------- resample


def _minute_bars(minutes, contract=None):
    idx = pd.DatetimeIndex(pd.Timestamp("2024-01-02 14:30", tz="UTC") + pd.to_timedelta(minutes, "min"), name="timestamp")
    n = len(minutes)
    close = 100 + np.arange(n, dtype=float)
    frame = pd.DataFrame({"open": close - 0.5, "high": close + 1 + (np.arange(n) % 3), "low": close - 1 - (np.arange(n) % 2),
                          "close": close, "volume": np.arange(1, n + 1, dtype=float)}, index=idx)
    if contract is not None:
        frame["contract"] = pd.array(contract, dtype="str")
    return frame


def test_five_minute_bars_equal_hand_computed_ohlcv():
    bars = _minute_bars(list(range(10)))  # 14:30 .. 14:39
    five = resample_bars(bars, 5)
    assert five.index.tolist() == [pd.Timestamp("2024-01-02 14:30", tz="UTC"), pd.Timestamp("2024-01-02 14:35", tz="UTC")]
    first = bars.iloc[:5]
    assert five.iloc[0].tolist() == [first["open"].iloc[0], first["high"].max(), first["low"].min(),
                                     first["close"].iloc[-1], first["volume"].sum()]
    second = bars.iloc[5:]
    assert five.iloc[1].tolist() == [104.5, second["high"].max(), second["low"].min(), 109.0, 6.0 + 7 + 8 + 9 + 10]
    assert five.attrs["bar_minutes"] == 5


def test_no_resampled_bar_spans_a_gap_or_a_roll():
    # 14:30-14:32, then a 20-minute hole, then 14:53-14:57: buckets 14:50 and 14:55 only
    bars = _minute_bars([0, 1, 2, 23, 24, 25, 26, 27])
    five = resample_bars(bars, 5)
    assert [t.strftime("%H:%M") for t in five.index] == ["14:30", "14:50", "14:55"]
    assert five["volume"].tolist() == [6.0, 9.0, 21.0]
    # a roll in the middle of a bucket splits it, even with no time gap
    rolled = _minute_bars(list(range(5)), contract=["ESZ3"] * 2 + ["ESH4"] * 3)
    split = resample_bars(rolled, 5)
    assert len(split) == 2 and split["contract"].tolist() == ["ESZ3", "ESH4"]
    assert split["volume"].tolist() == [3.0, 12.0]
    # the part after the roll is labelled at its own first bar: labels stay unique and increasing
    assert [t.strftime("%H:%M") for t in split.index] == ["14:30", "14:32"]
    # an 18-minute gap inside one hourly bucket: two bars, the second labelled at its first minute
    hourly = resample_bars(_minute_bars([0, 1, 2, 20, 21]), 60)
    assert [t.strftime("%H:%M") for t in hourly.index] == ["14:00", "14:50"]
    assert hourly["volume"].tolist() == [6.0, 9.0]
    with pytest.raises(DataError, match="not a multiple"):
        resample_bars(resample_bars(bars, 2), 5)


def test_real_es_resample_keeps_every_bar_inside_one_segment():
    bars = load_bars(SLICES / "es_1min_lean_slice.csv")
    five = resample_bars(bars, 5)
    seg = segment_ids(bars)
    buckets = set(zip(seg.tolist(), bars.index.floor("5min")))
    assert len(five) == len(buckets)  # one 5-minute bar per (segment, bucket): none merged across
    assert five["volume"].sum() == bars["volume"].sum()
    assert five.loc[pd.Timestamp("2013-12-18 00:00", tz="UTC"), "contract"] == "ES201403"


def test_symbol_comes_from_the_contract_column_or_the_argument(tmp_path):
    lines = _read_lines(SLICES / "es_1min_lean_slice.csv")
    path = _write_lines(tmp_path / "anything.csv", lines)
    assert load_bars(path).attrs["symbol"] == "ES"  # ES201312: root + yyyymm
    assert load_bars(path, symbol="MES").attrs["symbol"] == "MES"


def test_cli_inspect_shows_the_summary_and_what_repair_dropped(tmp_path):
    from typer.testing import CliRunner

    from trademl.cli import app

    lines = _read_lines(SLICES / "es_1min_lean_slice.csv")
    bad_line = _corrupt(lines, ",", "swapped_high_low", at=30)
    path = _write_lines(tmp_path / "es.csv", lines)
    runner = CliRunner()
    wide = {"COLUMNS": "200"}  # one table row per line
    failed = runner.invoke(app, ["data", "inspect", str(path)], env=wide)
    assert failed.exit_code == 2 and f"line {bad_line}: high < low" in failed.output
    assert failed.output.startswith("error: ") and len(failed.output.strip().splitlines()) <= 2
    repaired = runner.invoke(app, ["data", "inspect", str(path), "--repair", "--resample", "5"], env=wide)
    assert repaired.exit_code == 0, repaired.output
    assert "ES201312, ES201403" in repaired.output and "5 min" in repaired.output
    assert f"line {bad_line}: high < low" in repaired.output
    # The printed table is describe_bars of the repaired, resampled bars, row for row ...
    bars = load_bars(path, repair=True)
    report = bars.attrs["repair_report"]
    five = resample_bars(bars, 5)
    printed = [[c.strip() for c in line.strip().strip("│").split("│")] for line in repaired.output.splitlines()
               if line.strip().startswith("│")]
    assert printed == [[label, text] for label, text in summary_rows(describe_bars(five))]
    assert dict(printed)["bars"] == f"{len(five):,}" and len(five) < len(bars)
    # ... followed by what repair dropped: exactly the corrupted line, out of every data line read.
    assert [d.line for d in report.dropped] == [bad_line] and report.rows_read == len(lines) - 1
    assert repaired.output.rstrip().endswith(str(report))


def test_a_newest_first_file_is_rejected_with_a_sorting_hint(tmp_path):
    path = _csv(tmp_path, GOOD + "\n".join(reversed(ROWS)) + "\n")
    with pytest.raises(DataError, match=r"line 2: out of order.*2 other row.*newest-first"):
        load_bars(path)


def test_a_repaired_frame_still_saves_to_parquet_with_its_report(tmp_path):
    lines = _read_lines(SLICES / "es_1min_lean_slice.csv")
    bad_line = _corrupt(lines, ",", "nan", at=12)
    bars = load_bars(_write_lines(tmp_path / "es.csv", lines), repair=True)
    bars.to_parquet(tmp_path / "repaired.parquet")  # pandas writes attrs as JSON
    back = pd.read_parquet(tmp_path / "repaired.parquet")
    assert back.attrs["repair_report"]["dropped"][0][0] == bad_line
    assert load_bars(tmp_path / "repaired.parquet").index.equals(bars.index)


def test_resampled_bar_ignores_every_later_minute():
    """No look-ahead: changing every minute after a bucket's end leaves that bucket as it was."""
    bars = synthetic_bars(600, seed=5)
    five = resample_bars(bars, 5)
    cut = pd.Timestamp(five.index[40]) + pd.Timedelta(minutes=5)  # close of the 41st bucket
    changed = bars.copy()
    later = changed.index >= cut
    changed.loc[later, ["open", "high", "low", "close"]] *= 1.5
    changed.loc[later, "volume"] += 1000
    pd.testing.assert_frame_equal(resample_bars(changed, 5).iloc[:41], five.iloc[:41])


@pytest.mark.parametrize("name,sep,header", CORRUPTIBLE)
def test_garbage_above_the_first_bar_is_named_not_mistaken_for_the_layout(tmp_path, name, sep, header):
    lines = _read_lines(SLICES / name)
    lines.insert(0, "exported by some tool, v1")
    path = _write_lines(tmp_path / name, lines)
    with pytest.raises(DataError, match=rf"{name}, line 1: does not look like a header or a bar"):
        load_bars(path)
    repaired = load_bars(path, repair=True)
    assert [d.line for d in repaired.attrs["repair_report"].dropped] == [1]
    pd.testing.assert_frame_equal(repaired, load_bars(SLICES / name), check_freq=False)


def test_a_separator_at_the_end_of_every_data_line_is_harmless(tmp_path):
    text = GOOD + "\n".join(r + "," for r in ROWS) + "\n"
    assert len(load_bars(_csv(tmp_path, text))) == 4


def test_a_very_long_line_in_a_later_chunk_is_reported_once(tmp_path):
    # the fast parser gives up on a line with far too many fields; the fallback parser must
    # not hand out again the chunks that were already read
    bars = synthetic_bars(1_000, seed=6)
    bars.to_csv(tmp_path / "bars.csv")
    lines = (tmp_path / "bars.csv").read_text().splitlines()
    lines[800] += ",1" * 60  # line 801, in the third chunk of 300
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    parts = list(read_bars_chunks(tmp_path / "long.csv", 300, repair=True))
    assert sum(len(p) for p in parts) == 999
    assert [d.line for p in parts for d in p.attrs["repair_report"].dropped] == [801]
    with pytest.raises(DataError, match=r"line 801: more fields than the 7"):
        list(read_bars_chunks(tmp_path / "long.csv", 300))


def test_a_local_time_skipped_by_daylight_saving_is_named(tmp_path):
    # 2024-03-10 02:30 does not exist in New York: clocks jump from 02:00 to 03:00
    text = ("timestamp,open,high,low,close,volume\n2024-03-10 01:59:00,1,2,0.5,1.5,1\n"
            "2024-03-10 02:30:00,1,2,0.5,1.5,1\n2024-03-10 03:00:00,1,2,0.5,1.5,1\n")
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=r"line 3: cannot read timestamp '2024-03-10 02:30:00' \(or it is not a valid local time in America/New_York\)"):
        load_bars(path, tz="America/New_York")
    bars = load_bars(path, tz="America/New_York", repair=True)
    assert bars.index.tolist() == [pd.Timestamp("2024-03-10 06:59", tz="UTC"), pd.Timestamp("2024-03-10 07:00", tz="UTC")]
