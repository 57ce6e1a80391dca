"""Time zones (issue 14): --tz / [data] timezone / a request's `timezone` read naive stamps in one
way (``trademl.data.bars``), across both DST transitions; naive stamps with no zone warn once."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.cli import app
from trademl.data.bars import NaiveStampWarning, load_bars
from trademl.data.dataset import load_dataset

NY = "America/New_York"
# Two 16-hour stretches of 24-hour trading (crypto-like) around the 2024 transitions in New York:
# spring, 2024-03-10 02:00 EST -> 03:00 EDT (local 02:xx never happens); autumn, 2024-11-03
# 02:00 EDT -> 01:00 EST (local 01:00..01:59 happens twice).
SPANS = [("2024-03-09 20:00", "2024-03-10 12:00"), ("2024-11-02 20:00", "2024-11-03 12:00")]


def _bars_utc(seed: int = 0) -> pd.DataFrame:
    first, second = (pd.date_range(a, b, freq="min", tz="UTC", inclusive="left") for a, b in SPANS)
    index = first.append(second).as_unit("ns").rename("timestamp")
    rng = np.random.default_rng(seed)
    close = 5000 + 0.25 * np.round(np.cumsum(rng.normal(0, 2, len(index))))
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + 0.25, "low": np.minimum(open_, close) - 0.25,
                         "close": close, "volume": rng.integers(1, 500, len(index)).astype(float)}, index=index)


def _write(bars: pd.DataFrame, path: Path, stamps) -> Path:
    out = bars.reset_index(drop=True)
    out.insert(0, "timestamp", stamps)
    out.to_csv(path, index=False)
    return path


def _naive_local(bars: pd.DataFrame) -> list[str]:
    return list(bars.index.tz_convert(NY).strftime("%Y-%m-%d %H:%M:%S"))


def _with_offsets(bars: pd.DataFrame) -> list[str]:
    return [t.isoformat() for t in bars.index.tz_convert(NY)]


def test_the_local_file_has_both_transitions():
    local = _naive_local(_bars_utc())
    assert not any(s.startswith("2024-03-10 02:") for s in local)  # the spring gap
    assert sum(s == "2024-11-03 01:30:00" for s in local) == 2  # the autumn hour, twice


def test_naive_eastern_with_tz_builds_the_same_dataset_as_explicit_offsets(tmp_path):
    bars = _bars_utc()
    naive = _write(bars, tmp_path / "es_local.csv", _naive_local(bars))
    offsets = _write(bars, tmp_path / "es_offsets.csv", _with_offsets(bars))
    runner = CliRunner()
    a = runner.invoke(app, ["data", "build", str(naive), "-o", str(tmp_path / "a"), "--tz", NY])
    b = runner.invoke(app, ["data", "build", str(offsets), "-o", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    da, db = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    pd.testing.assert_frame_equal(da.frame, db.frame)
    assert da.frame.index.equals(bars.index)  # every bar at its true instant, one minute apart in each span
    assert da.manifest["span"] == db.manifest["span"] and da.manifest["segments"] == 2
    # read in chunks of 50 rows, a chunk boundary falls inside the repeated hour: told by order still
    chunked = tmp_path / "chunks.toml"
    chunked.write_text(f'[data]\nchunk_rows = 50\ntimezone = "{NY}"\n')
    first = _naive_local(bars).index("2024-11-03 01:30:00")
    assert first // 50 != (first + 60) // 50  # the two copies of 01:30 are in different chunks
    d = runner.invoke(app, ["data", "build", str(naive), "-o", str(tmp_path / "d"), "-c", str(chunked)])
    assert d.exit_code == 0, d.output
    assert load_dataset(tmp_path / "d").frame.index.equals(bars.index)
    # [data] timezone in the config file does the same as --tz
    toml = tmp_path / "ny.toml"
    toml.write_text(f'[data]\ntimezone = "{NY}"\n')
    c = runner.invoke(app, ["data", "build", str(naive), "-o", str(tmp_path / "c"), "-c", str(toml)])
    assert c.exit_code == 0, c.output
    pd.testing.assert_frame_equal(load_dataset(tmp_path / "c").frame, db.frame)


def test_a_decision_log_with_naive_local_stamps_is_read_in_the_same_zone(tmp_path):
    bars = _bars_utc()
    naive = _write(bars, tmp_path / "es_local.csv", _naive_local(bars))
    at = bars.index[[100, 1200]] + pd.Timedelta(seconds=90)  # 30 s after the close of bars 100 and 1200
    logs = {}
    for name, stamps in (("local", at.tz_convert(NY).strftime("%Y-%m-%d %H:%M:%S")), ("offsets", at.map(str))):
        logs[name] = tmp_path / f"{name}.csv"
        logs[name].write_text("timestamp,symbol,side\n" + "".join(f"{s},ES,buy\n" for s in stamps))
    runner = CliRunner()
    for name, log in logs.items():
        done = runner.invoke(app, ["data", "build", str(naive), "-o", str(tmp_path / name), "--tz", NY,
                                   "--decisions", str(log)])
        assert done.exit_code == 0, done.output
    local, offsets = (load_dataset(tmp_path / n).decisions for n in ("local", "offsets"))
    assert local["bar_index"].tolist() == offsets["bar_index"].tolist() == [100, 1200]


def test_a_local_time_in_the_spring_gap_is_an_error_naming_its_line(tmp_path):
    bars = _bars_utc()
    local = _naive_local(bars)
    i = local.index("2024-03-10 03:30:00")
    local[i] = "2024-03-10 02:30:00"  # this local time does not exist in New York
    path = _write(bars, tmp_path / "es_gap.csv", local)
    done = CliRunner().invoke(app, ["data", "build", str(path), "-o", str(tmp_path / "ds"), "--tz", NY])
    assert done.exit_code == 2 and "Traceback" not in done.output
    text = done.output.replace("\n", "")
    assert f"line {i + 2}" in text and "not a valid local time in America/New_York" in text


def test_the_repeated_autumn_hour_is_told_by_order(tmp_path):
    """The first 01:xx run is daylight time (EDT), the run after the clock went back is EST; a lone
    copy (no earlier stamp of that hour reached it) is read as the first, daylight, one."""
    both = ["2024-11-03 01:58:00", "2024-11-03 01:59:00", "2024-11-03 01:00:00", "2024-11-03 01:01:00"]
    lone = ["2024-11-03 00:59:00", "2024-11-03 01:30:00"]
    for stamps, want in ((both, ["05:58", "05:59", "06:00", "06:01"]), (lone, ["04:59", "05:30"])):
        frame = pd.DataFrame({"timestamp": stamps, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0})
        path = tmp_path / "es_autumn.csv"
        frame.to_csv(path, index=False)
        got = load_bars(path, tz=NY, symbol="ES").index.strftime("%H:%M")
        assert list(got) == want


def test_naive_stamps_without_a_zone_warn_once_and_only_then(tmp_path):
    bars = _bars_utc()
    paths = [_write(bars.iloc[:400], tmp_path / "es_a.csv", list(bars.index[:400].strftime("%Y-%m-%d %H:%M:%S"))),
             _write(bars.iloc[400:], tmp_path / "es_b.csv", list(bars.index[400:].strftime("%Y-%m-%d %H:%M:%S")))]
    offsets = _write(bars, tmp_path / "es_offsets.csv", _with_offsets(bars))
    unix = _write(bars, tmp_path / "es_unix.csv", list(bars.index.as_unit("s").asi8))

    def naive_warnings(**kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_bars(kw.pop("path"), **kw)
        return [w for w in caught if issubclass(w.category, NaiveStampWarning)]

    (one,) = naive_warnings(path=paths)  # two naive files: one warning
    assert "read as UTC" in str(one.message) and "--tz" in str(one.message)
    local = _write(bars, tmp_path / "es_local.csv", _naive_local(bars))
    assert naive_warnings(path=paths, tz="UTC") == [] and naive_warnings(path=local, tz=NY) == []
    assert naive_warnings(path=offsets) == [] and naive_warnings(path=unix) == []


def test_a_stamp_column_named_utc_is_read_as_utc_whatever_zone_is_set():
    """[data] timezone set for a user's local files must not move the bundled file (timestamp_utc)."""
    from trademl.data.bars import bundled_sample_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_ny = load_bars(bundled_sample_path(), tz=NY)
    assert in_ny.index.equals(load_bars(bundled_sample_path()).index)
    assert not [w for w in caught if issubclass(w.category, NaiveStampWarning)]


