"""The house: one model interface, one decision path, one broker.

* The README's five-line program runs as written (the public API of ``trademl``).
* The predictor, fed raw bars one at a time as the bot sends them (with the account the bot
  reports, kept by the same broker), replays a walk-forward test fold and gives the
  walk-forward's decisions bar by bar (the broker walks every bar; the predictor answers a slice
  holding the fold's ends, its segment breaks and each model's warm-up, and every 37th bar).
* Every kind goes through the one interface: fit -> predict -> save -> load -> predict.
* No module imports from a floor below it, and the serving floor loads no training library.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "trademl"


def _toml(sections: dict) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list) else
                         f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
    return "\n".join(lines) + "\n"


def readme_program() -> str:
    """The Python block under the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 9)]


def test_the_readmes_five_line_program_runs_as_written(tmp_path, monkeypatch):
    from trademl.data.synthetic import synthetic_bars

    program = readme_program()
    assert len([line for line in program.strip().splitlines() if not line.startswith("#")]) <= 6
    bars = synthetic_bars(6_000, seed=4, edge_ic=0.25, symbol="NQ")
    bars.to_csv(tmp_path / "bars.csv", index_label="timestamp")
    monkeypatch.chdir(tmp_path)  # trademl.toml here is honoured by every entry point
    (tmp_path / "trademl.toml").write_text(_toml({
        "data": {"extra_feature_columns": ["edge"]},
        "lgbm": {**TINY_OVERRIDES["lgbm"], "n_estimators": 60},
        "paths": {"model_root": str(tmp_path / "models"), "log_dir": str(tmp_path / "logs")},
    }))
    scope: dict = {}
    exec(compile(program, "README.md", "exec"), scope)

    ds, m, votes = scope["ds"], scope["m"], scope["votes"]
    assert ds.symbol == "NQZ5" and len(ds.frame) == len(bars)
    assert votes.vote.shape == (len(ds.frame), 3) and votes.kind == "lgb_5m"
    ran = votes.ran
    assert ran.mean() > 0.99  # only bars whose every feature is missing (none here, bar 0 at most) are skipped
    np.testing.assert_allclose(votes.vote[ran].sum(axis=1), 1.0)
    # n_estimators=200 overrode the [lgbm] section of trademl.toml; the rest of it stayed.
    stored = m.stored
    assert stored.path.parent.parent == tmp_path / "models"
    assert stored.manifest["config"]["lgbm"]["n_estimators"] == 200
    assert stored.manifest["config"]["lgbm"]["num_leaves"] == TINY_OVERRIDES["lgbm"]["num_leaves"]
    # The saved model predicts what the fitted one did.
    from trademl import LGBMWinModel

    again = LGBMWinModel.load((tmp_path / "models", "lgb_5m")).predict(ds)
    np.testing.assert_array_equal(again.vote, votes.vote)
    # The predictor answered the dataset's own last row with the same LightGBM outputs.
    from trademl import EnsemblePredictor

    out = EnsemblePredictor(record=False).ensemble_predict(ds.snapshot(-1))
    assert out["models_used"] == ["lgb_5m"]
    assert out["timestamp"] == ds.frame.index[-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert out["win_5m_prob"] == pytest.approx(votes.outputs["win_long"][-1], abs=1e-12)
    best = int(np.argmax(votes.vote[-1]))
    assert out["ensemble_recommendation"] == ("HOLD", "BUY", "SELL")[best]
    assert out["confidence_score"] == pytest.approx(votes.vote[-1][best], abs=1e-12)  # one model: agreement 1


def test_every_kind_goes_through_the_one_interface(trained_store, tmp_path):
    """fit is covered above and by each kind's tests; here load -> predict -> save -> load for each
    stored kind, and the votes of a loaded model equal its runtime's on the same inputs."""
    from trademl.data.dataset import dataset_from_bars
    from trademl.models.base import ModelInputs, open_runtime, registry, runtime_for
    from trademl.models.store import ModelStore

    store = ModelStore(trained_store.root)
    ds = dataset_from_bars(trained_store.bars.iloc[-3000:], trained_store.config)
    models = registry().models
    assert set(models) == {"lgbm", "lstm", "ppo"}
    for kind in ("lgb_5m", "lgb_30m", "lstm", "ppo"):
        family = next(c for c in models.values() if runtime_for(kind) is c.runtime)
        model = family.load((store, kind))
        votes = model.predict(ds)
        assert votes.kind == kind and votes.vote.shape == (len(ds.frame), 3)
        assert votes.ran[-1], f"{kind} could not run on the last bar"
        direct = open_runtime(store.load(kind)).predict(ModelInputs.of_dataset(ds))
        np.testing.assert_array_equal(direct.vote, votes.vote)
        skill = model.metrics["validation_skill"]
        assert set(skill) == {"value", "measure", "interval", "note"} and skill["measure"]
        copy = model.save(tmp_path / "copy")
        assert copy.version == store.load(kind).version and (tmp_path / "copy" / kind / copy.version).is_dir()


# ----------------------------------------------------------------------------- one decision path


def _bars_payload(frame: pd.DataFrame) -> list[dict]:
    cols = [c for c in ("open", "high", "low", "close", "volume", "edge") if c in frame.columns]
    return [{"timestamp": t.isoformat(), **{c: float(v) for c, v in zip(cols, row)}}
            for t, row in zip(frame.index, frame[cols].to_numpy())]


def _replayed_bars(n: int, starts: np.ndarray, ran: dict) -> np.ndarray:
    """The bars of an ``n``-bar fold that the predictor answers: the fold's first and last bars,
    the last bars before each segment break and the first after it, around the bar where each
    model first runs again after its warm-up (``ran[kind]``: where the walk-forward ran it), and
    every 37th bar between them."""
    keep = np.zeros(n, bool)
    keep[:25] = keep[-25:] = True
    keep[::37] = True
    for s in np.flatnonzero(starts)[1:]:
        keep[max(0, s - 8): s + 8] = True
        for did in ran.values():
            after = np.flatnonzero(did[s:])
            if len(after) and after[0] > 0:  # this kind is warming up here: the bars where it starts
                first = s + after[0]
                keep[max(0, first - 6): first + 6] = True
    return np.flatnonzero(keep)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["stacked", "vote"])
