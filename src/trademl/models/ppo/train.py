"""Train the PPO agent with stable-baselines3, evaluate it on held-out bars, store it.

    bars -> causal features (the feature library) -> normaliser fitted on the training span
         -> TradingVecEnv (N envs in numpy) -> SB3 PPO, A2C or SAC ([ppo] algo; algorithms.py)
         -> ONNX export (checked against SB3 to 1e-5) -> evaluation on the held-out span
         -> model store, kind "ppo": policy.onnx, obs_spec.json, eval.json (the manifest's
            config names the algorithm, which the serving runtime reads)

The last ``eval_fraction`` of the bars is held out: no episode starts there, the
normaliser never sees it, and the deterministic agent (argmax of its probabilities; SAC:
its mean target) is scored there against staying flat and, when the bars carry a planted
``edge`` column (synthetic market), against an oracle that trades that edge.

Oracle (precise): at the close of every bar the agent decides on, hold
``sign(edge_t)`` contracts from the open of bar t+1, through the same execution model
(same costs, flattened at segment ends). One contract, because one action moves the
position by one contract: with an edge that is fresh every bar, that is the most any
policy in this action space can turn into P&L (see bench/README.md, PPO). The
``max_position`` version of the same oracle is reported too (``oracle_max_position_pnl``):
SAC sets its position directly, so that is the most it could turn into P&L.

Checkpoints (SB3 zip + normaliser) go to ``[ppo] checkpoint_dir`` every
``checkpoint_every`` timesteps and at the end, through SB3's ``CheckpointCallback``; each
one replaces the last as ``ppo_checkpoint.zip`` beside ``checkpoint.json`` (what it was
trained on), so the folder always holds the newest. ``resume=True`` continues from there to
``total_timesteps``. The zip is for resuming only; serving loads policy.onnx. The progress
bar is SB3's ``ProgressBarCallback`` (tqdm + rich). SAC writes no checkpoint and cannot
resume: its replay buffer (the rest of its state) is not saved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from trademl.config import Config, resolve_config
from trademl.segments import segment_ids
from trademl.errors import DataError, InsufficientDataError, TradeMLError
from trademl.models.base import skill
from trademl.market.contracts import ContractSpec, spec_of_bars
from trademl.market.broker import simulate
from trademl.market.execution import ExecutionModel
from trademl.models.ppo.algorithms import action_mode, deterministic_actions, env_count, new_model
from trademl.models.ppo.env import MarketData, TradingCore
from trademl.models.ppo.observation import FeatureNormalizer, ObservationSpec
from trademl.models.ppo.rewards import RewardSettings
from trademl.risk.account import trading_days
from trademl.risk.rules import AccountRules, rules_for
from trademl.segments import segment_start_mask

KIND = "ppo"
POLICY_FILE = "policy.onnx"
OBS_SPEC_FILE = "obs_spec.json"
EVAL_FILE = "eval.json"
# A checkpoint is plain tensors and JSON, never a pickle: resuming reads the weights with
# torch.load(weights_only=True), so a crafted checkpoint cannot run code (SB3's own zip
# unpickles its "data" entry with cloudpickle).
CHECKPOINT_POLICY = "policy_state.pt"
CHECKPOINT_OPTIMIZER = "optimizer_state.pt"
CHECKPOINT_STATE = "checkpoint.json"
# An account worth of P&L inputs is scaled by 1% of the initial balance.
PNL_SCALE_FRACTION = 0.01


@dataclass
class PreparedMarket:
    """Everything the environments need, computed once from the bars."""

    symbol: str
    contract: ContractSpec
    execution: ExecutionModel
    schema: dict
    features: np.ndarray
    open: np.ndarray
    close: np.ndarray
    segments: np.ndarray  # the bars' segments plus a break at the split: no episode spans it
    split: int
    index: pd.DatetimeIndex
    obs_spec: ObservationSpec
    rewards: RewardSettings
    edge: np.ndarray | None = None
    rules: AccountRules | None = None  # [ppo] account_rules: the environment trades under them
    action_mode: str = "discrete"  # what the agent's actions are ([ppo] algo; algorithms.action_mode)
    _markets: dict = field(default_factory=dict, repr=False)

    @property
    def feature_names(self) -> list[str]:
        return list(self.schema["names"])

    def market(self, span: str, rules: AccountRules | None = None) -> MarketData:
        """The "train" (before the split) or "eval" (held-out) span as env data, with the trading
        days of ``rules`` (by default the agent's own, if it has any)."""
        rules = rules or self.rules
        key = (span, None if rules is None else rules.model_dump_json())
        if key not in self._markets:
            lo, hi = (0, self.split) if span == "train" else (self.split, len(self.close))
            day, flat = trading_days(self.index, rules) if rules is not None else (None, None)
            self._markets[key] = MarketData.build(self.features, self.open, self.close, self.segments,
                                                  self.obs_spec, (lo, hi), self.edge, day, flat)
        return self._markets[key]

    def training_span(self) -> dict:
        return {"start": str(self.index[0]), "end": str(self.index[self.split - 1]), "rows": int(self.split),
                "eval_start": str(self.index[self.split]), "eval_end": str(self.index[-1]),
                "eval_rows": int(len(self.index) - self.split)}

    def fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed on these bars."""
        return {"symbol": self.symbol, "features": self.feature_names, **self.training_span()}


@dataclass
class PPOTrainingResult:
    stored: object | None  # StoredModel
    metrics: dict
    timesteps: int
    train_seconds: float
    written: list[Path] = field(default_factory=list)
    model: object | None = field(default=None, repr=False)  # the SB3 PPO, for notebooks and tests
    prepared: PreparedMarket | None = field(default=None, repr=False)


def observation_features(bars: pd.DataFrame, contract: ContractSpec, cfg: Config) -> tuple[np.ndarray, dict]:
    """The feature library on the bars (+ configured extra columns): raw matrix and schema dict."""
    from trademl.data.features import compute_features

    extra = tuple(cfg.data.extra_feature_columns)
    missing = [c for c in extra if c not in bars.columns]
    if missing:
        raise DataError(f"extra feature columns {missing} are not in the bars", where=bars.attrs.get("source", "bars"))
    feats = compute_features(bars, symbol=contract.root, max_gap_minutes=cfg.data.max_gap_minutes, extra_columns=extra,
                             contract=contract)
    schema = feats.attrs.get("schema")
    schema = schema.to_dict() if schema is not None else {"names": list(feats.columns)}
    return feats.to_numpy(np.float64), schema


def prepare_market(bars: pd.DataFrame, cfg: Config | None = None, *, features=None, schema: dict | None = None,
                   symbol: str | None = None) -> PreparedMarket:
    """Bars (+ optional precomputed raw features [n, F]) -> the environments' data."""
    cfg = resolve_config(cfg)
    p = cfg.ppo
    n = len(bars)
    source = bars.attrs.get("source", "bars")
    if n < p.MIN_ROWS:
        raise InsufficientDataError(f"the PPO agent needs at least {p.MIN_ROWS} bars (the guide's minimum); got {n}",
                                    where=source, hint="use more data or the synthetic market")
    if not 0 < p.eval_fraction < 1:
        raise TradeMLError(f"eval_fraction must be between 0 and 1, got {p.eval_fraction}", where="ppo.eval_fraction")
    symbol = symbol or bars.attrs.get("symbol") or cfg.data.symbol
    contract = spec_of_bars(bars, symbol, cfg)  # a dataset's own spec, else the symbol's
    if features is None:
        features, schema = observation_features(bars, contract, cfg)
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] != n:
        raise DataError(f"features have {features.shape[0]} rows, bars have {n}", where="features")
    schema = schema or {"names": [f"f{i}" for i in range(features.shape[1])]}
    split = int(round(n * (1 - p.eval_fraction)))
    seg = segment_ids(bars, cfg.data.max_gap_minutes) + (np.arange(n) >= split)
    close = bars["close"].to_numpy(np.float64)
    normalizer = FeatureNormalizer.fit(features, schema["names"], np.arange(split))
    rules = rules_for(p.account_rules) if p.account_rules else None
    cap, balance = cfg.account.max_position_size, cfg.account.initial_balance
    if rules is not None:  # the account's cap and balance; the configured cap still holds if smaller
        cap, balance = min(cap, rules.max_contracts(contract.root)), rules.starting_balance
    obs_spec = ObservationSpec(normalizer, p.window, cap, balance, PNL_SCALE_FRACTION * balance, rules)
    rewards = RewardSettings.from_config(p, _one_contract_bar_pnl_std(close[:split], seg[:split], contract))
    prepared = PreparedMarket(symbol, contract, ExecutionModel.from_config(contract, cfg.costs, cap),
                              schema, features, bars["open"].to_numpy(np.float64), close, seg, split, bars.index,
                              obs_spec, rewards, bars["edge"].to_numpy(np.float64) if "edge" in bars.columns else None,
                              rules, action_mode(p.algo))
    for span in ("train", "eval"):
        if len(prepared.market(span).starts) == 0:
            raise InsufficientDataError(
                f"the {span} span has no bar where an episode can start (needs {p.window} complete feature rows "
                f"and 2 more bars inside one segment)", where=source, hint="use more data or a smaller [ppo] window")
    return prepared


