"""Decision log: clear errors by line and field; the join never uses a bar that closes later."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trademl.data.bars import load_bars
from trademl.data.decisions import join_decisions, load_decisions
from trademl.data.labels import make_labels
from trademl.segments import segment_ids
from trademl.errors import DataError
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel

SLICES = Path(__file__).parent / "data"
T0 = pd.Timestamp("2024-01-02 14:30", tz="UTC")


def _bars(n=10, gap_after=None, symbol="NQ"):
    minutes = np.arange(n, dtype=float)
    if gap_after is not None:
        minutes[gap_after + 1:] += 60  # a one-hour hole
    idx = pd.DatetimeIndex(T0 + pd.to_timedelta(minutes, "min"), name="timestamp")
    close = 100 + np.arange(n, dtype=float)
    bars = pd.DataFrame({"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0}, index=idx)
    bars.attrs["symbol"] = symbol
    return bars


def _labels(bars):
    """win_long at bar i is i % 2, win_short the opposite; NaN at the last bar (no window)."""
    n = len(bars)
    long_ = (np.arange(n) % 2).astype(float)
    long_[-1] = np.nan
    return pd.DataFrame({"win_long_5": long_, "win_short_5": 1 - long_,
                         "win_long_30": long_, "win_short_30": 1 - long_}, index=bars.index)


def _decisions(stamps, sides=None, pnl=None, symbol="NQZ5"):
    n = len(stamps)
    return pd.DataFrame({
        "timestamp": pd.DatetimeIndex(stamps).tz_convert("UTC"),
        "symbol": [symbol] * n, "side": np.asarray(sides or [1] * n, dtype=np.int8),
        "price": np.nan, "pnl": np.asarray(pnl if pnl is not None else [np.nan] * n, dtype=float),
        "quantity": np.nan, "line": np.arange(2, n + 2),
    })


def _join(decisions, bars, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return join_decisions(decisions, bars, segment_ids(bars), _labels(bars), **kw)


# ----------------------------------------------------------------------------- loading


def test_csv_log_loads_any_case_sides_optional_fields_sorted_by_time(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "Timestamp,Symbol,Side,Price,PnL,Qty\n"
        "2024-01-02T14:35:00Z,NQZ5,BUY,16000.25,125.5,1\n"
        "2024-01-02 14:31:00,NQZ5,short,,,\n"
        "\n"
        "2024-01-02T15:33:00+01:00,NQZ5,Long,,-10,2\n")
    d = load_decisions(path)
    assert d["timestamp"].tolist() == [T0 + pd.Timedelta(minutes=m) for m in (1, 3, 5)]
    assert d["side"].tolist() == [-1, 1, 1] and d["side"].dtype == np.int8
    assert d["line"].tolist() == [3, 5, 2]
    assert np.isnan(d["pnl"].iloc[0]) and d["pnl"].iloc[1] == -10 and d["price"].iloc[2] == 16000.25
    assert d["quantity"].tolist()[1:] == [2.0, 1.0]


def test_jsonl_log_loads_like_csv(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"timestamp": "2024-01-02T14:35:00Z", "symbol": "NQZ5", "side": "sell", "pnl": 12.5},
            {"timestamp": 1704205860, "symbol": "NQZ5", "side": "buy"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = load_decisions(path)
    assert d["timestamp"].tolist() == [T0 + pd.Timedelta(minutes=1), T0 + pd.Timedelta(minutes=5)]
    assert d["side"].tolist() == [1, -1] and d["pnl"].iloc[1] == 12.5 and d["line"].tolist() == [2, 1]


@pytest.mark.parametrize("row,field,problem", [
    ("2024-01-02T14:35:00Z,NQZ5,hold,,", "side", "'hold' is not a side"),
    ("yesterday,NQZ5,buy,,", "timestamp", "cannot read timestamp 'yesterday'"),
    ("2024-01-02T14:35:00Z,,buy,,", "symbol", "missing"),
    ("2024-01-02T14:35:00Z,NQZ5,buy,-3,", "price", "must be > 0"),
    ("2024-01-02T14:35:00Z,NQZ5,buy,,lots", "pnl", "'lots' is not a finite number"),
])
def test_a_bad_value_names_line_and_field(tmp_path, row, field, problem):
    path = tmp_path / "log.csv"
    path.write_text("timestamp,symbol,side,price,pnl\n2024-01-02T14:31:00Z,NQZ5,buy,,\n" + row + "\n")
    with pytest.raises(DataError, match=rf"log.csv, line 3, field '{field}': {problem}"):
        load_decisions(path)


def test_missing_field_bad_json_and_other_bad_rows_are_reported(tmp_path):
    (tmp_path / "a.csv").write_text("timestamp,side\n2024-01-02T14:31:00Z,buy\n")
    with pytest.raises(DataError, match="missing field.* symbol"):
        load_decisions(tmp_path / "a.csv")
    (tmp_path / "b.jsonl").write_text('{"timestamp": "2024-01-02T14:31:00Z", "symbol": "NQ", "side": "buy"}\n{oops\n')
    with pytest.raises(DataError, match="b.jsonl, line 2: not valid JSON"):
        load_decisions(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("timestamp,symbol,side\nx,NQ,buy\n2024-01-02T14:31:00Z,NQ,flat\n2024-01-02T14:32:00Z,NQ,up\n")
    with pytest.raises(DataError, match=r"line 2, field 'timestamp'.*2 other row\(s\) also have problems \(lines 3, 4\)"):
        load_decisions(tmp_path / "c.csv")


# ----------------------------------------------------------------------------- the join


def test_join_uses_the_last_bar_closed_at_or_before_never_a_later_one():
    bars = _bars(10)  # bar k opens at 14:30 + k min and closes one minute later
    close_of_3 = T0 + pd.Timedelta(minutes=4)
    stamps = [close_of_3 - pd.Timedelta(microseconds=1),  # bar 3 still open: bar 2 is the last closed
              close_of_3,                                # exactly at bar 3's close: bar 3
              close_of_3 + pd.Timedelta(seconds=1)]      # just after: still bar 3 (bar 4 not closed)
    joined = _join(_decisions(stamps), bars)
    assert joined["bar_index"].tolist() == [2, 3, 3]
    assert (joined["bar_close"] <= joined["timestamp"]).all()


def test_join_never_looks_ahead_at_random_times():
    bars = _bars(200, gap_after=120)
    rng = np.random.default_rng(0)
    span_ns = (bars.index[-1] - bars.index[0]).value + 60_000_000_000
    stamps = bars.index[0] + pd.to_timedelta(rng.integers(0, span_ns, 500), "ns")
    joined = _join(_decisions(stamps), bars, max_stale_minutes=1e9)
    closes = bars.index + pd.Timedelta(minutes=1)
    k = joined["bar_index"].to_numpy()
    assert (closes[k] <= joined["timestamp"].to_numpy()).all()  # that bar had closed
    nxt = np.minimum(k + 1, len(bars) - 1)
    later = k + 1 < len(bars)
    assert (closes[nxt][later] > joined["timestamp"].to_numpy()[later]).all()  # the next had not
    assert len(joined) + len(joined.attrs["join_report"].unmatched) == 500


def test_outcome_label_wins_over_bar_label_and_bar_label_follows_the_side():
    bars = _bars(10)
    at = [T0 + pd.Timedelta(minutes=m) for m in (3, 3, 4, 4, 10)]  # closes of bars 2, 2, 3, 3, 9
    d = _decisions(at, sides=[1, -1, 1, -1, 1], pnl=[np.nan, np.nan, np.nan, 50.0, np.nan])
    j = _join(d, bars)
    assert j["bar_index"].tolist() == [2, 2, 3, 3, 9]
    # bar 2: long loses (2 % 2 = 0), short wins; bar 3: long wins; a pnl of +50 overrides the short's 0
    assert j["win_5"].tolist()[:4] == [0.0, 1.0, 1.0, 0.0]
    assert j["win"].tolist()[:4] == [0.0, 1.0, 1.0, 1.0]
    assert j["label_source"].tolist() == ["bars", "bars", "bars", "outcome", "none"]
    assert np.isnan(j["win"].iloc[4])  # bar 9's window runs past the data: no label, not a guess


def test_decisions_that_cannot_be_joined_are_reported_not_dropped_silently():
    bars = _bars(20, gap_after=9)  # bars 0-9 at 14:30-14:39, then 15:40-15:49
    at = [T0 - pd.Timedelta(minutes=5),        # before any bar closed
          T0 + pd.Timedelta(minutes=5),        # fine
          T0 + pd.Timedelta(minutes=45),       # 35 minutes into the hole
          T0 + pd.Timedelta(hours=3)]          # long after the last bar
    d = pd.concat([_decisions(at), _decisions([T0 + pd.Timedelta(minutes=6)], symbol="ESZ5")], ignore_index=True)
    with pytest.warns(UserWarning, match="4 left out"):
        j = join_decisions(d, bars, segment_ids(bars), _labels(bars))
    assert j["bar_index"].tolist() == [4]
    report = j.attrs["join_report"]
    reasons = [r for _, _, r in report.unmatched]
    assert reasons[0].startswith("no bar had closed yet")
    assert reasons[1].startswith("in a gap") and reasons[2].startswith("after the bars end")
    assert reasons[3] == "symbol ESZ5 is not the bars' NQ"
    assert "joined 1 decision(s)" in str(report) and "4 left out" in str(report)


def test_join_with_real_labels_and_real_es_bars(tmp_path):
    bars = load_bars(SLICES / "es_1min_lean_slice.csv")
    seg = segment_ids(bars)
    labels = make_labels(bars, seg, ExecutionModel(contract_spec("ES"), 2.25, 1.0, 5), horizons=(5, 30))
    path = tmp_path / "log.csv"
    path.write_text("timestamp,symbol,side,pnl\n"
                    "2013-10-06T22:10:00Z,ESZ3,buy,\n"
                    "2013-10-06T22:10:00Z,ESZ3,sell,\n"
                    "2013-12-03T23:58:30Z,ESZ3,buy,\n"      # 2 bars before the roll: no 5-bar label
                    "2013-12-18T00:20:00Z,ESH4,sell,-37.5\n")
    j = join_decisions(load_decisions(path), bars, seg, labels)
    assert [str(t) for t in j["bar_open"]] == ["2013-10-06 22:09:00+00:00", "2013-10-06 22:09:00+00:00",
                                               "2013-12-03 23:57:00+00:00", "2013-12-18 00:19:00+00:00"]
    k = j["bar_index"].to_numpy()
    assert j["win_5"].iloc[0] == labels["win_long_5"].iloc[k[0]]
    assert j["win_5"].iloc[1] == labels["win_short_5"].iloc[k[1]]
    assert j["label_source"].tolist() == ["bars", "bars", "none", "outcome"]  # no label spans the roll
    assert j["win"].iloc[3] == 0.0 and j["segment"].iloc[3] == seg[-1]


def test_mismatched_lengths_are_an_error():
    bars = _bars(5)
    with pytest.raises(DataError, match="one row per bar"):
        join_decisions(_decisions([T0]), bars, segment_ids(bars)[:-1], _labels(bars))


def test_a_joined_frame_saves_to_parquet_with_its_report(tmp_path):
    bars = _bars(10)
    j = _join(_decisions([T0 + pd.Timedelta(minutes=3), T0 - pd.Timedelta(hours=1)]), bars)
    j.to_parquet(tmp_path / "joined.parquet")  # pandas writes attrs as JSON
    back = pd.read_parquet(tmp_path / "joined.parquet")
    assert back.attrs["join_report"]["joined"] == 1 and len(back.attrs["join_report"]["unmatched"]) == 1
