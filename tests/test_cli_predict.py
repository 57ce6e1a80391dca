"""`trademl predict` and scripts/predict_advanced.py: JSON in, exactly one JSON object out."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from malformed_requests import GUIDE_EXAMPLE, malformed_cases

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRADEML = str(BIN / "trademl")
SCRIPT = str(REPO / "scripts" / "predict_advanced.py")
GUIDE_FIELDS = {
    "timestamp", "models_used", "win_5m_prob", "win_30m_prob", "lstm_buy_prob", "lstm_sell_prob", "lstm_hold_prob",
    "lstm_expected_movement", "lstm_risk_score", "ppo_buy_prob", "ppo_sell_prob", "ppo_hold_prob", "ppo_state_value",
    "ensemble_recommendation", "confidence_score",
}


def run(argv, body: bytes, cwd, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(argv, input=body, capture_output=True, cwd=cwd, env=env, timeout=timeout)


def only_json(stdout: bytes) -> dict:
    """stdout must be one JSON object and nothing else."""
    text = stdout.decode()
    assert text.count("\n") == 1 and text.endswith("\n"), f"stdout is not one line: {text[:300]!r}"
    return json.loads(text)


@pytest.fixture(scope="module")
def feature_count(trained_store) -> int:
    manifest = json.loads(next((trained_store.root / "lgb_5m").glob("*/manifest.json")).read_text())
    return len(manifest["feature_schema"]["names"])


@pytest.fixture(scope="module")
def library_answer(trained_store) -> dict:
    """What the library itself answers to the guide's example, through JSON as the commands print it."""
    from trademl.predict.ensemble import EnsemblePredictor

    out = EnsemblePredictor(trained_store.root, trained_store.config, record=False).ensemble_predict(dict(GUIDE_EXAMPLE))
    return json.loads(json.dumps(out))