def test_every_command_that_reads_stamps_takes_tz(tmp_path):
    bars = _bars_utc()
    path = _write(bars, tmp_path / "es_local.csv", _naive_local(bars))
    signals = tmp_path / "signals.csv"
    signals.write_text("timestamp,action,confidence\n")
    for argv in (["data", "build", str(path)], ["data", "inspect", str(path)], ["train", "lgbm", str(path)],
                 ["train", "all", str(path)], ["train", "ppo", str(path)], ["backtest-signals", str(path), str(signals)],
                 ["monitor", "--bars", str(path)]):
        done = CliRunner().invoke(app, [*argv, "--tz", "Mars/Olympus"])
        assert done.exit_code == 2 and "unknown timezone 'Mars/Olympus'" in done.output, (argv, done.output)


def test_the_predictors_raw_bars_take_a_timezone():
    from trademl.predict.request import RequestError, parse_request

    bars = _bars_utc().iloc[-120:]  # the autumn morning, the repeated hour included
    rows = [{"open": r.open, "high": r.high, "low": r.low, "close": r.close, "volume": r.volume}
            for r in bars.itertuples()]
    as_local = parse_request({"timezone": NY, "bars": [{"timestamp": s, **r} for s, r in zip(_naive_local(bars), rows)]})
    as_offsets = parse_request({"bars": [{"timestamp": s, **r} for s, r in zip(_with_offsets(bars), rows)]})
    assert [b.timestamp for b in as_local.bars] == [b.timestamp for b in as_offsets.bars]
    assert not as_local._naive_as_utc and not as_offsets._naive_as_utc
    naive = parse_request({"bars": [{"timestamp": s, **r} for s, r in zip(bars.index.strftime("%Y-%m-%dT%H:%M:%S"), rows)]})
    assert naive._naive_as_utc and naive.bars[0].timestamp == bars.index[0].to_pydatetime()
    with pytest.raises(RequestError) as bad:
        parse_request({"timezone": "Mars/Olympus", "bars": [{"timestamp": "2024-01-02T10:00:00", **rows[0]}]})
    assert "timezone" in bad.value.field and "unknown timezone" in bad.value.message
    with pytest.raises(RequestError, match="not a valid local time"):
        parse_request({"timezone": NY, "bars": [{"timestamp": "2024-03-10T02:30:00", **rows[0]}]})


def test_naive_request_bars_warn_in_the_answer():
    from trademl.config import load_config
    from trademl.predict.request import parse_request, request_inputs

    stamps = pd.date_range("2024-01-02 14:30", periods=30, freq="min")
    bars = [{"timestamp": t.isoformat(), "open": 5000.0, "high": 5000.5, "low": 4999.5, "close": 5000.25,
             "volume": 10.0} for t in stamps]
    given = request_inputs(parse_request({"symbol": "ES", "bars": bars}), ["close"], load_config(None))
    assert any("read as UTC" in w for w in given.warnings)
    given = request_inputs(parse_request({"symbol": "ES", "bars": bars, "timezone": "UTC"}), ["close"],
                           load_config(None))
    assert not any("read as UTC" in w for w in given.warnings)
    assert json.dumps(given.timestamp)
