"""`trademl config show`: every setting, its value as resolved and its meaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trademl.config import Config

TRADEML = str(Path(sys.executable).parent / "trademl")


def config_show(*args, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRADEML_CONFIG"} | {"COLUMNS": "200"}
    return subprocess.run([TRADEML, "config", "show", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=60)


def every_setting() -> set[str]:
    """section.name for every setting; [contracts] (a table per instrument, none by default) as itself."""
    return {f"{section}.{name}" if hasattr(field.annotation, "model_fields") else section
            for section, field in Config.model_fields.items()
            for name in getattr(field.annotation, "model_fields", [None])}


def test_json_lists_every_setting_with_the_working_directory_file(tmp_path):
    (tmp_path / "trademl.toml").write_text("[account]\nmax_position_size = 3\n[lstm]\nSEQUENCE_LENGTH = 30\n")
    done = config_show("--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert set(settings) == every_setting()
    assert settings["account.max_position_size"]["value"] == 3
    assert settings["lstm.SEQUENCE_LENGTH"]["value"] == 30
    defaults = Config()
    assert settings["account.initial_balance"]["value"] == defaults.account.initial_balance
    assert settings["data.horizons"]["value"] == defaults.data.horizons
    assert settings["lgbm.embargo_bars"]["value"] is None
    empty = [name for name, s in settings.items() if not s["description"].strip()]
    assert not empty, f"settings without a description: {empty}"


def test_config_option_names_the_file(tmp_path):
    (tmp_path / "trademl.toml").write_text("[ppo]\nclip_epsilon = 0.3\n")
    other = tmp_path / "other.toml"
    other.write_text("[ppo]\nclip_epsilon = 0.1\n")
    settings = json.loads(config_show("--json", "--config", str(other), cwd=tmp_path).stdout)
    assert settings["ppo.clip_epsilon"]["value"] == 0.1


def test_table_shows_names_values_and_descriptions(tmp_path):
    (tmp_path / "trademl.toml").write_text("[backtest]\nconfidence_threshold = 0.55\n")
    done = config_show(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "backtest.confidence_threshold" in line]
    assert len(rows) == 1 and "0.55" in rows[0] and "The guide's rule" in rows[0]
    # descriptions that name a section keep their brackets (no rich markup eaten)
    assert "[lgbm] settings replaced in the small budget." in done.stdout
    for name in every_setting():
        assert name in done.stdout


def test_a_bad_config_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "trademl.toml"
    bad.write_text("[ppo]\nmax_position_size = 3\n")
    done = config_show(cwd=tmp_path)
    assert done.returncode == 2
    assert "[ppo] max_position_size has moved to [account]" in done.stderr and "Traceback" not in done.stderr
    bad.write_text("[ppo\n")
    done = config_show("--json", cwd=tmp_path)
    assert done.returncode == 2 and "not valid TOML" in done.stderr and "Traceback" not in done.stderr
    done = config_show("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert done.returncode == 2 and "config file not found" in done.stderr and done.stdout == ""