@pytest.mark.parametrize("entry", [[TRADEML, "predict"], [sys.executable, SCRIPT]], ids=["trademl", "script"])
def test_guide_example_gives_the_guide_fields(entry, trained_store, library_answer, tmp_path):
    result = run(entry + ["--model-root", str(trained_store.root)], json.dumps(GUIDE_EXAMPLE).encode(), tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = only_json(result.stdout)
    assert set(out) <= GUIDE_FIELDS | {"warnings", "model_versions", "votes", "novelty"}
    assert set(out["votes"]) == {"lgb_5m", "lgb_30m"}
    assert out["models_used"] == ["lgb_5m", "lgb_30m"]  # no sequence: the LSTM and PPO are skipped, and say so
    assert any(w.startswith("lstm skipped") for w in out["warnings"])
    assert any(w.startswith("ppo skipped") for w in out["warnings"])
    assert "lstm_buy_prob" not in out and "ppo_state_value" not in out
    assert out["ensemble_recommendation"] in {"BUY", "SELL", "HOLD"}
    assert 0.0 <= out["confidence_score"] <= 1.0
    assert out["timestamp"] == "2024-01-01T12:00:00Z"
    assert set(out["model_versions"]) == {"lgb_5m", "lgb_30m"}
    # Every figure is the library's own answer to the same request, on the same stored models.
    assert out == library_answer
    # The guide's log line, in the working directory's logs/: one request, one line.
    lines = (tmp_path / "logs" / "predictions.log").read_text().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(f"- Prediction: {out['ensemble_recommendation']}, Confidence: {100 * out['confidence_score']:.2f}%")
    # ... and one row in the SQLite prediction log beside it, holding what was printed.
    with sqlite3.connect(tmp_path / "logs" / "predictions.sqlite") as db:
        rows = db.execute("SELECT symbol, recommendation, confidence, output_json, model_versions_json, side "
                          "FROM predictions").fetchall()
    assert len(rows) == 1
    symbol, recommendation, confidence, output_json, versions_json, side = rows[0]
    assert (symbol, recommendation, side) == ("NQZ5", out["ensemble_recommendation"], "long")
    assert confidence == out["confidence_score"]
    assert json.loads(output_json) == out and json.loads(versions_json) == out["model_versions"]


def test_malformed_table_each_gets_an_error_json_and_exit_2(trained_store, feature_count, tmp_path):
    cases = malformed_cases(feature_count)
    assert len(cases) >= 15
    for name, body, field, _status in cases:
        result = run([TRADEML, "predict", "--model-root", str(trained_store.root), "--no-log"], body, tmp_path)
        assert result.returncode == 2, (name, result.stdout[:300], result.stderr[:300])
        err = only_json(result.stdout)["error"]
        assert err["field"] == field, (name, err)
        assert err["message"] and len(err["message"]) < 2000, name
        assert b"Traceback" not in result.stderr, name
        assert result.stderr.decode().startswith("error: "), name


def test_no_model_is_exit_3_with_an_error(tmp_path):
    result = run([TRADEML, "predict", "--model-root", str(tmp_path / "empty"), "--no-log"],
                 json.dumps(GUIDE_EXAMPLE).encode(), tmp_path)
    assert result.returncode == 3
    err = only_json(result.stdout)["error"]
    assert err["kind"] == "model_store" and "no model is loaded" in err["message"]


def test_guide_import_of_predict_advanced(trained_store, library_answer, tmp_path):
    """`from predict_advanced import EnsemblePredictor` works with scripts/ on sys.path."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from predict_advanced import EnsemblePredictor;"
        "p = EnsemblePredictor(sys.argv[2], record=False);"
        "print(json.dumps(p.ensemble_predict(json.loads(sys.argv[3]))))"
    )
    result = run([sys.executable, "-c", code, str(REPO / "scripts"), str(trained_store.root), json.dumps(GUIDE_EXAMPLE)],
                 b"", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["models_used"] == ["lgb_5m", "lgb_30m"]
    assert json.loads(result.stdout) == library_answer  # the same predictor as `import trademl`'s
    assert not (tmp_path / "logs").exists()  # record=False writes no log


def test_a_log_that_cannot_be_written_never_stops_a_prediction(trained_store, library_answer, tmp_path):
    """A corrupt prediction database and a log line that cannot be opened: the answer is printed,
    exit 0, one warning on stderr (no "Logging error" traceback)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "predictions.sqlite").write_bytes(b"not a database at all" * 100)
    (logs / "predictions.log").mkdir()
    result = run([TRADEML, "predict", "--model-root", str(trained_store.root)], json.dumps(GUIDE_EXAMPLE).encode(), tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert only_json(result.stdout) == library_answer
    err = result.stderr.decode()
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("cannot write the prediction log") == 1, err


def test_hostile_stamps_and_bodies_are_exit_2_not_tracebacks(trained_store, tmp_path):
    """The issue-15 cases that crashed `trademl predict` (the full table: tests/test_hostile_inputs.py)."""
    cases = [
        (json.dumps(dict(GUIDE_EXAMPLE, timestamp="0001-01-01T00:00:00+05:00")).encode(), "timestamp"),
        (b'{"features": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
        (b"\xff\xfe{}", "body"),
        (json.dumps({"symbol": "NQZ5", "bars": [{"timestamp": "2024-01-02T14:30:00Z", "open": 4e9, "low": 4e9,
                                                 "close": 4e9, "high": 3e38}]}).encode(), "bars[0]"),
    ]
    for body, field in cases:
        result = run([TRADEML, "predict", "--model-root", str(trained_store.root), "--no-log"], body, tmp_path)
        assert result.returncode == 2 and b"Traceback" not in result.stderr, result.stderr[-1000:]
        assert only_json(result.stdout)["error"]["field"] == field


# `trademl predict` through Typer, which the console script's fast path (trademl.cli.main) skips.
TYPER_PREDICT = [sys.executable, "-c", "import sys; from trademl.cli import app; app(sys.argv[1:], prog_name='trademl')",
                 "predict"]
# The libraries a prediction never needs: the CLI's (the fast path skips Typer) and the training's.
NOT_FOR_PREDICT = {"typer", "click", "rich", "torch", "lightgbm", "sklearn", "pandas", "gymnasium", "stable_baselines3"}


def imported_packages(importtime_stderr: bytes) -> set[str]:
    """The top-level packages named by `python -X importtime`'s lines (the fast path exits without
    the interpreter's teardown, so an atexit hook would not see its modules)."""
    lines = [line for line in importtime_stderr.decode().splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines[1:]}


def _logs(cwd: Path) -> tuple[list[str], list[tuple]]:
    """The files a run left in logs/ and the prediction log's rows (not their wall-clock stamps)."""
    logs = cwd / "logs"
    if not logs.exists():
        return [], []
    files = sorted(p.name for p in logs.iterdir())  # before a reader of ours opens the database
    db = sqlite3.connect(logs / "predictions.sqlite")
    try:
        rows = db.execute("SELECT symbol, recommendation, confidence, output_json FROM predictions").fetchall()
    finally:
        db.close()
    return files, rows


@pytest.mark.parametrize("case", ["good", "good, logged", "malformed json", "no model store", "--config= form"])
def test_the_fast_path_answers_exactly_as_the_typer_command(case, trained_store, tmp_path):
    body, args = json.dumps(GUIDE_EXAMPLE).encode(), ["--model-root", str(trained_store.root), "--no-log"]
    if case == "good, logged":
        args = args[:2]
    elif case == "malformed json":
        body = b'{"symbol": "NQZ5", "features": {'
    elif case == "no model store":
        args = ["--model-root", str(tmp_path / "empty"), "--no-log"]
    elif case == "--config= form":
        (tmp_path / "trademl.toml").write_text("[serve]\nmax_body_bytes = 100\n")  # the guide's example is larger
        args = [f"--config={tmp_path / 'trademl.toml'}", "--model-root", str(trained_store.root), "--no-log"]
    ways = {}
    for name, entry in (("typer", TYPER_PREDICT), ("fast", [TRADEML, "predict"])):
        (tmp_path / name).mkdir()
        ways[name] = run(entry + args, body, tmp_path / name)
        ways[name + " logs"] = _logs(tmp_path / name)
    fast, typer_way = ways["fast"], ways["typer"]
    assert (fast.returncode, fast.stdout, fast.stderr) == (typer_way.returncode, typer_way.stdout, typer_way.stderr)
    expected_code = {"good": 0, "good, logged": 0, "malformed json": 2, "no model store": 3, "--config= form": 2}[case]
    assert fast.returncode == expected_code, fast.stderr.decode()[-2000:]
    only_json(fast.stdout)
    # the same log files (the SQLite WAL checkpointed into the file, as at an interpreter's exit) and rows
    assert ways["fast logs"] == ways["typer logs"]
    assert (case == "good, logged") == bool(ways["fast logs"][1])
    watched = run([sys.executable, "-X", "importtime", TRADEML, "predict"] + args, body, tmp_path)
    assert watched.stdout == fast.stdout and watched.returncode == fast.returncode
    assert "numpy" in imported_packages(watched.stderr)
    assert imported_packages(watched.stderr) & NOT_FOR_PREDICT == set()


def test_predict_command_lines_the_fast_parser_is_unsure_of_go_to_typer(tmp_path):
    """--help, an unknown option, a missing value: Typer's own messages and exit codes."""
    for args in (["--help"], ["--model-rot", "x"], ["--model-root"], ["-cfoo.toml"], ["extra"]):
        fast = run([TRADEML, "predict"] + args, b"", tmp_path)
        typer_way = run(TYPER_PREDICT + args, b"", tmp_path)
        assert (fast.returncode, fast.stdout, fast.stderr) == (typer_way.returncode, typer_way.stdout, typer_way.stderr), args
        assert fast.returncode == (0 if args == ["--help"] else 2), (args, fast.stderr)
