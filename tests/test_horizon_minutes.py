"""[data] horizons in minutes (issue 14): "15min" on 3-minute bars is 5 bars, the labels keep their
names in bars, the manifest records what each horizon covers, a horizon the bars cannot divide is
a clear error, and horizons in bars on bars longer than a minute say what they cover."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.config import load_config
from trademl.data.bars import resample_bars
from trademl.data.dataset import build_dataset, dataset_from_bars
from trademl.data.labels import label_columns
from trademl.data.synthetic import synthetic_bars
from trademl.errors import DataError, TradeMLError


@pytest.fixture(scope="module")
def three_minute_bars() -> pd.DataFrame:
    """Generated 3-minute ES bars, with nothing in attrs that says so: the length is read off the stamps."""
    bars = resample_bars(synthetic_bars(3000, seed=3, symbol="ES"), 3)
    bars.attrs = {"symbol": "ES"}
    return bars


def _config(horizons):
    return load_config(None, {"data": {"horizons": horizons}})


def test_horizons_in_minutes_give_the_labels_of_the_same_bars(three_minute_bars):
    with pytest.warns(UserWarning, match="horizon 5 bars = 15 minutes on 3-minute bars"):
        in_bars = dataset_from_bars(three_minute_bars, _config([5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given in minutes, nothing needs saying
        in_minutes = dataset_from_bars(three_minute_bars, _config(["15min"]))
    columns = label_columns([5])
    assert columns == ["win_long_5", "win_short_5", "signal_5", "movement_5", "risk_5", "pnl_long_5"]
    pd.testing.assert_frame_equal(in_minutes.frame[columns], in_bars.frame[columns])
    assert in_minutes.frame[columns].notna().any().all()  # real labels, not two empty frames
    m = in_minutes.manifest
    assert m["horizons"] == [5] and m["horizons_given"] == ["15min"] and m["label_columns"] == columns
    assert m["bar_minutes"] == 3 and m["horizon_minutes"] == {"5": 15}
    assert in_bars.manifest["horizon_minutes"] == {"5": 15} and "horizons_given" not in in_bars.manifest


def test_a_horizon_the_bars_cannot_divide_is_a_clear_error(three_minute_bars):
    with pytest.raises(DataError, match=r'horizon "10min" is not a whole number of 3-minute bars') as caught:
        dataset_from_bars(three_minute_bars, _config(["10min"]))
    assert "[data] horizons" in str(caught.value) and "multiple of 3 minutes" in str(caught.value)
    with pytest.raises(DataError, match="two horizons are both 5 bars"):
        dataset_from_bars(three_minute_bars, _config([5, "15min"]))


@pytest.mark.parametrize("bad", [0, -5, "10m", "min", "0min", 2.5, True])
def test_a_horizon_that_is_neither_bars_nor_minutes_is_refused_by_the_config(bad):
    with pytest.raises(TradeMLError, match="data.horizons.*neither a number of bars"):
        _config([bad])


def test_the_config_reads_bars_and_minutes():
    assert _config([5, "30", " 90 MIN", 12.0]).data.horizons == [5, 30, "90min", 12]


def test_one_minute_bars_with_horizons_in_bars_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = dataset_from_bars(synthetic_bars(600, seed=1, symbol="ES"), _config([5, "30min"]))
    assert ds.manifest["horizons"] == [5, 30] and ds.manifest["horizon_minutes"] == {"5": 5, "30": 30}


def test_data_build_and_inspect_say_what_each_horizon_covers(three_minute_bars, tmp_path):
    from trademl.cli import app

    path = tmp_path / "es_3min.csv"
    three_minute_bars.rename_axis("timestamp").to_csv(path)
    (tmp_path / "trademl.toml").write_text('[data]\nhorizons = ["15min", 30]\n')
    out = tmp_path / "ds"
    runner = CliRunner()
    built = runner.invoke(app, ["data", "build", str(path), "-o", str(out), "-c", str(tmp_path / "trademl.toml")])
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["horizons"] == [5, 30] and manifest["horizon_minutes"] == {"5": 15, "30": 90}
    assert manifest["bar_minutes"] == 3
    assert "labels 5 bars = 15 min" in built.stderr and "labels 30 bars = 90 min" in built.stderr
    assert "warning: horizon 30 bars = 90 minutes on 3-minute bars" in built.stderr
    assert built.stderr.count("warning: horizon") == 1  # once for the build, not once per chunk
    with pytest.warns(UserWarning, match="horizon 30 bars = 90 minutes"):
        again = build_dataset(path, tmp_path / "ds2", config=load_config(tmp_path / "trademl.toml"))
    assert again.manifest["horizon_minutes"] == manifest["horizon_minutes"]

    inspected = runner.invoke(app, ["data", "inspect", str(path), "--symbol", "ES"],
                              env={"TRADEML_CONFIG": str(tmp_path / "trademl.toml")})
    assert inspected.exit_code == 0, inspected.output
    assert "15min = 5 bars, 30 bars = 90 min" in " ".join(inspected.stdout.split())


def test_data_build_refuses_a_horizon_the_bars_cannot_divide_in_one_line(three_minute_bars, tmp_path):
    from trademl.cli import app

    path = tmp_path / "es_3min.csv"
    three_minute_bars.rename_axis("timestamp").to_csv(path)
    (tmp_path / "trademl.toml").write_text('[data]\nhorizons = ["10min"]\n')
    done = CliRunner().invoke(app, ["data", "build", str(path), "-o", str(tmp_path / "ds"),
                                    "-c", str(tmp_path / "trademl.toml")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert done.stderr.startswith('error: [data] horizons: horizon "10min" is not a whole number of 3-minute bars')
    assert not (tmp_path / "ds").exists()  # nothing half-written
