"""Contract specs and configuration."""

import pytest

from trademl.config import load_config
from trademl.errors import TradeMLError
from trademl.market.contracts import CONTRACTS, contract_spec, root_of


@pytest.mark.parametrize(
    "symbol,root,point_value",
    [("NQZ5", "NQ", 20.0), ("MNQH26", "MNQ", 2.0), ("ES", "ES", 50.0), ("MESM4", "MES", 5.0),
     ("YMU5", "YM", 5.0), ("RTYZ5", "RTY", 50.0), ("M2K", "M2K", 5.0), ("CLF6", "CL", 1000.0),
     ("MCL", "MCL", 100.0), ("GCG6", "GC", 100.0), ("MGC", "MGC", 10.0), ("6EH4", "6E", 125_000.0),
     ("/esz5", "ES", 50.0)],
)
def test_symbols_resolve_to_specs(symbol, root, point_value):
    assert root_of(symbol) == root
    assert contract_spec(symbol).point_value == pytest.approx(point_value)


def test_every_listed_contract_has_consistent_ticks():
    assert len(CONTRACTS) == 13
    for spec in CONTRACTS.values():
        assert spec.tick_size > 0 and spec.tick_value > 0


def test_unknown_symbol_is_a_clear_error_unless_a_spec_is_given():
    with pytest.raises(TradeMLError, match="unknown contract symbol 'ZBH6'.*tick_size"):
        contract_spec("ZBH6")
    spec = contract_spec("ZBH6", {"root": "ZB", "description": "30Y bond", "tick_size": 1 / 32, "tick_value": 31.25})
    assert spec.point_value == pytest.approx(1000.0)


def test_config_defaults_are_the_guides():
    cfg = load_config(overrides={})
    assert cfg.lstm.SEQUENCE_LENGTH == 60 and cfg.lstm.PREDICTION_HORIZON == 5
    assert cfg.lstm.HIDDEN_SIZE == 128 and cfg.lstm.NUM_LAYERS == 2
    assert cfg.ppo.initial_balance == 100_000 and cfg.ppo.max_position_size == 5
    assert cfg.ppo.learning_rate == 3e-4 and cfg.ppo.total_timesteps == 1_000_000
    assert cfg.data.horizons == [5, 30]
    assert cfg.backtest.confidence_threshold == 0.7


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "trademl.toml"
    f.write_text("[lstm]\nSEQUENCE_LENGTH = 30\n[ppo]\nclip_epsilon = 0.1\n")
    cfg = load_config(f, overrides={"ppo": {"n_steps": 4096}})
    assert cfg.lstm.SEQUENCE_LENGTH == 30 and cfg.ppo.clip_epsilon == 0.1 and cfg.ppo.n_steps == 4096


def test_bad_config_names_the_field(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[ppo]\nlearning_rate = 'fast'\nunknown_knob = 1\n")
    with pytest.raises(TradeMLError, match=r"ppo\.learning_rate.*ppo\.unknown_knob|ppo\.unknown_knob.*ppo\.learning_rate"):
        load_config(f)
    f.write_text("[ppo\n")
    with pytest.raises(TradeMLError, match="not valid TOML"):
        load_config(f)
