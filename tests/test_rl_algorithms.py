"""A2C and SAC beside PPO ([ppo] algo): SAC's continuous target position through the one broker,
its vote, ONNX parity with SB3, the algorithm in the store (an old agent without it loads as
PPO), serving through the ensemble and `trademl predict`, the CLI, checkpoints, and learning
(planted edge vs. random walk, marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_ppo_env import HAND, SCRIPT, make_env, run_script
from test_ppo_train import churning, learned, small_config
from trademl.data.synthetic import synthetic_bars
from trademl.errors import ModelStoreError, TradeMLError
from trademl.market.actions import BUY, HOLD, SELL, code_of_move, rounded_target
from trademl.models.kinds.ppo import PPORuntime, target_vote
from trademl.models.ppo.env import TradingCore, TradingEnvironment
from trademl.models.ppo.train import train_ppo
from trademl.models.store import ModelStore

torch.set_num_threads(1)

# Targets (shares of the cap of 2) that reach the positions of test_ppo_env's SCRIPT:
# 0.6 -> 1, 1.6 -> 2, 2 -> 2, 1 -> 1, and -2 asked on the bar before the segment's last: flat.
TARGETS = [0.3, 0.8, 1.0, 0.5, -1.0]


def target_env(symbol: str = "NQ") -> TradingEnvironment:
    core = make_env(symbol, kind="pnl")[0].core
    return TradingEnvironment(core.market, core.execution, core.spec, core.rewards, episode_length=100,
                              action_mode="target")


@pytest.mark.parametrize("symbol", ["NQ", "ES"])
def test_a_target_position_trades_through_the_same_broker_as_the_discrete_actions(symbol):
    discrete = run_script(make_env(symbol, kind="pnl")[0])
    env = target_env(symbol)
    assert env.action_space.shape == (1,) and env.action_space.low[0] == -1 and env.action_space.high[0] == 1
    target = run_script(env, script=[np.array([x], np.float32) for x in TARGETS])
    assert [s[3]["position"] for s in target] == [1, 2, 2, 1, 0]
    assert [s[3]["pnl"] for s in target] == pytest.approx(HAND[symbol], abs=1e-9)  # the hand-computed dollars
    assert [s[0] for s in target] == pytest.approx([s[0] for s in discrete])  # and the same rewards
    # the recent actions record each move's code (the last asks to sell; the segment end flattens)
    assert env.core.recent[0, -5:].tolist() == [BUY, BUY, HOLD, SELL, SELL]
    assert len(SCRIPT) == len(TARGETS)


def test_a_target_outside_the_cap_or_not_a_number_is_a_clear_error():
    env = target_env()
    env.reset(options={"start": 1})
    for bad in (1.5, -2.0, np.nan):
        with pytest.raises(TradeMLError, match=r"target actions must be finite numbers in \[-1, 1\]"):
            env.step(np.array([bad]))
    with pytest.raises(TradeMLError, match="action_mode must be one of"):
        TradingCore(env.core.market, env.core.execution, env.core.spec, env.core.rewards, action_mode="box")


def test_rounded_target_rounds_half_up_within_the_cap():
    assert rounded_target([0.49, 0.5, 1.5, -0.5, -0.51, 7.2, -9.0], 5).tolist() == [0, 1, 2, 0, -1, 5, -5]
    assert code_of_move([3, 0, -1]).tolist() == [BUY, HOLD, SELL]


def test_target_vote_is_the_environments_move_with_scores_growing_with_the_distance():
    # target 2.4 from 1 contract: buy; 1.3 from 1: hold; -0.6 from flat: sell
    votes = target_vote([2.4, 1.3, -0.6], [1, 1, 0])
    assert np.argmax(votes, axis=1).tolist() == [BUY, HOLD, SELL]
    # one contract above: logits (0, 4 * 0.5, 4 * -1.5)
    e = np.exp([0.0, 2.0, -6.0])
    np.testing.assert_allclose(target_vote([1.0], [0])[0], e / e.sum(), rtol=1e-12)
    rng = np.random.default_rng(0)
    target, position = rng.uniform(-5, 5, 2000), rng.integers(-5, 6, 2000)
    votes = target_vote(target, position)
    np.testing.assert_allclose(votes.sum(axis=1), 1.0, atol=1e-12)
    moves = code_of_move(rounded_target(target, 5) - position)
    assert (np.argmax(votes, axis=1) == moves).all()  # no exact half-contract ties among random floats
    buy = votes[:, BUY]
    order = np.argsort(target - position)
    assert (np.diff(buy[order]) >= -1e-12).all()  # the further above, the higher the buy score


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    """A2C and SAC trained briefly on 3,000 synthetic bars, each stored in its own model root."""
    bars = synthetic_bars(3_000, seed=11, edge_ic=0.15)
    out = {}
    for algo in ("a2c", "sac"):
        tmp = tmp_path_factory.mktemp(algo)
        cfg = small_config(tmp, algo=algo, total_timesteps=1024, n_steps=8, sac_n_envs=16, sac_learning_starts=256)
        out[algo] = (cfg, train_ppo(bars, cfg))
    return bars, out


def visited_states(prepared, mode: str, n: int = 64):
    """Observations of ``n`` envs after 30 random steps: positions, P&L and recent actions vary."""
    core = TradingCore(prepared.market("train"), prepared.execution, prepared.obs_spec, prepared.rewards, n, seed=4,
                       action_mode=mode)
    core.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        core.step(rng.uniform(-1, 1, n) if mode == "target" else rng.integers(0, 3, n))
    return core


def test_a2c_onnx_policy_equals_sb3_to_1e5(agents):
    from trademl.models.ppo.export import sb3_outputs

    cfg, result = agents[1]["a2c"]
    runtime = PPORuntime.load(ModelStore(cfg.paths.model_root).load("ppo"))
    assert runtime.algo == "a2c" and type(result.model).__name__ == "A2C"
    obs = visited_states(result.prepared, "discrete").observe()
    probs, value = runtime.policy(obs)
    ref_probs, ref_value = sb3_outputs(result.model.policy, obs)
    assert np.abs(probs - ref_probs).max() <= 1e-5 and np.abs(value - ref_value).max() <= 1e-5
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert result.metrics["onnx_max_abs_diff"] <= 1e-5


def test_sac_onnx_target_equals_sb3s_deterministic_action_times_the_cap_to_1e5(agents):
    cfg, result = agents[1]["sac"]
    runtime = PPORuntime.load(ModelStore(cfg.paths.model_root).load("ppo"))
    assert runtime.algo == "sac" and type(result.model).__name__ == "SAC"
    core = visited_states(result.prepared, "target")
    obs = core.observe()
    target = runtime.target_position(obs)
    with torch.no_grad():
        mean = result.model.policy.actor(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).numpy()[:, 0]
    # SB3 squashes the mean with tanh and scales [-1, 1] to the action space, which is [-1, 1]
    assert np.abs(target - mean * 5).max() <= 1e-5
    assert np.abs(target).max() <= 5 and np.unique(core.position).size > 2
    assert result.metrics["onnx_max_abs_diff"] <= 1e-5
    with pytest.raises(ModelStoreError, match="no action probabilities"):
        runtime.policy(obs)
    with pytest.raises(ModelStoreError, match="no target position"):
        PPORuntime.load(ModelStore(agents[1]["a2c"][0].paths.model_root).load("ppo")).target_position(obs)


def test_the_store_names_the_algorithm_and_holds_no_pickle(agents):
    for algo, (cfg, result) in agents[1].items():
        stored = ModelStore(cfg.paths.model_root).load("ppo")
        assert stored.kind == "ppo" and stored.manifest["config"]["algo"] == algo
        assert stored.manifest["metrics"]["algo"] == algo
        assert set(stored.manifest["files"]) == {"policy.onnx", "obs_spec.json", "eval.json"}


def restored(stored, root: Path, config: dict):
    """``stored``'s files in a new store at ``root`` under another manifest config."""
    import shutil

    m = stored.manifest
    with ModelStore(root).writer("ppo", feature_schema=m["feature_schema"], training_span=m["training_span"],
                                 config=config, metrics=m["metrics"], contract=m["contract"]) as w:
        for name in m["files"]:
            shutil.copyfile(stored.file(name), w.path / name)
    return w.stored


