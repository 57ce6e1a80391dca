"""PPO training: minimum data, ONNX parity with SB3, the torch-free runtime, the store,
checkpoints and --resume, evaluation through the execution model, the CLI, and learning
(planted edge vs. random walk, marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from trademl.config import Config
from trademl.data.synthetic import synthetic_bars
from trademl.errors import InsufficientDataError, TradeMLError
from trademl.market.actions import BUY, SELL
from trademl.market.broker import simulate
from trademl.models.ppo.algorithms import greedy
from trademl.models.ppo.env import TradingCore
from trademl.models.ppo.train import prepare_market, run_policy, train_ppo
from trademl.models.store import ModelStore


def small_config(tmp_path, **ppo) -> Config:
    cfg = Config()
    cfg.data.extra_feature_columns = ["edge"]
    cfg.paths.model_root = str(tmp_path / "models")
    settings = dict(total_timesteps=512, n_envs=16, n_steps=16, batch_size=64, n_epochs=1, window=4,
                    checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=256)
    for k, v in (settings | ppo).items():
        setattr(cfg.ppo, k, v)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppo")
    bars = synthetic_bars(3_000, seed=11, edge_ic=0.15)
    cfg = small_config(tmp)
    return bars, cfg, train_ppo(bars, cfg)


def test_fewer_than_1000_rows_is_a_clear_error_with_the_numbers(tmp_path):
    bars = synthetic_bars(999, seed=1)
    with pytest.raises(InsufficientDataError, match=r"at least 1000 bars.*got 999"):
        train_ppo(bars, small_config(tmp_path))


def test_onnx_policy_equals_sb3_to_1e5(trained):
    from trademl.models.ppo.export import sb3_outputs
    from trademl.models.kinds.ppo import PPORuntime

    bars, cfg, result = trained
    stored = ModelStore(cfg.paths.model_root).load("ppo", feature_names=result.prepared.feature_names)
    runtime = PPORuntime.load(stored)
    core = TradingCore(result.prepared.market("train"), result.prepared.execution, result.prepared.obs_spec,
                       result.prepared.rewards, 64, seed=4)
    core.reset()
    for a in np.random.default_rng(0).integers(0, 3, (30, 64)):  # states with positions and P&L
        core.step(a)
    obs = core.observe()
    probs, value = runtime.policy(obs)
    ref_probs, ref_value = sb3_outputs(result.model.policy, obs)
    assert np.abs(probs - ref_probs).max() <= 1e-5
    assert np.abs(value - ref_value).max() <= 1e-5
    assert probs.shape == (64, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert result.metrics["onnx_max_abs_diff"] <= 1e-5


def test_runtime_observation_from_raw_features_equals_the_environments(trained):
    from trademl.models.kinds.ppo import PPORuntime

    bars, cfg, result = trained
    p = result.prepared
    runtime = PPORuntime.load(ModelStore(cfg.paths.model_root).load("ppo"))
    core = TradingCore(p.market("eval"), p.execution, p.obs_spec, p.rewards, 1)
    core.reset(starts=p.market("eval").starts[:1])
    for a in (BUY, BUY, SELL, BUY):
        core.step([a])
    t, w = int(core.t[0]), runtime.window
    raw = p.features[t - w + 1 : t + 1][None]
    obs = runtime.observation(raw, core.position, core.balance, core.unrealized_pnl, core.recent)
    np.testing.assert_allclose(obs, core.observe(), atol=1e-6)
    assert runtime.feature_names == p.feature_names and runtime.feature_names[-1] == "edge"
    with pytest.raises(TradeMLError, match="features window must be"):
        runtime.observation(raw[:, 1:], 0, 100_000.0, 0.0, np.zeros((1, 10)))
    with pytest.raises(TradeMLError, match="recent_actions"):
        runtime.observation(raw, 0, 100_000.0, 0.0, np.full((1, 10), 7))


def test_runtime_imports_neither_torch_nor_lightgbm():
    code = ("import sys, trademl.models.kinds.ppo; "
            "bad = [m for m in ('torch', 'lightgbm', 'stable_baselines3') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_store_holds_onnx_obs_spec_and_eval_metrics(trained):
    bars, cfg, result = trained
    stored = result.stored
    assert stored.kind == "ppo"
    assert set(stored.manifest["files"]) == {"policy.onnx", "obs_spec.json", "eval.json"}  # no pickled SB3 zip
    spec = json.loads(stored.file("obs_spec.json").read_text())
    assert spec["normalizer"]["names"] == stored.feature_names and spec["window"] == 4
    assert spec["max_position"] == 5 and spec["initial_balance"] == 100_000
    m = json.loads(stored.file("eval.json").read_text())
    for key in ("net_pnl", "trades", "mean_abs_position", "flat_pnl", "vs_flat", "oracle_pnl", "pnl_vs_oracle"):
        assert key in m
    span = stored.manifest["training_span"]
    assert span["rows"] + span["eval_rows"] == len(bars) and span["end"] < span["eval_start"]
    assert stored.manifest["config"]["clip_epsilon"] == cfg.ppo.clip_epsilon
    # the training span's feature distribution, for the monitor's drift check
    reference = stored.manifest["feature_reference"]
    assert set(reference["features"]) == set(stored.feature_names) and reference["n_rows"] == span["rows"]


def test_normaliser_is_fitted_on_the_training_span_only():
    bars = synthetic_bars(3_000, seed=2, edge_ic=0.15)
    cfg = Config()
    cfg.ppo.window = 4
    feats = np.column_stack([np.arange(3_000.0), bars["edge"].to_numpy()])
    p = prepare_market(bars, cfg, features=feats, schema={"names": ["i", "edge"]})
    assert p.split == 2_400
    assert p.obs_spec.normalizer.mean[0] == pytest.approx(np.arange(2_400.0).mean())  # rows after the split unseen
    assert p.market("train").starts.max() < p.split <= p.market("eval").starts.min()


def test_evaluation_pnl_is_the_execution_models_pnl_of_the_agents_positions(trained):
    bars, cfg, result = trained
    p = result.prepared
    market = p.market("eval")
    starts = market.starts[np.r_[True, np.diff(p.segments[market.starts]) != 0]]
    w, f = p.obs_spec.window, p.obs_spec.n_features
    edge_col = (w - 1) * f + f - 1  # the last row's "edge" in the observation

    def follow_edge(obs):
        probs = np.zeros((len(obs), 3))
        probs[np.arange(len(obs)), np.where(obs[:, edge_col] > 0, BUY, SELL)] = 1.0
        return probs

    run = run_policy(greedy(follow_edge), p, market, starts)
    sim = simulate(p.execution, run["target"], p.open, p.close, p.segments)
    assert run["pnl"].sum() == pytest.approx(sim.pnl.sum(), abs=1e-6)
    assert run["costs"].sum() == pytest.approx(sim.costs.sum(), abs=1e-6)
    assert np.abs(run["target"]).max() <= 5


def test_held_out_skill_is_2_psr_minus_1_of_the_per_session_sharpe_against_flat(trained):
    """On real data there is no oracle: the skill is how sure the held-out Sharpe is above flat's."""
    import pandas as pd

    from trademl.models.ppo.train import held_out_sharpe, ppo_skill
    from trademl.stats import probabilistic_sharpe_ratio

    _, _, result = trained
    p = result.prepared
    held = np.arange(len(p.close)) >= p.split
    oracle = np.where(held, np.sign(np.nan_to_num(p.edge)), 0.0)  # the planted edge, one contract
    s = held_out_sharpe(p, oracle)
    pnl = simulate(p.execution, oracle, p.open, p.close, p.segments).pnl
    daily = pd.Series(pnl[held]).groupby(p.segments[held]).sum()
    assert s["sessions"] == len(daily) >= 2
    assert s["sharpe"] == pytest.approx(daily.mean() / daily.std(ddof=1), abs=1e-4) and s["sharpe"] > 0
    sk = ppo_skill({"held_out_sharpe": s})
    assert sk["value"] == pytest.approx(2 * s["psr"] - 1, abs=1e-9)
    assert s["psr"] == pytest.approx(probabilistic_sharpe_ratio(daily.mean() / daily.std(ddof=1), len(daily),
                                                                 _skew(daily),
                                                                 _kurt(daily)), abs=1e-3)
    lo, hi = sk["interval"]
    assert 0 <= lo <= sk["value"] + 1e-9 and sk["value"] <= hi + 1e-9 and hi <= 1
    flat = ppo_skill({"held_out_sharpe": held_out_sharpe(p, np.zeros(len(p.close)))})
    assert flat["value"] is None and "no Sharpe" in flat["note"]  # flat: nothing to judge, said so
    assert result.metrics["validation_skill"]["measure"].startswith("2 PSR - 1")