def _one_contract_bar_pnl_std(close: np.ndarray, seg: np.ndarray, contract: ContractSpec) -> float:
    """Dollar std of one contract's bar-to-bar P&L inside segments: the reward unit."""
    same = seg[1:] == seg[:-1]
    moves = np.diff(close)[same] * contract.point_value
    std = float(np.std(moves)) if len(moves) > 1 else 0.0
    return std if np.isfinite(std) and std > 0 else contract.tick_value


def make_vec_env(prepared: PreparedMarket, cfg: Config, span: str = "train", n_envs: int | None = None, seed=None):
    from trademl.models.ppo.vec_env import TradingVecEnv

    p = cfg.ppo
    return TradingVecEnv(prepared.market(span), prepared.execution, prepared.obs_spec, prepared.rewards,
                         n_envs or env_count(cfg), p.episode_length, p.seed if seed is None else seed,
                         prepared.rules, p.account_start, prepared.action_mode)


def train_ppo(bars: pd.DataFrame, cfg: Config | None = None, *, features=None, schema: dict | None = None,
              symbol: str | None = None, resume: bool = False, progress: bool = False, console=None,
              store: bool = True) -> PPOTrainingResult:
    """Train, evaluate on the held-out span and (with ``store``) save to the model store."""
    import torch

    cfg = resolve_config(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.ppo.torch_threads)
    try:
        return _train(bars, cfg, features, schema, symbol, resume, progress, console, store)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was (a walk-forward trains more models)


