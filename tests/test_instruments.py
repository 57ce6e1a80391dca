"""Instruments (issue 14): the symbol is told by the data or the user, never defaulted; any
instrument can be described ([contracts.X] or --tick-size/--point-value); the spec used is stored
in the dataset and model manifests, and serving prices with it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trademl.cli import app
from trademl.config import load_config
from trademl.errors import TradeMLError
from trademl.market.contracts import ContractSpec, contract_spec, infer_symbol, root_of
from trademl.market.execution import ExecutionModel

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPY = SHARED / "spy_1min_2011_ninjatrader.txt"
ES_SLICE = Path(__file__).parent / "data" / "es_1min_lean_slice.csv"
SPY_FLAGS = ["--symbol", "SPY", "--tick-size", "0.01", "--point-value", "1", "--commission", "0"]


@pytest.mark.parametrize("symbol,root", [
    ("NQ1", "NQ"), ("NQ1!", "NQ"), ("NQ2!", "NQ"), ("ES=F", "ES"), ("NQZ5", "NQ"), ("nqz25", "NQ"),
    ("MES1!", "MES"), ("6E1!", "6E"), ("M2K1!", "M2K"), ("/ES", "ES"), ("ES201312", "ES"), ("MNQ", "MNQ"),
])
def test_continuous_and_dated_names_resolve_to_their_root(symbol, root):
    assert root_of(symbol) == root
    assert contract_spec(symbol, config=load_config(None)).root == root


def test_an_instrument_described_in_the_config(tmp_path):
    toml = tmp_path / "trademl.toml"
    toml.write_text("[contracts.SPY]\ntick_size = 0.01\npoint_value = 1.0\ncommission_per_side = 0.0\n"
                    "[contracts.ES]\ncommission_per_side = 1.5\n")
    cfg = load_config(toml)
    spy = contract_spec("SPY", config=cfg)
    assert (spy.root, spy.tick_size, spy.point_value, spy.commission_per_side) == ("SPY", 0.01, 1.0, 0.0)
    assert spy.tick_value == pytest.approx(0.01)
    es = contract_spec("ESH14", config=cfg)  # a listed root keeps its ticks, takes the commission given
    assert (es.tick_size, es.point_value, es.commission_per_side) == (0.25, 50.0, 1.5)
    # the execution model charges the instrument's own commission, [costs] otherwise
    assert ExecutionModel.from_config(spy, cfg.costs, 5).commission_per_side == 0.0
    assert ExecutionModel.from_config(contract_spec("NQ", config=cfg), cfg.costs, 5).commission_per_side == 2.25
    shown = json.loads(CliRunner().invoke(app, ["config", "show", "--json", "-c", str(toml)]).output)
    assert shown["contracts.SPY.tick_size"]["value"] == 0.01


def test_a_half_described_or_unknown_instrument_is_a_clear_error(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text("[contracts.SPY]\ntick_size = 0.01\n")
    with pytest.raises(TradeMLError, match=r"'SPY' is not listed, so its point_value must be given"):
        contract_spec("SPY", config=load_config(toml))
    with pytest.raises(TradeMLError, match=r"unknown contract symbol 'QQQ'.*--tick-size and --point-value"):
        contract_spec("QQQ", config=load_config(None))
    with pytest.raises(TradeMLError, match=r"no instrument.*--symbol"):
        contract_spec(None, config=load_config(None))
    with pytest.raises(TradeMLError, match="tick_size"):
        load_config(None, {"contracts": {"SPY": {"tick_size": -1}}})


def test_the_symbol_is_told_by_a_column_or_the_file_name_or_not_at_all(tmp_path):
    cfg = load_config(None)
    assert infer_symbol(contract="ESH14", config=cfg) == "ES"
    assert infer_symbol(contract="NQ1!", config=cfg) == "NQ"
    assert infer_symbol(path=Path("nq_1min_2024.csv"), config=cfg) == "NQ"
    assert infer_symbol(path=Path("ES=F.csv"), config=cfg) == "ES"
    assert infer_symbol(path=SPY, config=cfg) is None  # SPY is not listed: nothing tells
    described = load_config(None, {"contracts": {"SPY": {"tick_size": 0.01, "point_value": 1.0}}})
    assert infer_symbol(path=SPY, config=described) == "SPY"
    # a `symbol` column naming a continuous contract, in a file whose name says nothing
    from trademl.data.bars import load_bars

    rows = [f"2024-01-02 14:{m:02d}:00,NQ1!,16800,16801,16799,16800.5,10" for m in range(5)]
    path = tmp_path / "export.csv"
    path.write_text("timestamp,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    assert load_bars(path, tz="UTC").attrs["symbol"] == "NQ"


@pytest.mark.skipif(not SPY.exists(), reason="shared SPY file not on this machine")
def test_spy_without_a_symbol_is_refused_then_described_it_builds_and_trains(tmp_path):
    runner = CliRunner()
    refused = runner.invoke(app, ["data", "build", str(SPY), "-o", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "cannot tell the instrument" in refused.output and "--symbol" in refused.output
    assert not (tmp_path / "no").exists()
    half = runner.invoke(app, ["data", "build", str(SPY), "-o", str(tmp_path / "no"), "--tick-size", "0.01"])
    assert half.exit_code == 2 and "--symbol" in half.output

    built = runner.invoke(app, ["data", "build", str(SPY), "-o", str(tmp_path / "ds"), *SPY_FLAGS])
    assert built.exit_code == 0, built.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["symbol"] == "SPY"
    assert {k: manifest["contract"][k] for k in ("root", "tick_size", "point_value", "commission_per_side")} == \
        {"root": "SPY", "tick_size": 0.01, "point_value": 1.0, "commission_per_side": 0.0}

    toml = tmp_path / "tiny.toml"  # a tiny training budget; the instrument comes from the dataset
    toml.write_text(f'[lgbm]\nn_estimators = 20\nn_folds = 2\nnum_leaves = 7\nmin_child_samples = 200\n'
                    f'[paths]\nmodel_root = "{tmp_path / "models"}"\n')
    trained = runner.invoke(app, ["train", "lgbm", str(tmp_path / "ds"), "-c", str(toml)])
    assert trained.exit_code == 0, trained.output
    stored = [json.loads(p.read_text()) for p in (tmp_path / "models").glob("lgb_*/*/manifest.json")]
    assert len(stored) == 2 and all(m["contract"] == manifest["contract"] for m in stored)
    _serving_prices_with_the_models_spec(manifest["contract"], stored[0]["feature_schema"]["names"])
    _the_predictor_answers_for_spy(tmp_path / "models")


def _spy_bars(n: int = 80) -> list[dict]:
    stamps = pd.date_range("2024-01-02 14:30", periods=n, freq="min", tz="UTC")
    close = 470 + np.round(np.cumsum(np.random.default_rng(0).normal(0, 0.05, len(stamps))), 2)
    return [{"timestamp": t.isoformat(), "open": c, "high": round(c + 0.03, 2), "low": round(c - 0.03, 2), "close": c,
             "volume": 1000.0} for t, c in zip(stamps, close)]


def _the_predictor_answers_for_spy(model_root: Path) -> None:
    """Raw SPY bars through the predictor, with no config describing SPY: the models' stored spec
    is used, and a request for another instrument is still refused clearly."""
    from trademl import EnsemblePredictor

    predictor = EnsemblePredictor(model_root, load_config(None), record=False)
    answer = predictor.ensemble_predict({"bars": _spy_bars(200)})
    assert answer["ensemble_recommendation"] in ("BUY", "SELL", "HOLD") and 0 < answer["win_5m_prob"] < 1
    with pytest.raises(TradeMLError, match="unknown contract symbol 'QQQ'"):
        predictor.ensemble_predict({"symbol": "QQQ", "bars": _spy_bars(200)})


def _serving_prices_with_the_models_spec(contract: dict, names: list[str]) -> None:
    """A bars request for models trained on SPY (not listed, no config) is read with their spec."""
    from trademl.predict.request import RequestError, parse_request, request_inputs

    request = parse_request({"bars": _spy_bars()})
    cfg = load_config(None)
    given = request_inputs(request, names, cfg, model_symbol="SPY", model_contract=contract)
    assert given.spec == ContractSpec.from_dict(contract) and given.symbol == "SPY"
    atr = given.inputs.current_rows()[-1][names.index("atr_ticks_14")]
    assert 1 < atr < 20  # ATR of a few cents in 0.01 ticks (in ES's 0.25 ticks it would be below 1)
    with pytest.raises(RequestError, match="unknown contract symbol 'SPY'"):
        request_inputs(request, names, cfg, model_symbol="SPY")  # without the stored spec nothing tells


@pytest.mark.skipif(not SPY.exists(), reason="shared SPY file not on this machine")
def test_the_ppo_agent_trains_on_an_instrument_described_on_the_command_line(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(f'[ppo]\ntotal_timesteps = 512\nn_envs = 8\nn_steps = 32\nbatch_size = 128\nn_epochs = 1\n'
                    f'checkpoint_dir = "{tmp_path / "ckpt"}"\n[paths]\nmodel_root = "{tmp_path / "models"}"\n')
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "ppo", str(SPY), "-c", str(toml)])
    assert refused.exit_code == 2 and "--symbol" in refused.output and "Traceback" not in refused.output
    done = runner.invoke(app, ["train", "ppo", str(SPY), *SPY_FLAGS, "-c", str(toml)])
    assert done.exit_code == 0, done.output
    (manifest,) = [json.loads(p.read_text()) for p in (tmp_path / "models").glob("ppo/*/manifest.json")]
    assert (manifest["contract"]["root"], manifest["contract"]["tick_size"], manifest["contract"]["point_value"]) == \
        ("SPY", 0.01, 1.0)


def test_a_bars_file_naming_no_instrument_trains_with_the_symbol_given(tmp_path):
    """`train` reads bars files as `data build` does: an unknown name is the same clear error."""
    from trademl.data.dataset import load_training_dataset

    path = tmp_path / "bars.csv"
    # ES bars under a name that says nothing, without their contract column
    pd.read_csv(ES_SLICE).drop(columns=["contract_yyyymm"]).to_csv(path, index=False)
    cfg = load_config(None)
    with pytest.raises(TradeMLError, match="cannot tell the instrument"):
        load_training_dataset(path, cfg)
    assert load_training_dataset(path, cfg, symbol="ES").spec.root == "ES"