def _skew(x):
    z = (x - x.mean()) / x.std(ddof=0)
    return float((z**3).mean())


def _kurt(x):
    z = (x - x.mean()) / x.std(ddof=0)
    return float((z**4).mean())


def test_checkpoint_resume_continues_and_refuses_other_data(tmp_path):
    bars = synthetic_bars(3_000, seed=12, edge_ic=0.15)
    cfg = small_config(tmp_path, total_timesteps=256)
    first = train_ppo(bars, cfg, store=False)
    assert first.timesteps == 256 and (tmp_path / "ckpt" / "policy_state.pt").is_file()
    cfg.ppo.total_timesteps = 768
    resumed = train_ppo(bars, cfg, store=False, resume=True)
    assert resumed.timesteps == 768  # continued from 256, not restarted
    cfg.ppo.window = 5
    with pytest.raises(TradeMLError, match="other observation settings"):
        train_ppo(bars, cfg, store=False, resume=True)
    cfg.ppo.window = 4
    other = synthetic_bars(3_000, seed=13, start="2025-01-06", edge_ic=0.15)
    with pytest.raises(TradeMLError, match="checkpoint was trained on other data"):
        train_ppo(other, cfg, store=False, resume=True)
    with pytest.raises(TradeMLError, match="no checkpoint"):
        cfg.ppo.checkpoint_dir = str(tmp_path / "empty")
        train_ppo(bars, cfg, store=False, resume=True)