def test_an_agent_stored_without_an_algorithm_loads_as_ppo_and_a_wrong_one_is_refused(agents, tmp_path):
    from trademl.models.base import ModelInputs

    (a2c_cfg, a2c), (sac_cfg, _) = agents[1]["a2c"], agents[1]["sac"]
    stored = ModelStore(a2c_cfg.paths.model_root).load("ppo")
    old_config = {k: v for k, v in stored.manifest["config"].items() if k != "algo"}  # before [ppo] algo existed
    old = PPORuntime.load(restored(stored, tmp_path / "old", old_config))
    assert old.algo == "ppo"
    inputs = ModelInputs(a2c.prepared.features.astype(np.float32), np.arange(2_500, 2_600))
    np.testing.assert_array_equal(old.predict(inputs).vote, PPORuntime.load(stored).predict(inputs).vote)
    with pytest.raises(ModelStoreError, match="'bogus' is not one of ppo, a2c, sac"):
        PPORuntime.load(restored(stored, tmp_path / "bogus", old_config | {"algo": "bogus"}))
    sac = ModelStore(sac_cfg.paths.model_root).load("ppo")
    with pytest.raises(ModelStoreError, match="the ONNX graph has 1 outputs, the contract says 2"):  # SAC's graph, said PPO
        PPORuntime.load(restored(sac, tmp_path / "mislabelled", {**sac.manifest["config"], "algo": "ppo"}))