def test_the_predictor_bar_by_bar_gives_the_walk_forwards_decisions(tmp_path, method):
    """The bot's loop over a test fold: the broker walks every bar of it; the predictor answers a
    representative 216 of its 3,333 bars (``_replayed_bars``: each answer takes ~65 ms of
    features over 1,459 raw bars), the walk-forward's own decisions move the account between
    them. Every bar's account is the one the walk-forward's ensemble saw. ``stacked``: the
    stacker decides (the PPO agent read from a flat account for it, its own fields from the
    bot's); ``vote``: the weighted vote, the PPO agent's vote from the bot's account."""
    from trademl.backtest.walkforward import backtest_segments, holding_bars, walk_forward_backtest
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.market.actions import ACTION_NAMES, BUY, HOLD, SELL, direction_of
    from trademl.market.broker import Broker
    from trademl.market.execution import ExecutionModel
    from trademl.predict.ensemble import EnsemblePredictor
    from trademl.predict.request import RequestError
    from trademl.segments import bars_to_end, segment_start_mask

    overrides = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    overrides["backtest"] = {"n_folds": 2, "confidence_threshold": 0.2}
    overrides["ensemble"] = {"method": method, "min_stack_rows": 600}  # fold 0 trains on 3,272 rows: 818 to stack
    cfg = load_config(None, overrides)
    # IC 0.3: these tiny models' edge at 0.15 is within two clustered standard errors on the
    # fold's 818 stacker rows, so the stacker gives them no weight and never trades
    bars = synthetic_bars(10_000, seed=5, edge_ic=0.3, symbol="NQ")
    ds = dataset_from_bars(bars, cfg)
    result = walk_forward_backtest(ds, cfg, keep_models=tmp_path / "folds")
    fold = result.folds[0]
    assert (fold.stacker is not None) == (method == "stacked")
    rows = np.arange(fold.test_rows[0], fold.test_rows[1] + 1)
    expected = result.signals.iloc[: len(rows)]
    assert (expected["fold"] == 0).all() and len(expected) == len(rows)
    outputs = result.outputs.iloc[: len(rows)]
    kinds = ("lgb_5m", "lgb_30m", "lstm", "ppo")
    # where the walk-forward ran each kind (its outputs are NaN where it could not)
    wf_ran = {k: outputs[[c for c in outputs.columns if c.startswith(k + "_") and "position" not in c]]
              .notna().all(axis=1).to_numpy() for k in kinds}

    predictor = EnsemblePredictor(tmp_path / "folds" / "fold0", cfg, record=False)
    assert set(predictor.models.runtimes) == set(fold.versions) == set(kinds)
    assert predictor.models.weights == pytest.approx(fold.weights)
    needed = predictor.models.bars_needed()
    frame = ds.frame
    open_, close = frame["open"].to_numpy(), frame["close"].to_numpy()
    segments = backtest_segments(ds.segments[rows], np.zeros(len(rows)))
    starts, left = segment_start_mask(segments), bars_to_end(segments)
    replayed = _replayed_bars(len(rows), starts, wf_ran)
    asked = np.zeros(len(rows), bool)
    asked[replayed] = True
    # The slice holds what the test names: segment starts, bars where the LSTM and the PPO agent
    # could not run yet and bars where they could, the fold's last bar, long, short and flat accounts.
    assert starts[replayed].sum() >= 3 and asked[-1]
    for kind in ("lstm", "ppo"):
        assert (~wf_ran[kind][replayed]).sum() >= 5 and wf_ran[kind][replayed].sum() >= 100, kind
    broker = Broker(ExecutionModel.from_config(ds.spec, cfg.costs, cfg.account.max_position_size), 1,
                    cfg.account.initial_balance, hold_bars=holding_bars(cfg))  # the walk-forward's rule
    threshold = cfg.backtest.confidence_threshold
    seen_position = outputs["ppo_seen_ensemble_position"].to_numpy()
    wf_code = np.select([expected["action"].to_numpy() == 1, expected["action"].to_numpy() == -1], [BUY, SELL], HOLD)
    got_action, got_conf, reported = np.zeros(len(replayed), np.int8), np.zeros(len(replayed)), np.zeros(len(replayed))
    k = 0
    for j, row in enumerate(rows):
        if starts[j]:
            broker.restart()  # the bot is flat after a gap, as the walk-forward's account
        state = broker.state(close[row])
        assert state.position[0] == seen_position[j], j  # the account the walk-forward's ensemble saw
        if asked[j]:
            request = {"symbol": "NQ", "bars": _bars_payload(frame.iloc[max(0, row - needed + 1): row + 1]),
                       "position": int(state.position[0]), "balance": float(state.balance[0]),
                       "unrealized_pnl": float(state.unrealized_pnl[0]),
                       "recent_actions": state.recent_actions[0].tolist()}
            try:
                out = predictor.ensemble_predict(request)
                code, conf = ACTION_NAMES.index(out["ensemble_recommendation"]), out["confidence_score"]
                assert set(out["models_used"]) == {m for m in kinds if wf_ran[m][j]}, (j, out["models_used"])
                assert ("stacker" in out["model_versions"]) == (method == "stacked")
            except RequestError as e:  # no model can run yet (warm-up): the walk-forward holds there too
                assert e.kind == "insufficient_input"
                code, conf = 0, 0.0
            got_action[k], got_conf[k], reported[k] = direction_of(code), conf, state.position[0]
            k += 1
        else:  # between the replayed bars the walk-forward's own decision moves the account
            code, conf = int(wf_code[j]), float(expected["confidence"].iloc[j])
        broker.signal([code], [conf > threshold])
        if left[j] > 0:
            broker.fill_target(left[j] == 1, close[row], open_[row + 1], close[row + 1])

    np.testing.assert_array_equal(got_action, expected["action"].to_numpy()[replayed])
    # The same decision code on the same inputs. The LSTM is served in int8 here, one window per
    # ONNX call in the walk-forward as in the predictor (scored 1,024 at once, its answers moved by
    # ~1e-4 and one decision flipped); a float graph, 16 windows per call, rounds ~3e-8 away from
    # one window alone. Every recommendation, and so every position, is identical.
    np.testing.assert_allclose(got_conf, expected["confidence"].to_numpy()[replayed], rtol=0, atol=1e-7)
    assert (got_action != 0).sum() > 50 and (got_conf > threshold).sum() > 10, "the fold must trade to mean anything"
    # the PPO agent was asked with open and flat accounts: long, short and flat with the vote; the
    # stacked ensemble of this market mostly buys (its accounts are long, a few short, and flat)
    assert max((reported < 0).sum(), (reported > 0).sum()) > 20 and (reported == 0).sum() >= 3
    assert method == "stacked" or min((reported < 0).sum(), (reported > 0).sum()) > 20
    # The account the bot reported is the one the walk-forward traded.
    assert broker.position[0] == 0
    # The walk-forward scores the PPO agent's two accounts (the ensemble's, its own) in one
    # batch of two; the predictor scores one: the policy gives each row the same bits.
    ppo = predictor.models.runtimes["ppo"]
    obs = np.random.default_rng(0).normal(size=(64, ppo.spec.obs_dim)).astype(np.float32)
    pairs = np.vstack([ppo.policy(obs[i: i + 2])[0] for i in range(0, 64, 2)])
    singles = np.vstack([ppo.policy(obs[i: i + 1])[0] for i in range(64)])
    np.testing.assert_array_equal(pairs, singles)


