"""Contract specs and configuration."""

import ast
import re
from pathlib import Path

import pytest

from trademl.config import Config, load_config, resolve_config, small_budget
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


GUIDE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ml-trading-guide.md"


def _guide_sections() -> dict[str, str]:
    """The guide's text by heading (the text under each ``#`` line, up to the next one;
    ``#`` lines inside code blocks are comments, not headings)."""
    sections, heading, in_code = {}, "", False
    for line in GUIDE.read_text().splitlines():
        in_code ^= line.lstrip().startswith("```")
        if line.startswith("#") and not in_code:
            heading = line.lstrip("#").strip()
        sections[heading] = sections.get(heading, "") + line + "\n"
    return sections


def _number(text: str):
    return ast.literal_eval(text.strip())


@pytest.mark.skipif(not GUIDE.is_file(), reason=f"the guide {GUIDE} is not on this machine")
def test_config_defaults_are_the_guides():
    """Every default the guide states, read from the guide's own text."""
    defaults = Config()
    text = GUIDE.read_text()
    sections = _guide_sections()
    checked = []  # (setting, the value the guide states)

    # "**Configuration** (in script):" lists: `NAME = value` under "Train LSTM Model" / "Train PPO Agent".
    homes = {"LSTM": ("lstm",), "PPO": ("ppo", "account")}
    for heading, body in sections.items():
        kind = next((k for k in homes if "Train " in heading and k in heading), None)
        for name, value in re.findall(r"^- `(\w+) = ([^`]+)`:", body, flags=re.M):
            assert kind, f"guide setting {name} under {heading!r}: no config section for it"
            (section,) = [s for s in homes[kind] if name in type(getattr(defaults, s)).model_fields]
            checked.append((f"{section}.{name}", _number(value)))
    assert len(checked) >= 8, f"the guide's configuration lists were not found: {checked}"

    # The trading rule: act only above this confidence.
    (threshold,) = set(re.findall(r"confidence_score > ([0-9.]+)", text))
    checked.append(("backtest.confidence_threshold", _number(threshold)))
    # The guide's backtest: its starting capital and position limit.
    backtest = sections["Backtesting"]
    checked.append(("account.initial_balance", _number(re.search(r"initial_balance = (\S+)", backtest)[1])))
    checked.append(("account.max_position_size", _number(re.search(r"position < (\d+)", backtest)[1])))
    # Troubleshooting: "Need at least 1000 rows for PPO", "... 200 rows for LSTM".
    minimum = dict((kind, _number(n)) for n, kind in re.findall(r"Need at least (\d+) rows for (\w+)", text))
    checked += [("ppo.MIN_ROWS", minimum["PPO"]), ("lstm.MIN_SEQUENCES", minimum["LSTM"])]
    # The output format's LightGBM fields win_<h>m_prob name the label horizons.
    checked.append(("data.horizons", sorted({_number(h) for h in re.findall(r"win_(\d+)m_prob", text)})))

    for setting, stated in checked:
        section, name = setting.split(".")
        assert getattr(getattr(defaults, section), name) == stated, f"{setting}: the guide says {stated}"

    # Tuning advice ("config.clip_epsilon = 0.1  # Reduce ...") states which side of a value the default is on.
    for name, value, advice in re.findall(r"config\.(\w+) = (\S+)\s+# (\w+)", text):
        default = getattr(defaults.ppo, name)
        if advice == "Reduce":
            assert default > _number(value), f"ppo.{name}: the guide reduces it to {value}"
        elif advice == "Increase":
            assert default < _number(value), f"ppo.{name}: the guide increases it to {value}"


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


@pytest.mark.parametrize("section", ["ppo", "backtest"])
@pytest.mark.parametrize("name,value", [("initial_balance", 50_000.0), ("max_position_size", 3)])
def test_account_settings_moved_out_of_ppo_and_backtest(tmp_path, section, name, value):
    f = tmp_path / "trademl.toml"
    f.write_text(f"[{section}]\n{name} = {value!r}\n")
    with pytest.raises(TradeMLError, match=rf"\[{section}\] {name} has moved to \[account\]") as err:
        load_config(f)
    assert "Extra inputs" not in str(err.value)
    with pytest.raises(TradeMLError, match=r"moved to \[account\]"):
        load_config(overrides={section: {name: value}})
    f.write_text(f"[account]\n{name} = {value!r}\n")
    assert getattr(load_config(f).account, name) == value


def test_small_budget_keeps_the_account_and_rejects_moved_settings():
    cfg = load_config(overrides={"account": {"max_position_size": 2}})
    small = small_budget(cfg)
    assert small.account.max_position_size == 2 and small.ppo.total_timesteps == cfg.demo.ppo["total_timesteps"]
    cfg.demo.ppo = {**cfg.demo.ppo, "max_position_size": 1}
    with pytest.raises(TradeMLError, match=r"\[demo.ppo\] max_position_size has moved to \[account\]"):
        small_budget(cfg)


def test_resolve_config_honours_the_working_directory_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TRADEML_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_config().account.max_position_size == Config().account.max_position_size
    (tmp_path / "trademl.toml").write_text("[account]\nmax_position_size = 3\n[data]\nmax_gap_minutes = 40\n")
    assert resolve_config().account.max_position_size == 3
    given = Config()
    assert resolve_config(given) is given
    other = tmp_path / "other.toml"
    other.write_text("[account]\ninitial_balance = 25000.0\n")
    assert resolve_config(other).account.initial_balance == 25_000.0
    # functions whose settings are left as None read the same file
    from trademl.segments import segment_ids
    from trademl.market.contracts import contract_spec
    from trademl.market.execution import ExecutionModel
    import pandas as pd

    assert ExecutionModel(contract_spec("ES")).max_position == 3
    frame = pd.DataFrame(index=pd.DatetimeIndex(["2024-01-02 14:30", "2024-01-02 15:00"], tz="UTC"))
    assert segment_ids(frame).tolist() == [0, 0]  # a 30-minute gap is within 40 minutes