def request_for(result, position: int) -> dict:
    """A predict request: the last window of held-out feature rows, an account holding ``position``."""
    p = result.prepared
    w = p.obs_spec.window
    rows = p.features[-w - 10: -10]
    return {"symbol": "NQ", "sequence": rows.tolist(), "position": position}


def test_sac_is_served_by_the_ensemble_and_trademl_predict(agents, tmp_path):
    from trademl.predict.ensemble import EnsemblePredictor

    cfg, result = agents[1]["sac"]
    runtime = PPORuntime.load(ModelStore(cfg.paths.model_root).load("ppo"))
    p = result.prepared
    predictor = EnsemblePredictor(cfg.paths.model_root, cfg, record=False)
    for position in (-3, 0, 3):
        out = predictor.ensemble_predict(request_for(result, position))
        assert out["models_used"] == ["ppo"], out["warnings"]
        rows = np.asarray(request_for(result, position)["sequence"])
        obs = runtime.observation(rows[None], position, p.obs_spec.initial_balance, 0.0, np.zeros((1, 10)))
        target = runtime.target_position(obs)
        expected = target_vote(target, position)[0]
        got = [out["ppo_hold_prob"], out["ppo_buy_prob"], out["ppo_sell_prob"]]
        np.testing.assert_allclose(got, expected, atol=1e-6)
        # the vote is about the account's position: a target within 2.5 contracts of flat is a
        # buy from -3 and a sell from +3
        assert abs(target[0]) < 2.5
        assert np.argmax(got) == {-3: BUY, 3: SELL}.get(position, np.argmax(got))
        assert "ppo_state_value" not in out  # SAC has no state value
    body = json.dumps(request_for(result, 3)).encode()
    done = subprocess.run([str(Path(sys.executable).parent / "trademl"), "predict", "--model-root",
                           str(cfg.paths.model_root)], input=body, capture_output=True, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    served = json.loads(done.stdout)
    library = predictor.ensemble_predict(request_for(result, 3))
    for key in ("ppo_buy_prob", "ppo_sell_prob", "ppo_hold_prob", "ensemble_recommendation"):
        assert served[key] == pytest.approx(library[key]) if isinstance(library[key], float) else served[key] == library[key]


def test_cli_trains_a2c_and_sac_and_refuses_an_unknown_algorithm(tmp_path):
    from typer.testing import CliRunner

    from trademl.cli import app

    toml = tmp_path / "trademl.toml"
    toml.write_text(f'[paths]\nmodel_root = "{tmp_path / "models"}"\n'
                    f'[ppo]\nn_envs = 16\nn_steps = 8\nwindow = 4\nsac_n_envs = 8\nsac_learning_starts = 64\n'
                    f'checkpoint_dir = "{tmp_path / "ckpt"}"\n')
    runner, wide = CliRunner(), {"COLUMNS": "200"}
    args = ["train", "ppo", "--synthetic", "3000", "--timesteps", "256", "--config", str(toml)]
    for algo in ("a2c", "sac"):
        done = runner.invoke(app, [*args, "--algo", algo], env=wide)
        assert done.exit_code == 0, done.output
        stored = ModelStore(tmp_path / "models").latest("ppo")
        assert stored.manifest["config"]["algo"] == algo and stored.manifest["metrics"]["timesteps"] == 256
        assert f"{algo.upper()} agent, held-out span" in " ".join(done.output.split())
    assert f"wrote {tmp_path / 'ckpt'}" not in done.output  # SAC writes no checkpoint
    bad = runner.invoke(app, [*args, "--algo", "bogus"], env=wide)
    assert bad.exit_code == 2 and "ppo.algo" in bad.output and "'sac'" in bad.output, bad.output
    assert "Traceback" not in bad.output
    assert len(ModelStore(tmp_path / "models").versions("ppo")) == 2  # nothing stored by the bad one


def test_a2c_resumes_its_own_checkpoint_and_refuses_another_algorithms(tmp_path):
    bars = synthetic_bars(3_000, seed=12, edge_ic=0.15)
    cfg = small_config(tmp_path, algo="a2c", total_timesteps=256, n_steps=8)
    first = train_ppo(bars, cfg, store=False)
    cfg.ppo.total_timesteps = 512
    resumed = train_ppo(bars, cfg, store=False, resume=True)
    assert resumed.timesteps == 512 and type(resumed.model).__name__ == "A2C"
    assert resumed.model._n_updates == 2 * first.model._n_updates  # 256 more steps of 16 x 8
    cfg.ppo.algo = "ppo"
    with pytest.raises(TradeMLError, match="checkpoint is of a a2c agent, \\[ppo\\] algo is ppo"):
        train_ppo(bars, cfg, store=False, resume=True)
    cfg.ppo.algo = "sac"
    with pytest.raises(TradeMLError, match="sac writes no checkpoint"):
        train_ppo(bars, cfg, store=False, resume=True)


# Learning, on test_ppo_train's market (200,000 synthetic NQ minute bars, planted edge IC 0.15
# at horizon 5, the edge passed as the feature "edge"). A2C: [ppo] defaults but 16 envs x 8
# steps per rollout (one RMSprop step each; PPO's 256 x 32 gives it 18 steps in 150,000);
# 300,000 timesteps on the random walk, as PPO (at 150,000 it still traded on 35% of bars).
# SAC: the sac_* defaults (16 envs, one gradient step of 256 transitions per step of them,
# 2,000 random steps first). Agent / oracle on two other markets (seeds 4 and 6): A2C 0.85
# and 0.76, SAC 1.51 and 1.47.
A2C = {"algo": "a2c", "n_envs": 16, "n_steps": 8}
SAC = {"algo": "sac"}
A2C_STEPS, A2C_FLAT_STEPS, SAC_STEPS = 150_000, 300_000, 60_000


def no_edge_invented(metrics: dict) -> bool:
    """The held-out P&L is not significantly positive: P(true Sharpe > 0) below 0.95, or no Sharpe."""
    psr = metrics["held_out_sharpe"]["psr"]
    return psr is None or psr < 0.95


@pytest.mark.slow
def test_a2c_learns_a_planted_edge_out_of_sample(tmp_path):
    m = learned(tmp_path, 0.15, A2C_STEPS, **A2C).metrics
    assert m["net_pnl"] > 0
    assert m["oracle_pnl"] > 0 and m["pnl_vs_oracle"] >= 0.3, m  # measured 0.65 (24 s)


@pytest.mark.slow
def test_sac_learns_a_planted_edge_out_of_sample(tmp_path):
    m = learned(tmp_path, 0.15, SAC_STEPS, **SAC).metrics
    assert m["net_pnl"] > 0
    # SAC sets its position at once (up to 5 contracts), so it can beat the one-contract oracle
    assert m["oracle_pnl"] > 0 and m["pnl_vs_oracle"] >= 0.3, m  # measured 1.42 (54 s)
    assert m["net_pnl"] >= 0.1 * m["oracle_max_position_pnl"], m  # the 5-contract oracle: measured 0.28


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["a2c", "sac"])
def test_stays_mostly_flat_on_a_random_walk(tmp_path, algo):
    """Measured (market seed 3): A2C 1,662 trades vs 22,818 for random actions, on 4.4% of bars,
    mean |position| 0.53 vs 2.70, PSR 0.31 (net -$16,154); SAC 3,600 vs 34,468, 9.4%, 0.16 vs
    2.49, PSR 0.01 (net -$39,135: costs)."""
    steps, settings = (A2C_FLAT_STEPS, A2C) if algo == "a2c" else (SAC_STEPS, SAC)
    result = learned(tmp_path, 0.0, steps, **settings)
    m, churn = result.metrics, churning(result)
    assert m["trades"] <= 0.25 * churn["trades"], (m, churn)
    assert m["trades"] <= 0.15 * m["eval_decisions"], m
    assert m["mean_abs_position"] <= 0.4 * churn["mean_abs_position"], (m, churn)
    assert no_edge_invented(m), m