def test_resume_restores_the_exact_weights_and_step_count(tmp_path):
    import torch

    bars = synthetic_bars(3_000, seed=12, edge_ic=0.15)
    cfg = small_config(tmp_path, total_timesteps=256)
    first = train_ppo(bars, cfg, store=False)
    cfg.ppo.total_timesteps = 256  # nothing left to train: the resumed agent is the checkpoint
    resumed = train_ppo(bars, cfg, store=False, resume=True)
    assert resumed.timesteps == 256 and resumed.model._n_updates == first.model._n_updates
    for (name, a), (_, b) in zip(first.model.policy.state_dict().items(), resumed.model.policy.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.metrics["net_pnl"] == first.metrics["net_pnl"]


class _Payload:
    """Unpickling this object opens (creates) ``path``: what a crafted checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_checkpoint_cannot_run_code_on_resume(tmp_path):
    import pickle
    import zipfile

    import torch

    bars = synthetic_bars(3_000, seed=12, edge_ic=0.15)
    cfg = small_config(tmp_path, total_timesteps=256)
    train_ppo(bars, cfg, store=False)
    ckpt, marker = tmp_path / "ckpt", tmp_path / "payload-ran"
    good = (ckpt / "policy_state.pt").read_bytes()
    # SB3's own zip format, with a pickled payload in it, beside the checkpoint: never opened.
    with zipfile.ZipFile(ckpt / "ppo_checkpoint.zip", "w") as z:
        z.writestr("data", pickle.dumps(_Payload(marker)))
        z.writestr("policy.pth", pickle.dumps(_Payload(marker)))
    cfg.ppo.total_timesteps = 512
    assert train_ppo(bars, cfg, store=False, resume=True).timesteps == 512
    assert not marker.exists()
    # A payload in the weights file itself is refused by torch.load(weights_only=True).
    for name in ("policy_state.pt", "optimizer_state.pt"):
        (ckpt / "policy_state.pt").write_bytes(good)
        torch.save({"weights": _Payload(marker)}, ckpt / name)
        with pytest.raises(TradeMLError, match="not a plain weights file"):
            train_ppo(bars, cfg, store=False, resume=True)
        assert not marker.exists(), f"unpickling {name} ran code"


def test_cli_train_ppo_on_synthetic_bars_and_a_clear_error_on_short_files(tmp_path):
    from typer.testing import CliRunner

    from trademl.cli import app

    toml = tmp_path / "trademl.toml"
    toml.write_text(
        f'[paths]\nmodel_root = "{tmp_path / "models"}"\n'
        f'[ppo]\nn_envs = 16\nn_steps = 16\nbatch_size = 64\nn_epochs = 1\nwindow = 4\n'
        f'checkpoint_dir = "{tmp_path / "ckpt"}"\n'
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["train", "ppo", "--synthetic", "3000", "--timesteps", "256", "--config", str(toml)],
                       env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert len(ModelStore(tmp_path / "models").versions("ppo")) == 1
    stored = ModelStore(tmp_path / "models").latest("ppo")
    settings = stored.manifest["config"]
    assert (settings["total_timesteps"], settings["n_envs"], settings["n_steps"], settings["window"]) == (256, 16, 16, 4)
    span = stored.manifest["training_span"]
    assert span["rows"] + span["eval_rows"] == 3000  # --synthetic 3000: all of them, train then held out
    assert stored.manifest["metrics"]["timesteps"] == 256
    assert json.loads(stored.file("eval.json").read_text()) == stored.manifest["metrics"]
    assert (tmp_path / "ckpt" / "policy_state.pt").is_file()
    assert_ppo_summary_matches(ok.output, stored)
    assert f"wrote {tmp_path / 'ckpt'}" in ok.output.splitlines()
    short = tmp_path / "short.csv"
    b = synthetic_bars(500, seed=1)
    b[["open", "high", "low", "close", "volume"]].to_csv(short, index_label="timestamp")
    bad = runner.invoke(app, ["train", "ppo", str(short), "--symbol", "NQ", "--config", str(toml)])
    assert bad.exit_code == 2
    assert "at least 1000 bars" in bad.output and "got 500" in bad.output
    assert ModelStore(tmp_path / "models").versions("ppo") == [stored.version]  # nothing stored


def assert_ppo_summary_matches(output: str, stored) -> None:
    """The table `trademl train ppo` prints holds the stored agent's held-out figures (its manifest's
    metrics), and it names the stored model's folder."""
    m = stored.manifest["metrics"]
    lines = output.splitlines()
    title = " ".join(" ".join(lines).split())
    assert f"PPO agent, held-out span ({m['eval_decisions']} decisions, {m['eval_segments']} segments)" in title
    printed = {r[0]: r[1] for r in ([c.strip() for c in line.strip().strip("│").split("│")] for line in lines
                                    if line.strip().startswith("│")) if len(r) == 2}
    expected = {"net P&L ($)": f"{m['net_pnl']:,.2f}", "costs ($)": f"{m['costs']:,.2f}", "trades": f"{m['trades']:,}",
                "mean |position|": f"{m['mean_abs_position']:.3f}", "max drawdown ($)": f"{m['max_drawdown']:,.2f}",
                "vs flat ($)": f"{m['vs_flat']:,.2f}", "timesteps": f"{m['timesteps']:,}",
                "training (s)": f"{m['train_seconds']:.1f}", "timesteps/s": f"{m['timesteps_per_second']:,.0f}"}
    if "oracle_pnl" in m:
        expected["oracle, 1 contract ($)"] = f"{m['oracle_pnl']:,.2f}"
        expected["agent / oracle"] = "-" if m["pnl_vs_oracle"] is None else f"{m['pnl_vs_oracle']:.2f}"
    assert printed == expected
    assert f"wrote {stored.path}" in lines