def checkpoint_folder(cfg: Config) -> Path:
    """[ppo] checkpoint_dir, else checkpoints/ppo beside [paths] model_root (where the LSTM's go)."""
    if cfg.ppo.checkpoint_dir is not None:
        return Path(cfg.ppo.checkpoint_dir)
    return Path(cfg.paths.model_root).parent / "checkpoints" / "ppo"


def _train(bars, cfg: Config, features, schema, symbol, resume, progress, console, store) -> PPOTrainingResult:
    p = cfg.ppo
    checkpointed = p.algo != "sac"
    if resume and not checkpointed:
        raise TradeMLError("--resume continues a ppo or a2c agent; sac writes no checkpoint (its replay buffer, "
                           "the rest of its state, is not saved)", where="ppo.algo", hint="train sac without --resume")
    prepared = prepare_market(bars, cfg, features=features, schema=schema, symbol=symbol)
    env = make_vec_env(prepared, cfg)
    checkpoints = checkpoint_folder(cfg)
    model = _load_checkpoint(checkpoints, env, prepared, cfg) if resume else new_model(env, cfg)
    start_steps = model.num_timesteps
    t0 = time.perf_counter()
    if p.total_timesteps > start_steps:  # the callbacks checkpoint along the way and at the end
        callback = _callbacks(cfg, prepared, checkpoints if checkpointed else None, progress, console)
        model.learn(p.total_timesteps - start_steps, callback=callback, reset_num_timesteps=not resume)
    train_seconds = time.perf_counter() - t0
    metrics = {"algo": p.algo} | evaluate_agent(deterministic_actions(model), prepared)
    metrics.update(timesteps=int(model.num_timesteps), train_seconds=round(train_seconds, 2),
                   timesteps_per_second=round((model.num_timesteps - start_steps) / max(train_seconds, 1e-9), 1))
    result = PPOTrainingResult(None, metrics, int(model.num_timesteps), train_seconds, model=model, prepared=prepared)
    if store:
        result.stored = store_agent(model, prepared, cfg, metrics)
        result.written.append(result.stored.path)
    if checkpointed:
        result.written.append(checkpoints)
    return result