# ----------------------------------------------------------------------------- the floors


FLOORS = {  # a package may import its own floor and the floors below it, never one above
    "errors": 0, "config": 0, "segments": 0, "html_page": 0, "stats": 0, "parallel": 0,
    "market": 1, "data": 2, "risk": 2, "models": 3, "predict": 4, "serve": 5, "backtest": 5, "monitor": 6, "tune": 6,
    "retrain": 6, "demo": 7, "cli": 8,
}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trademl."):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("trademl.")]
    return out


def test_no_import_runs_up_a_floor_and_no_private_name_crosses_a_package():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.name == "__init__.py" and rel.parent == Path("."):
            continue  # the public API re-exports every floor lazily
        home = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            target = module.split(".")[1]
            if FLOORS[target] > FLOORS[home]:
                problems.append(f"{rel} imports {module} (floor {target} is above {home})")
        text = path.read_text()
        for match in re.finditer(r"from (trademl\.[\w.]+) import ([^\n(]+)", text):
            package = match.group(1).split(".")[1]
            for name in (n.strip().split(" as ")[0] for n in match.group(2).split(",")):
                if name.startswith("_") and package != home:
                    problems.append(f"{rel} imports the private {match.group(1)}.{name}")
    assert not problems, "\n".join(problems)


def test_the_serving_floor_loads_no_training_library(trained_store):
    code = ("import sys\nfrom trademl.predict.ensemble import EnsemblePredictor\n"
            f"p = EnsemblePredictor({str(trained_store.root)!r}, record=False)\n"
            "assert set(p.models.runtimes) == {'lgb_5m', 'lgb_30m', 'lstm', 'ppo'}, p.models.load_errors\n"
            "print(sorted(m for m in ('torch', 'lightgbm', 'gymnasium', 'stable_baselines3', 'sklearn', 'pandas')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_action_codes_and_the_segment_mask_have_one_definition():
    definitions = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if re.search(r"^HOLD, BUY, SELL = 0, 1, 2", text, re.M):
            definitions.append(path.relative_to(SRC))
        for line in text.splitlines():
            if re.search(r"(\w+)\[1:\] != \1\[:-1\]", line) and path.name != "segments.py":
                definitions.append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert definitions == [Path("market/actions.py")], definitions