# Learning. The market: 200,000 synthetic NQ minute bars, planted edge IC 0.15 at horizon 5
# (all of it on the next bar, so the edge is fresh every bar), the edge passed as the feature
# "edge" beside the 39 of the feature library. Settings: the [ppo] defaults (those of
# bench/bench_ppo.py) with 300,000 timesteps instead of 1,000,000; 150,000 for the planted
# edge, which the agent has learned by then (agent / oracle at 150,000: 0.70 on this market,
# 0.66 and 0.64 on two others, seeds 4 and 6; 0.3 is asked). Staying flat on the random walk
# takes longer: at 200,000 it traded 5,438 times against a bound of 5,704, so it keeps 300,000.
LEARN_BARS, LEARN_STEPS, EDGE_STEPS = 200_000, 300_000, 150_000


def learned(tmp_path, edge_ic: float, steps: int = LEARN_STEPS, **ppo):
    """The agent trained on the learning market; ``ppo``: other [ppo] settings (algo, ...)."""
    bars = synthetic_bars(LEARN_BARS, seed=3, edge_ic=edge_ic, edge_horizon=5)
    cfg = Config()
    cfg.data.extra_feature_columns = ["edge"]
    cfg.ppo.total_timesteps = steps
    cfg.ppo.checkpoint_dir = str(tmp_path / "ckpt")
    cfg.paths.model_root = str(tmp_path / "models")
    for k, v in ppo.items():
        setattr(cfg.ppo, k, v)
    return train_ppo(bars, cfg, store=False)


def churning(result) -> dict:
    """What an agent that has learned nothing does on the same held-out bars: uniform actions
    (codes, or targets in [-1, 1] for a continuous agent)."""
    p = result.prepared
    market = p.market("eval")
    starts = market.starts[np.r_[True, np.diff(p.segments[market.starts]) != 0]]
    rng = np.random.default_rng(0)
    if p.action_mode == "target":
        act = lambda obs: rng.uniform(-1, 1, len(obs))  # noqa: E731
    else:
        act = greedy(lambda obs: rng.random((len(obs), 3)))
    run = run_policy(act, p, market, starts)
    return {"trades": int(np.count_nonzero(run["trade_qty"])), "mean_abs_position": float(np.abs(run["position"]).mean())}


@pytest.mark.slow
def test_agent_learns_a_planted_edge_out_of_sample(tmp_path):
    m = learned(tmp_path, 0.15, EDGE_STEPS).metrics
    assert m["net_pnl"] > 0
    assert m["oracle_pnl"] > 0 and m["pnl_vs_oracle"] >= 0.3, m  # measured 0.70 (0.69 at 300,000 timesteps)


@pytest.mark.slow
def test_agent_stays_mostly_flat_on_a_random_walk(tmp_path):
    result = learned(tmp_path, 0.0)
    m, churn = result.metrics, churning(result)
    assert m["trades"] <= 0.25 * churn["trades"], (m, churn)  # measured 3,032 vs 22,818
    assert m["trades"] <= 0.15 * m["eval_decisions"], m
    assert m["mean_abs_position"] <= 0.4 * churn["mean_abs_position"], (m, churn)  # measured 0.46 vs 2.70