def train_ppo_from_source(source=None, cfg: Config | None = None, *, symbol: str | None = None,
                          synthetic: int | None = None, edge_ic: float = 0.15, edge_horizon: int = 5,
                          **train_kw) -> PPOTrainingResult:
    """What `trademl train ppo` runs: a bars file, a dataset folder (its features are used as
    built), ``synthetic`` bars with a planted edge (passed to the agent as the feature
    ``edge``), or by default the bundled ES sample."""
    cfg = resolve_config(cfg).model_copy(deep=True)
    if synthetic:
        from trademl.data.synthetic import synthetic_bars

        bars = synthetic_bars(int(synthetic), seed=cfg.ppo.seed, edge_ic=edge_ic, edge_horizon=edge_horizon,
                              symbol=symbol or "NQ")
        if "edge" not in cfg.data.extra_feature_columns:
            cfg.data.extra_feature_columns = [*cfg.data.extra_feature_columns, "edge"]
        return train_ppo(bars, cfg, **train_kw)
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_dir():
        from trademl.data.dataset import load_dataset

        ds = load_dataset(path)
        return train_ppo(ds.bars(), cfg, features=ds.X, schema=ds.manifest["feature_schema"],
                         symbol=symbol or ds.symbol, **train_kw)
    from trademl.data.bars import bundled_sample_path, load_bars

    bars = load_bars(source or bundled_sample_path(), symbol=symbol, max_gap_minutes=cfg.data.max_gap_minutes,
                     tz=cfg.data.timezone)  # source: one file, a list or a glob
    return train_ppo(bars, cfg, symbol=symbol, **train_kw)


def print_summary(result: PPOTrainingResult, console) -> None:
    """The held-out figures and what was written."""
    from rich.table import Table

    m = result.metrics
    algo = m.get("algo", "ppo").upper()
    t = Table(title=f"{algo} agent, held-out span ({m['eval_decisions']} decisions, {m['eval_segments']} segments)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [("net P&L ($)", f"{m['net_pnl']:,.2f}"), ("costs ($)", f"{m['costs']:,.2f}"),
            ("trades", f"{m['trades']:,}"), ("mean |position|", f"{m['mean_abs_position']:.3f}"),
            ("max drawdown ($)", f"{m['max_drawdown']:,.2f}"), ("vs flat ($)", f"{m['vs_flat']:,.2f}")]
    if "oracle_pnl" in m:
        rows += [("oracle, 1 contract ($)", f"{m['oracle_pnl']:,.2f}"),
                 ("agent / oracle", "-" if m["pnl_vs_oracle"] is None else f"{m['pnl_vs_oracle']:.2f}")]
    if "account" in m:
        a = m["account"]
        lo, hi = a["breach_interval_95"]
        near = a["near_limits"]
        rows += [(f"{a['rules']}: accounts breached", f"{a['breach_share']:.0%} of {a['accounts']} ({lo:.0%}-{hi:.0%})"),
                 (f"{a['rules']}: accounts passed", f"{a['pass_share']:.0%}"),
                 (f"{a['rules']}: breached in a session started near a limit",
                  f"{near['breach_share']:.0%} of {near['accounts']}")]
    rows += [("timesteps", f"{m['timesteps']:,}"), ("training (s)", f"{m['train_seconds']:.1f}"),
             ("timesteps/s", f"{m['timesteps_per_second']:,.0f}")]
    for r in rows:
        t.add_row(*r)
    console.print(t)
    for p in result.written:
        console.print(f"wrote {p}")


