"""Every setting of trademl, with the guide's defaults and names.

Settings come from pydantic defaults, then `trademl.toml` (or the file named by
``--config`` / ``TRADEML_CONFIG``), then command-line flags. Section names follow the
flow: [data], [costs], [account], [lgbm], [lstm], [ppo], [ensemble], [backtest], [serve],
[monitor]. Each setting has one home: code that needs a default reads it from here
(``resolve_config``), never retypes it.
Where the guide names a setting (SEQUENCE_LENGTH, initial_balance, clip_epsilon, ...)
the field has exactly that name.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trademl.errors import TradeMLError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    symbol: str = "ES"
    horizons: list[int] = Field(default_factory=lambda: [5, 30])
    # A gap longer than this (minutes) between consecutive bars starts a new segment:
    # features restart and no label or sequence spans it.
    max_gap_minutes: int = 15
    resample_minutes: int = 1
    # Extra numeric bar columns passed through as features (exogenous signals).
    extra_feature_columns: list[str] = Field(default_factory=list)
    chunk_rows: int = 500_000


class CostsConfig(_Section):
    """The one cost model: used by labels, the PPO environment and the backtester."""

    commission_per_side: float = 2.25  # dollars per contract per side
    slippage_ticks: float = 1.0  # ticks against us on every fill
    # Signal threshold: a move counts as buy/sell only beyond this multiple of round-trip costs.
    signal_cost_multiple: float = 1.5


class AccountConfig(_Section):
    """The trading account: read by the labels, the PPO environment, the backtester and the
    request validation alike."""

    initial_balance: float = 100_000.0
    max_position_size: int = 5  # contracts, long or short


class LGBMConfig(_Section):
    num_leaves: int = 31
    learning_rate: float = 0.05
    n_estimators: int = 500
    min_child_samples: int = 200
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 50
    n_folds: int = 4
    seed: int = 7
    # Share of each fold's training rows (its latest part, purged) used for early stopping.
    valid_fraction: float = 0.2
    # Bars dropped after the purge between training and test; None = the horizon.
    embargo_bars: int | None = None
    # Fewer labelled rows than this (both sides counted) cannot give honest figures.
    min_rows: int = 2000
    # At most this many equal-count bins feed the isotonic calibration map.
    calibration_bins: int = 50
    # LightGBM threads. 1 by default: OpenMP threads spin-wait, so on a busy machine two of
    # them took 70x longer than one on the same fit (33 s vs 0.47 s, 160k rows); 0 = all cores.
    num_threads: int = 1


class LSTMConfig(_Section):
    SEQUENCE_LENGTH: int = 60
    PREDICTION_HORIZON: int = 5
    HIDDEN_SIZE: int = 128
    NUM_LAYERS: int = 2
    DROPOUT: float = 0.2
    BATCH_SIZE: int = 256
    LEARNING_RATE: float = 1e-3
    EPOCHS: int = 20
    PATIENCE: int = 3
    N_FOLDS: int = 3
    MIN_SEQUENCES: int = 200
    # Two cores on the reference machine; the same count also keeps results bit-identical.
    TORCH_THREADS: int = 2
    seed: int = 7


class PPOConfig(_Section):
    learning_rate: float = 3e-4
    total_timesteps: int = 1_000_000
    clip_epsilon: float = 0.2
    # Rollouts of n_envs x n_steps = 8192 steps from the numpy VecEnv, minibatches of 1024,
    # 10 epochs: the settings of the learning tests and of bench/bench_ppo.py (1M steps).
    n_steps: int = 32
    n_envs: int = 256
    batch_size: int = 1024
    n_epochs: int = 10
    # A short horizon: minute-bar edges and costs play out within a few bars, and a long
    # one adds the noise of many future bars to every advantage (learned 2x slower).
    gamma: float = 0.5
    gae_lambda: float = 0.9
    ent_coef: float = 0.0
    window: int = 4
    episode_length: int = 390
    reward: str = "sharpe"  # "pnl" or "sharpe" (differential Sharpe ratio)
    dsr_eta: float = 0.01  # adaptation rate of the differential Sharpe ratio's running moments
    # Per bar, minus risk_penalty * position**2 (one contract's bar variance = 1): go flat without an edge.
    risk_penalty: float = 0.05
    drawdown_penalty: float = 0.0
    # Per contract traded, on top of the real costs: without it the agent trades on noise.
    trade_penalty: float = 0.1
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    # The last fraction of the bars is held out: never trained on, the agent is evaluated there.
    eval_fraction: float = 0.2
    checkpoint_dir: str = "artifacts/checkpoints/ppo"
    checkpoint_every: int = 200_000  # timesteps between checkpoints (for --resume)
    # One thread: the policy's matmuls are small, and on a shared 2-core machine a second
    # OpenMP thread waits on the first (measured 10-20x slower under load; bench/README.md).
    torch_threads: int = 1
    MIN_ROWS: int = 1000
    seed: int = 7


class EnsembleConfig(_Section):
    # Weights per model kind (lgb_5m, lgb_30m, lstm, ppo); None = from each model's
    # validation skill in its manifest (README: "How the ensemble decides").
    weights: dict[str, float] | None = None


class BacktestConfig(_Section):
    # The guide's rule: BUY/SELL move the position by one contract, only above this confidence.
    confidence_threshold: float = 0.7
    n_folds: int = 4
    # The report's confidence chart: a signal hits when the price moved its way from the
    # fill (next open) to the close this many bars after the signal.
    hit_rate_horizon: int = 5
    random_baseline_seed: int = 0


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    token_env: str = "TRADEML_TOKEN"
    max_body_bytes: int = 1_000_000
    # A newer `latest` in the model store is picked up at most this often (seconds).
    reload_interval_s: float = 1.0
    max_batch: int = 256


class MonitorConfig(_Section):
    psi_threshold: float = 0.2
    calibration_threshold: float = 0.1
    # Below these counts sampling noise alone reaches the thresholds (PSI ~ bins/n; the
    # calibration error of 5 bins of n/5 outcomes ~ 0.4/sqrt(n/5)): reported, not alerted.
    min_drift_samples: int = 200
    min_calibration_samples: int = 300
    calibration_bins: int = 5
    # Models whose calibration can raise an alert: LightGBM states the probability that its
    # trade wins after costs, which is what the monitor measures. The LSTM/PPO class
    # probabilities (a move beyond 1.5x costs; an action) and the ensemble's confidence score
    # are other quantities; their calibration is reported, and alerts on it are opt-in.
    calibration_models: list[str] = Field(default_factory=lambda: ["lgb_5m", "lgb_30m"])


class DemoConfig(_Section):
    """The small budget (`trademl demo`, `trademl backtest --budget small`): settings that
    replace those of the named sections, e.g. ``[demo.lstm] EPOCHS = 2``. Sized so the demo
    (train all three, then a 3-fold walk-forward that trains them again per fold) runs in a
    few minutes on two CPU cores; see ``small_budget``."""

    lgbm: dict[str, int | float] = Field(default_factory=lambda: {"n_estimators": 200, "n_folds": 3})
    # The LSTM dominates the demo's time. One torch thread: on a busy 2-core machine a
    # second one waits on the first (walk-forward folds took 77 s and 156 s instead of 13 s).
    lstm: dict[str, int | float] = Field(default_factory=lambda: {
        "HIDDEN_SIZE": 32, "NUM_LAYERS": 1, "EPOCHS": 3, "N_FOLDS": 2, "BATCH_SIZE": 512, "TORCH_THREADS": 1})
    ppo: dict[str, int | float] = Field(default_factory=lambda: {"total_timesteps": 200_000})
    backtest: dict[str, int | float] = Field(default_factory=lambda: {"n_folds": 3})


class PathsConfig(_Section):
    data_dir: str = "artifacts/data"
    model_root: str = "artifacts/models"
    log_dir: str = "logs"
    report_dir: str = "artifacts/reports"


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    account: AccountConfig = Field(default_factory=AccountConfig)
    lgbm: LGBMConfig = Field(default_factory=LGBMConfig)
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)


# Settings that lived in another section before: (old section, name) -> new section.
MOVED_SETTINGS: dict[tuple[str, str], str] = {
    ("ppo", "initial_balance"): "account",
    ("ppo", "max_position_size"): "account",
    ("backtest", "initial_balance"): "account",
    ("backtest", "max_position_size"): "account",
}


def _reject_moved(raw: dict, where: str, prefix: str = "") -> None:
    """A clear error for a setting given in the section it has moved out of."""
    for (section, name), home in MOVED_SETTINGS.items():
        values = raw.get(section)
        if isinstance(values, dict) and name in values:
            raise TradeMLError(
                f"[{prefix}{section}] {name} has moved to [{home}]",
                where=where, hint=f"write it under [{home}]: {name} = {values[name]!r}")


def small_budget(cfg: Config) -> Config:
    """``cfg`` with the [demo] budget applied to its sections (validated like a config file)."""
    raw = cfg.model_dump()
    budget = cfg.demo.model_dump()
    _reject_moved(budget, "config [demo]", prefix="demo.")
    for section, values in budget.items():
        raw[section].update(values)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise TradeMLError(f"invalid [demo] budget: {problems}", where="config [demo]") from None


DEFAULT_CONFIG_FILE = "trademl.toml"


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Defaults <- TOML file (if any) <- overrides ({"ppo": {"total_timesteps": 1000}})."""
    path = path or os.environ.get("TRADEML_CONFIG")
    raw: dict = {}
    if path is not None or Path(DEFAULT_CONFIG_FILE).exists():
        p = Path(path or DEFAULT_CONFIG_FILE)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise TradeMLError("config file not found", where=str(p)) from None
        except tomllib.TOMLDecodeError as e:
            raise TradeMLError(f"not valid TOML: {e}", where=str(p)) from None
    _reject_moved(raw, str(path or DEFAULT_CONFIG_FILE))
    _reject_moved(overrides or {}, "config overrides")
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise TradeMLError(f"invalid configuration: {problems}", where=str(path or "config")) from None


def resolve_config(config: Config | str | os.PathLike | None = None) -> Config:
    """The one way every entry point gets its settings: a Config is used as is; a path or
    None goes through :func:`load_config` (so ``TRADEML_CONFIG`` or ./trademl.toml is honoured)."""
    if isinstance(config, Config):
        return config
    return load_config(config)