def store_agent(model, prepared: PreparedMarket, cfg: Config, metrics: dict):
    """Export to ONNX, prove it equals SB3, write policy.onnx + obs_spec.json + eval.json atomically."""
    from trademl.data.reference import feature_reference
    from trademl.models.ppo.export import check_onnx_matches, export_agent
    from trademl.models.store import ModelStore

    probe = prepared.market("eval")
    probe_obs = TradingCore(probe, prepared.execution, prepared.obs_spec, prepared.rewards, 256,
                            cfg.ppo.episode_length, seed=0, rules=prepared.rules, account_start="random")
    probe_obs.reset()
    with tempfile.TemporaryDirectory() as tmp:
        cap, obs_dim = prepared.obs_spec.max_position, prepared.obs_spec.obs_dim
        onnx_path = export_agent(model, cap, obs_dim, Path(tmp) / POLICY_FILE)
        metrics["onnx_max_abs_diff"] = check_onnx_matches(model, onnx_path, probe_obs.observe(), cap)
        ppo_cfg = cfg.ppo.model_dump() | {"costs": cfg.costs.model_dump(), "symbol": prepared.symbol,
                                          "reward_scale": prepared.rewards.reward_scale}
        with ModelStore(cfg.paths.model_root).writer(
            KIND, feature_schema=prepared.schema, training_span=prepared.training_span(), config=ppo_cfg,
            metrics=metrics, contract=prepared.contract.to_dict(),
            # raw features of the training span, for the monitor's drift check
            feature_reference=feature_reference(prepared.features[: prepared.split], prepared.feature_names),
        ) as w:
            shutil.copyfile(onnx_path, w.path / POLICY_FILE)
            (w.path / OBS_SPEC_FILE).write_text(json.dumps(prepared.obs_spec.to_dict(), indent=2))
            (w.path / EVAL_FILE).write_text(json.dumps(metrics, indent=2))
    return w.stored


def evaluate_agent(act, prepared: PreparedMarket) -> dict:
    """Run the deterministic agent (``act``: observations -> its actions) over every held-out
    segment, from its first complete window to its end; score it against flat and (with a
    planted edge) the oracle."""
    market = prepared.market("eval")
    firsts = _first_start_per_segment(market.starts, prepared.segments)
    run = run_policy(act, prepared, market, firsts)
    metrics = {
        "eval_segments": int(len(firsts)),
        "eval_decisions": int(run["decided"].sum()),
        "net_pnl": round(float(run["pnl"].sum()), 2),
        "costs": round(float(run["costs"].sum()), 2),
        "trades": int(np.count_nonzero(run["trade_qty"])),
        "contracts_traded": int(np.abs(run["trade_qty"]).sum()),
        "mean_abs_position": round(float(np.abs(run["position"]).mean()), 4),
        "time_in_market": round(float(np.mean(run["position"] != 0)), 4),
        "max_drawdown": round(float(_max_drawdown(run["pnl"])), 2),
        "flat_pnl": 0.0,
    }
    metrics["vs_flat"] = metrics["net_pnl"] - metrics["flat_pnl"]
    if prepared.edge is not None:
        metrics.update(oracle_metrics(prepared, run["decided"], metrics["net_pnl"]))
    if prepared.rules is not None:
        from trademl.models.ppo.account_eval import evaluate_under_rules

        metrics["account"] = evaluate_under_rules(act, prepared, prepared.rules)
    metrics["held_out_sharpe"] = held_out_sharpe(prepared, run["target"])
    metrics["validation_skill"] = ppo_skill(metrics)
    metrics["headline"] = {k: metrics[k] for k in ("net_pnl", "trades", "pnl_vs_oracle") if metrics.get(k) is not None}
    return metrics


def held_out_sharpe(prepared: PreparedMarket, target: np.ndarray) -> dict:
    """The deterministic agent's Sharpe against flat over the held-out sessions (one per segment:
    the net P&L of each, through the execution model), with its probabilistic Sharpe ratio
    (P(true Sharpe > 0), Bailey & Lopez de Prado) and a 95% interval (its standard error)."""
    from trademl.stats import probabilistic_sharpe_ratio, sharpe_moments, sharpe_standard_error

    pnl = simulate(prepared.execution, target, prepared.open, prepared.close, prepared.segments).pnl
    held = slice(prepared.split, None)
    _, session = np.unique(prepared.segments[held], return_inverse=True)
    daily = np.bincount(session, weights=pnl[held])
    sharpe, skew, kurt, n = sharpe_moments(daily)
    se = sharpe_standard_error(sharpe, n, skew, kurt)
    if not np.isfinite(se):
        return {"sessions": int(n), "sharpe": None, "psr": None, "interval": None}
    return {"sessions": int(n), "sharpe": round(sharpe, 4), "psr": round(probabilistic_sharpe_ratio(sharpe, n, skew, kurt), 4),
            "interval": [round(sharpe - 1.96 * se, 4), round(sharpe + 1.96 * se, 4)], "standard_error": round(se, 4)}


def ppo_skill(metrics: dict) -> dict:
    """2 PSR - 1 of the held-out per-session Sharpe against flat: 0 when it is no likelier above
    flat than below, 1 when surely above; the interval maps the Sharpe's 95% interval through
    the same function. Every market has this one (a synthetic one's oracle share is reported
    beside it, in ``pnl_vs_oracle``)."""
    s = metrics["held_out_sharpe"]
    measure = "2 PSR - 1 of the held-out per-session Sharpe against flat"
    if s["psr"] is None:
        return skill(None, measure, note=f"no Sharpe to judge: fewer than 2 held-out sessions, or P&L that never "
                                         f"varied over {s['sessions']}")
    lo, hi = (2 * NormalDist().cdf(v / s["standard_error"]) - 1 for v in s["interval"])
    return skill(2 * s["psr"] - 1, measure, interval=(max(lo, 0.0), max(hi, 0.0)),
                 note=f"Sharpe {s['sharpe']:.3f} per session over {s['sessions']} (95%: {s['interval'][0]:.3f} to "
                      f"{s['interval'][1]:.3f})")


def run_policy(act, prepared: PreparedMarket, market: MarketData, starts: np.ndarray) -> dict:
    """Step one env per start with ``act`` (observations -> actions of ``prepared.action_mode``)
    until its segment ends; per-step arrays of the live envs, plus ``target`` (position decided
    at the close of each bar, 0 elsewhere) and ``decided``."""
    core = TradingCore(market, prepared.execution, prepared.obs_spec, prepared.rewards, len(starts),
                       episode_length=np.iinfo(np.int64).max, action_mode=prepared.action_mode)
    core.reset(starts=starts)
    live = np.ones(len(starts), bool)
    n = len(market.close)
    target, decided = np.zeros(n), np.zeros(n, bool)
    out = {k: [] for k in ("pnl", "costs", "trade_qty", "position")}
    while live.any():
        t = core.t.copy()
        r = core.step(act(core.observe()))
        target[t[live]], decided[t[live]] = r.position[live], True
        for k in out:
            out[k].append(getattr(r, k)[live])
        live &= ~r.terminated
        # A finished env restarts at its own start and keeps stepping; its results are ignored.
        core.reset(r.terminated, starts=starts[r.terminated])
    return {k: np.concatenate(v) for k, v in out.items()} | {"target": target, "decided": decided}


def oracle_metrics(prepared: PreparedMarket, decided: np.ndarray, agent_pnl: float) -> dict:
    """P&L of the planted-edge oracle on the agent's decision bars (see the module docstring)."""
    ex = prepared.execution
    direction = np.where(decided, np.sign(np.nan_to_num(prepared.edge)), 0.0)
    one = simulate(ex, direction, prepared.open, prepared.close, prepared.segments).pnl.sum()
    full = simulate(ex, direction * ex.max_position, prepared.open, prepared.close, prepared.segments).pnl.sum()
    return {"oracle_pnl": round(float(one), 2), "oracle_max_position_pnl": round(float(full), 2),
            "pnl_vs_oracle": round(float(agent_pnl / one), 4) if one > 0 else None}


def _first_start_per_segment(starts: np.ndarray, segments: np.ndarray) -> np.ndarray:
    seg = segments[starts]
    return starts[segment_start_mask(seg)]


def _max_drawdown(pnl: np.ndarray) -> float:
    equity = np.cumsum(pnl)
    return float(np.max(np.maximum.accumulate(np.r_[0.0, equity])[1:] - equity, initial=0.0))


def _callbacks(cfg: Config, prepared: PreparedMarket, checkpoints: Path | None, progress: bool, console):
    """The checkpoint schedule (``checkpoints`` None: none) and the progress bar."""
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, ProgressBarCallback

    class Checkpoint(CheckpointCallback):
        """SB3's checkpoint schedule, every ``checkpoint_every`` timesteps, plus one at the end
        (after the last policy update); each save writes the weights-only checkpoint."""

        def __init__(self):
            super().__init__(save_freq=1, save_path=str(checkpoints), name_prefix="ppo")

        def _init_callback(self) -> None:
            super()._init_callback()
            # One callback call is one env.step() of all the environments.
            self.save_freq = max(1, cfg.ppo.checkpoint_every // self.training_env.num_envs)

        def _on_step(self) -> bool:
            if self.n_calls % self.save_freq == 0:
                save_checkpoint(checkpoints, self.model, prepared)
            return True

        def _on_training_end(self) -> None:
            save_checkpoint(checkpoints, self.model, prepared)

    class Progress(ProgressBarCallback):
        """SB3's progress bar on ``console``, over all timesteps (a resumed run starts part-way),
        with the mean net P&L of recent episodes."""

        def _on_training_start(self) -> None:
            from tqdm import TqdmExperimentalWarning
            from tqdm.rich import tqdm

            with warnings.catch_warnings():  # "rich is experimental", as SB3 itself silences it
                warnings.simplefilter("ignore", TqdmExperimentalWarning)
                self.pbar = tqdm(total=self.locals["total_timesteps"], initial=self.model.num_timesteps, desc=name,
                                 options={"console": console} if console is not None else {})

        def _on_rollout_end(self) -> None:
            eps = self.model.ep_info_buffer
            if eps:
                self.pbar.set_description(f"{name}, episode P&L ${np.mean([e['pnl'] for e in eps]):,.0f}", refresh=False)

    name = cfg.ppo.algo.upper()
    return CallbackList(([Checkpoint()] if checkpoints is not None else []) + ([Progress()] if progress else []))


def save_checkpoint(folder: Path, model, prepared: PreparedMarket) -> None:
    """The policy's and the optimizer's state dicts (torch.save of tensors) and what they were
    trained on, each file replaced atomically, the state file last."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for name, state in ((CHECKPOINT_POLICY, model.policy.state_dict()),
                        (CHECKPOINT_OPTIMIZER, model.policy.optimizer.state_dict())):
        tmp = folder / (name + ".part")
        torch.save(state, tmp)
        os.replace(tmp, folder / name)
    state = {"algo": type(model).__name__.lower(), "num_timesteps": int(model.num_timesteps),
             "n_updates": int(model._n_updates), "fingerprint": prepared.fingerprint(), "obs_spec": prepared.obs_spec.to_dict()}
    tmp = folder / (CHECKPOINT_STATE + ".part")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, folder / CHECKPOINT_STATE)


def _load_checkpoint(folder: Path, env, prepared: PreparedMarket, cfg: Config):
    """A new agent with the checkpoint's weights, optimizer state and step count."""
    import pickle

    import torch

    paths = [folder / n for n in (CHECKPOINT_POLICY, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE)]
    if not all(p.is_file() for p in paths):
        raise TradeMLError("no checkpoint to resume from", where=str(folder), hint="train once without --resume")
    try:
        state = json.loads(paths[2].read_text())
        fingerprint, obs_spec, steps = state["fingerprint"], state["obs_spec"], int(state["num_timesteps"])
    except (ValueError, KeyError, TypeError) as e:
        raise TradeMLError(f"unreadable checkpoint state: {e}", where=str(paths[2]),
                           hint="train without --resume") from None
    trained_with = state.get("algo", "ppo")  # a checkpoint from before [ppo] algo: PPO
    if trained_with != cfg.ppo.algo:
        raise TradeMLError(f"the checkpoint is of a {trained_with} agent, [ppo] algo is {cfg.ppo.algo}",
                           where=str(folder), hint=f"resume with --algo {trained_with}, or train without --resume")
    if fingerprint != prepared.fingerprint():
        diff = {k: (fingerprint.get(k), v) for k, v in prepared.fingerprint().items() if fingerprint.get(k) != v}
        raise TradeMLError(f"the checkpoint was trained on other data: {diff}", where=str(folder),
                           hint="resume with the same bars and config, or train without --resume")
    if obs_spec != prepared.obs_spec.to_dict():
        raise TradeMLError("the checkpoint was trained with other observation settings (window, features, "
                           "[account] max_position_size, initial_balance)", where=str(folder),
                           hint="resume with the same config, or train without --resume")
    model = new_model(env, cfg)
    try:
        model.policy.load_state_dict(torch.load(paths[0], map_location="cpu", weights_only=True))
        model.policy.optimizer.load_state_dict(torch.load(paths[1], map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as e:
        raise TradeMLError(f"the checkpoint is not a plain weights file of this agent: {str(e).splitlines()[0]}",
                           where=str(folder), hint="train without --resume") from None
    model.num_timesteps = steps
    model._n_updates = int(state.get("n_updates", 0))
    return model
