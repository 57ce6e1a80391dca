"""Every setting of trademl, with the guide's defaults and names.

Settings come from pydantic defaults, then `trademl.toml` (or the file named by
``--config`` / ``TRADEML_CONFIG``), then command-line flags. Section names follow the
flow: [data], [costs], [account], [lgbm], [lstm], [ppo], [ensemble], [backtest], [serve],
[monitor], [retrain]. Each setting has one home: code that needs a default reads it from here
(``resolve_config``), never retypes it.
Where the guide names a setting (SEQUENCE_LENGTH, initial_balance, clip_epsilon, ...)
the field has exactly that name. Every field carries its meaning as a ``description``;
`trademl config show` prints them with the values as resolved.
"""

# No `from __future__ import annotations` here: pydantic would compile every field's annotation
# string when the models are built, a cost each cold `trademl predict` pays (issue 17).

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trademl.errors import TradeMLError


def parse_horizon(value) -> int | str:
    """A label horizon as [data] horizons takes it: bars as an int (5 or "5"), minutes as "15min"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        minutes = text.removesuffix("min").strip()
        if text.isdigit() and int(text) >= 1:
            return int(text)
        if text.endswith("min") and minutes.isdigit() and int(minutes) >= 1:
            return f"{int(minutes)}min"
    raise ValueError(f'horizon {value!r} is neither a number of bars (5) nor of minutes ("15min")')


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Bars, segments, features and labels."""

    symbol: str | None = Field(None, description=(
        "Contract symbol or root used when neither --symbol, a contract/symbol column nor the file name names "
        "one, e.g. NQZ5; None: such data is an error asking for --symbol (never a silent default)."))
    timezone: str | None = Field(None, description=(
        "Zone of naive timestamps in bar files (an IANA name such as America/New_York; --tz overrides). "
        "None: naive stamps are read as UTC, with one warning. Stamps with an offset keep theirs."))
    horizons: list[int | str] = Field(default_factory=lambda: [5, 30], description=(
        'Label horizons: win/signal/movement/risk labels are made for each. A number is bars (5); "15min" is '
        "minutes, turned into bars by the bars' length (which must divide it). Labels are named in bars "
        "either way (win_long_5); the dataset manifest records each horizon's minutes."))

    @field_validator("horizons", mode="before")
    @classmethod
    def _bars_or_minutes(cls, value):
        return [parse_horizon(h) for h in value] if isinstance(value, (list, tuple)) else value

    max_gap_minutes: int = Field(15, description=(
        "A gap longer than this (minutes) between consecutive bars starts a new segment: "
        "features restart and no label or sequence spans it."))
    resample_minutes: int = Field(1, description="Bar length the dataset is built at (minutes); 1 keeps minute bars.")
    extra_feature_columns: list[str] = Field(default_factory=list, description=(
        "Extra numeric bar columns passed through as features (exogenous signals)."))
    chunk_rows: int = Field(500_000, description="Bars read per chunk when building a dataset from a large file.")
    bad_print_mads: float | None = Field(60.0, gt=0, description=(
        "A bar's open, high, low or close this many local MADs (of log closes) outside the range of the "
        "neighbouring closes is a bad print: an error naming the line, or repaired with --repair. Genuine "
        "moves in the bundled and shared files stay below 45; a 3% print on ES scores about 140. None: no check."))
    bad_print_reopen_mads: float = Field(200.0, gt=0, description=(
        "The same limit for the high and low of the first bar after a gap or roll (a session reopen), whose "
        "opening match ranges wider: real ES reopen bars print wicks of 2.4% (116 MADs)."))
    bad_print_window: int = Field(31, ge=5, le=10_000, description=(
        "Bars in the centred window whose rolling MAD of log closes is the local scale of the bad-print check."))
    bad_print_repair: str = Field("clip", pattern="^(clip|drop)$", description=(
        'What --repair does with a bad print: "clip" the bad field to the neighbouring closes\' range '
        '(the bar stays), or "drop" the bar.'))


class FeaturesConfig(_Section):
    """Which features a new dataset computes (trademl.data.features.registry.select_features)."""

    include: list[str] | None = Field(None, description=(
        "Features or groups (guide, returns, trend, bands, volume, calendar) to compute; None: the default "
        "set. A chosen feature the bars cannot give (a volume one without volume) is an error naming it."))
    exclude: list[str] = Field(default_factory=list, description=(
        "Features or groups left out of the included ones (e.g. [\"volume\"] for spot FX or crypto feeds)."))


class CostsConfig(_Section):
    """The one cost model: used by labels, the PPO environment and the backtester."""

    commission_per_side: float = Field(2.25, description="Commission in dollars per contract per side.")
    slippage_ticks: float = Field(1.0, description="Ticks against us on every fill.")
    signal_cost_multiple: float = Field(1.5, description=(
        "Signal threshold: a move counts as buy/sell only beyond this multiple of round-trip costs."))


class AccountConfig(_Section):
    """The trading account: read by the labels, the PPO environment, the backtester and the
    request validation alike."""

    initial_balance: float = Field(100_000.0, description="Account balance in dollars at the start (guide's name).")
    max_position_size: int = Field(5, description="Most contracts held, long or short (guide's name).")


class RiskConfig(_Section):
    """Stops, targets and bet size for a prediction that carries an ``account`` (trademl.risk)."""

    stop_atr: float = Field(2.0, gt=0, description="Stop this many ATRs (atr_ticks_14) from the entry.")
    target_atr: float = Field(3.0, gt=0, description="Target this many ATRs from the entry; target/stop is the "
                              "payoff ratio Kelly sizes with.")
    kelly_share: float = Field(0.5, gt=0, le=1, description="Share of the Kelly bet taken: half Kelly's drawdowns "
                               "fit a prop account's limits, full Kelly's do not.")
    var_level: float = Field(0.95, gt=0.5, lt=1, description="Level of the Value at Risk reported as var_95.")


class LGBMConfig(_Section):
    """The LightGBM win models (lgb_5m, lgb_30m)."""

    num_leaves: int = Field(31, description="LightGBM num_leaves: leaves per tree.")
    learning_rate: float = Field(0.05, description="LightGBM learning rate (shrinkage per tree).")
    n_estimators: int = Field(500, description="Most boosting rounds (early stopping may use fewer).")
    min_child_samples: int = Field(200, description="LightGBM min_child_samples: fewest rows in a leaf.")
    feature_fraction: float = Field(0.8, description="Share of the features each tree samples.")
    bagging_fraction: float = Field(0.8, description="Share of the rows each bagging round samples.")
    bagging_freq: int = Field(1, description="Rows are re-sampled every this many trees (0: no bagging).")
    lambda_l2: float = Field(1.0, description="L2 regularisation of the leaf values.")
    early_stopping_rounds: int = Field(50, description="Stop after this many rounds without a better validation loss.")
    n_folds: int = Field(4, description="Walk-forward folds of the out-of-sample evaluation.")
    seed: int = Field(7, description="Random seed of LightGBM.")
    valid_fraction: float = Field(0.2, description=(
        "Share of each fold's training rows (its latest part, purged) used for early stopping."))
    embargo_bars: int | None = Field(None, description=(
        "Bars dropped after the purge between training and test; None = the horizon."))
    min_rows: int = Field(2000, description=(
        "Fewer labelled rows than this (both sides counted) cannot give honest figures."))
    calibration_bins: int = Field(50, description="At most this many equal-count bins feed the isotonic calibration map.")
    # 1 by default: OpenMP threads spin-wait, so on a busy machine two of them took 70x longer
    # than one on the same fit (33 s vs 0.47 s, 160k rows).
    num_threads: int = Field(1, description="LightGBM threads; 0 = all cores.")


# The sequence architectures of [lstm] (trademl.models.sequence_nets builds them).
SequenceArchitecture = Literal["bilstm_attention", "gru", "transformer", "cnn_lstm", "tcn"]


class LSTMConfig(_Section):
    """The sequence model (signal, movement, risk heads): the guide's bidirectional LSTM or a variant."""

    architecture: SequenceArchitecture = Field("bilstm_attention", description=(
        "Network over the window: bilstm_attention (the guide's), gru, transformer (causal mask), cnn_lstm, "
        "tcn (dilated causal convolutions). Same heads, normalisation, ONNX contract and serving for all."))

    SEQUENCE_LENGTH: int = Field(60, description="Bars in each input sequence.")
    PREDICTION_HORIZON: int = Field(5, description="Bars ahead the signal, movement and risk labels look.")
    HIDDEN_SIZE: int = Field(128, description="Hidden units of each LSTM direction; the width of the other architectures.")
    NUM_LAYERS: int = Field(2, description="Stacked LSTM layers.")
    DROPOUT: float = Field(0.2, description="Dropout between LSTM layers and before the heads.")
    BATCH_SIZE: int = Field(256, description="Sequences per training batch.")
    LEARNING_RATE: float = Field(1e-3, description="Adam learning rate.")
    EPOCHS: int = Field(20, description="Most training epochs per fit.")
    PATIENCE: int = Field(3, description="Stop after this many epochs without a better validation loss.")
    N_FOLDS: int = Field(3, description="Walk-forward folds of the out-of-sample evaluation.")
    MIN_SEQUENCES: int = Field(200, description="Fewest usable sequences (and training sequences per fold) to train at all.")
    # Two cores on the reference machine; the same count also keeps results bit-identical.
    TORCH_THREADS: int = Field(2, description="torch threads while training.")
    seed: int = Field(7, description="Random seed of torch and the batch order.")
    serve_int8: bool = Field(True, description=(
        "Serve the graph with its LSTM nodes quantised to int8 (ONNX Runtime's dynamic quantisation) when its "
        "outputs stay within 0.02 of the float graph's on the training windows (the movement correlated at "
        "0.999); the manifest's onnx_graph says which was stored. About 1.8x faster at batch 1 on an AVX2 core. "
        "It scores one window per call everywhere (its input scale is taken over the whole call, so windows "
        "scored together would get other answers than the one the predictor serves)."))
    attention_heads: int = Field(4, ge=1, description="Attention heads of the transformer (HIDDEN_SIZE must divide by it).")
    # Resumes are bit-identical on the CPU; CUDA kernels are not all deterministic.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "Where to train: auto = CUDA when torch sees a GPU, else the CPU. The served model is ONNX on the CPU."))


class PPOConfig(_Section):
    """The PPO agent (stable-baselines3) and its trading environment."""

    algo: Literal["ppo", "a2c", "sac"] = Field("ppo", description=(
        'The stable-baselines3 algorithm: "ppo", "a2c" (synchronous A3C: the same hold/buy/sell policy, one '
        'gradient step per rollout, RMSprop) or "sac" (soft actor-critic: a continuous target position in '
        '[-max_position_size, +max_position_size], rounded to contracts). Every setting below applies to all '
        'three unless it says otherwise.'))
    learning_rate: float = Field(3e-4, description="Learning rate of the policy and value nets (Adam; RMSprop for a2c).")
    total_timesteps: int = Field(1_000_000, description="Environment steps to train for.")
    clip_epsilon: float = Field(0.2, description="ppo: clip range of the probability ratio (guide's name).")
    # Rollouts of n_envs x n_steps = 8192 steps from the numpy VecEnv, minibatches of 1024,
    # 10 epochs: the settings of the learning tests and of bench/bench_ppo.py (1M steps).
    n_steps: int = Field(32, description="ppo, a2c: steps per environment in each rollout (a2c: one gradient step per rollout).")
    n_envs: int = Field(256, description="ppo, a2c: environments stepped together (one numpy VecEnv; sac: sac_n_envs).")
    batch_size: int = Field(1024, description="ppo: minibatch size of each gradient step (a2c: the whole rollout; sac: sac_batch_size).")
    n_epochs: int = Field(10, description="ppo: passes over each rollout.")
    # A short horizon: minute-bar edges and costs play out within a few bars, and a long
    # one adds the noise of many future bars to every advantage (learned 2x slower).
    gamma: float = Field(0.5, description="Discount factor of future rewards.")
    gae_lambda: float = Field(0.9, description="ppo, a2c: GAE lambda of the advantage estimate.")
    ent_coef: float = Field(0.0, description="ppo, a2c: entropy bonus coefficient (sac tunes its own).")
    window: int = Field(4, description="Bars of features in each observation.")
    episode_length: int = Field(390, description="Most bars per training episode (390: one regular session).")
    reward: str = Field("sharpe", description='Reward: "pnl" or "sharpe" (differential Sharpe ratio).')
    dsr_eta: float = Field(0.01, description="Adaptation rate of the differential Sharpe ratio's running moments.")
    risk_penalty: float = Field(0.05, description=(
        "Per bar, minus risk_penalty * position**2 (one contract's bar variance = 1): go flat without an edge."))
    drawdown_penalty: float = Field(0.0, description="Minus this multiple of every new increase in drawdown.")
    trade_penalty: float = Field(0.1, description=(
        "Per contract traded, on top of the real costs: without it the agent trades on noise."))
    account_rules: str | None = Field(None, description=(
        "Account rules preset (topstep-50k, topstep-100k, topstep-150k; trademl.risk.rules) the environment "
        "trades under: the contract cap follows the account, positions go flat at 15:10 CT, a breach ends the "
        "episode, and the agent observes its room to each limit; None: no rules."))
    account_start: Literal["random", "fresh"] = Field("random", description=(
        'With account_rules, where an episode\'s account starts: "random" (anywhere along an evaluation, '
        'each limit keeping >= 2% of its allowance, so the agent sees a limit close) or "fresh".'))
    breach_penalty: float = Field(2000.0, ge=0, description=(
        "With account_rules, dollars subtracted (scaled like the P&L) on the bar a limit is breached."))
    vf_coef: float = Field(0.5, description="ppo, a2c: value-loss coefficient.")
    max_grad_norm: float = Field(0.5, description="ppo, a2c: gradients are clipped to this norm.")
    # SAC is off-policy: one gradient step of sac_batch_size transitions every sac_train_freq
    # steps of all the environments, so few environments (sac_n_envs) keep the steps per sample
    # near SB3's one-for-one; its replay buffer holds observations twice (obs and next obs).
    sac_n_envs: int = Field(16, gt=0, description="sac: environments stepped together (n_envs is ppo's and a2c's).")
    sac_buffer_size: int = Field(100_000, gt=0, description="sac: transitions in the replay buffer.")
    sac_learning_starts: int = Field(2_000, ge=0, description="sac: timesteps of random actions before learning starts.")
    sac_batch_size: int = Field(256, gt=0, description="sac: transitions in each gradient step (batch_size is ppo's and a2c's).")
    sac_tau: float = Field(0.005, gt=0, le=1, description="sac: soft-update rate of the target critics.")
    sac_train_freq: int = Field(1, gt=0, description="sac: steps of all the environments between gradient updates.")
    sac_gradient_steps: int = Field(1, gt=0, description="sac: gradient steps at each update.")
    net_arch: list[int] = Field(default_factory=lambda: [64, 64], description="Hidden layer sizes of the policy and value nets (sac: of the actor and of each critic).")
    eval_fraction: float = Field(0.2, description=(
        "The last fraction of the bars is held out: never trained on, the agent is evaluated there."))
    checkpoint_dir: str | None = Field(None, description=(
        "Where checkpoints for --resume are written; None: checkpoints/ppo beside [paths] model_root "
        "(artifacts/checkpoints/ppo by default), as the LSTM's."))
    checkpoint_every: int = Field(200_000, description="Timesteps between checkpoints (for --resume).")
    # One thread: the policy's matmuls are small, and on a shared 2-core machine a second
    # OpenMP thread waits on the first (measured 10-20x slower under load; bench/README.md).
    torch_threads: int = Field(1, description="torch threads while training.")
    MIN_ROWS: int = Field(1000, description="Fewest bars the agent trains on (the guide's minimum).")
    seed: int = Field(7, description="Random seed of the policy, the environments and the episode starts.")


class EnsembleConfig(_Section):
    """How the models' votes are combined."""

    weights: dict[str, float] | None = Field(None, description=(
        "Weights per model kind (lgb_5m, lgb_30m, lstm, ppo) of the vote (method = vote, or no stacker); "
        'None = from each model\'s validation skill in its manifest (README: "How the ensemble decides").'))
    method: Literal["stacked", "vote"] = Field("stacked", description=(
        "stacked: a meta-model fitted on the base models' out-of-fold votes gives the calibrated probability "
        "that each side's trade wins after costs (trademl.models.stacker); vote: the weighted vote."))
    stack_share: float = Field(0.25, gt=0, lt=0.9, description=(
        "Share of the training rows (the last ones, after a purge gap) the stacker fits on; the base models "
        "train on the rest."))
    min_stack_rows: int = Field(1500, ge=200, description=(
        "Fewest rows for the stacker (and for the base models beside it); fewer: no stacker, the vote decides."))
    context_inputs: bool = Field(False, description=(
        "The meta-model also reads which models are present and the bar's context (log ATR, time of day); "
        "off: on the planted-edge walk-forward they cost the stacker's decisions out of sample (bench/README.md)."))
    horizon: int = Field(5, gt=0, description=(
        "The trade the confidence is about: entered at the next open, closed this many bars later "
        "(a labelled horizon; else the shortest one)."))


class BacktestConfig(_Section):
    """The walk-forward backtest and its report."""

    confidence_threshold: float | Literal["auto"] = Field(0.7, description=(
        "The guide's rule: BUY/SELL move the position by one contract, only above this confidence (with the "
        "stacker: the probability that the trade wins after costs). \"auto\": the stacker's threshold, chosen "
        "on its validation span from 0.5, 0.55, ..., 0.7; 1 (nothing clears it: HOLD) where none beat chance there."))
    n_folds: int = Field(4, description="Walk-forward folds (each trains the models on the past, trades the fold).")
    hold_bars: int | None = Field(None, ge=1, description=(
        "None: the guide's rule (a position changes only on a counted signal); N: each counted BUY/SELL holds "
        "one contract for N bars, the trade a win probability is about. The walk-forward with the stacker "
        "uses [ensemble] horizon when this is None."))
    hit_rate_horizon: int = Field(5, description=(
        "The report's confidence chart: a signal hits when the price moved its way from the fill "
        "(next open) to the close this many bars after the signal."))
    random_baseline_seed: int = Field(0, description="Seed of the random-entries baseline.")


def fixed_threshold(value, where: str = "[backtest] confidence_threshold") -> float:
    """A numeric confidence threshold; "auto" only means something where a stacker chose one
    on its validation span (the walk-forward, the predictor), so elsewhere it is refused."""
    if value == "auto":
        raise TradeMLError('confidence_threshold "auto" is chosen by the stacker on its validation span; '
                           "here give a number", where=where, hint="e.g. --threshold 0.6")
    return float(value)


class ServeConfig(_Section):
    """The HTTP service."""

    host: str = Field("127.0.0.1", description="Bind address; beyond loopback the service needs a bearer token.")
    port: int = Field(8000, description="Port.")
    token_env: str = Field("TRADEML_TOKEN", description="Environment variable holding the bearer token clients send.")
    max_body_bytes: int = Field(1_000_000, description="Largest request body accepted (bytes).")
    reload_interval_s: float = Field(1.0, description="A newer `latest` in the model store is picked up at most this often (seconds).")
    max_batch: int = Field(256, description="Most requests in one POST /v1/predict/batch.")
    novelty_action: Literal["hold", "warn"] = Field("hold", description=(
        "When a request's features are unlike the training inputs (its novelty score above the model's "
        "threshold): \"hold\" answers HOLD with a warning, \"warn\" keeps the decision and only warns."))
    # Each stream keeps ~bars_needed raw bars and its features' state (~1 MB): a cap stops a client
    # (or a typo'd symbol in a loop) from growing the server's memory without bound.
    max_streams: int = Field(64, ge=1, le=10_000, description=(
        "Most symbols the bar stream (POST /v1/bars) keeps state for; one more is refused until one is dropped."))


DURATION_UNITS = {"min": 60, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value, where: str = "duration") -> float:
    """A duration as [retrain] takes it ("60d", "12h", "90min", "2w") -> seconds, else a TradeMLError
    naming ``where``: a typo in a window must never become a silent default."""
    text = str(value).strip().lower()
    for unit in sorted(DURATION_UNITS, key=len, reverse=True):  # "min" before "m"
        number = text.removesuffix(unit).strip()
        if text.endswith(unit) and number:
            try:
                amount = float(number)
            except ValueError:
                break
            if amount > 0 and amount == amount and amount != float("inf"):
                return amount * DURATION_UNITS[unit]
            break
    raise TradeMLError(f"{value!r} is not a duration: give a positive number and a unit (min, h, d, w), e.g. 60d",
                       where=where)


class RetrainConfig(_Section):
    """`trademl retrain`: challengers trained on the latest window of bars, promoted over the
    served champion only when better beyond noise on a purged span after their window
    (trademl.retrain); and when a served model counts as too old."""

    window: str = Field("60d", description=(
        "Bar time each challenger trains on (60d, 12h, 90min, 2w): the span ending a purge gap before the "
        "held-out span."))
    holdout: str = Field("10d", description=(
        "The most recent bar time both the challenger and the champion are scored on; the challenger never saw it."))
    every: str = Field("1d", description="Time between retraining rounds of `trademl retrain --every` (wall clock).")
    alpha: float = Field(0.05, gt=0, le=0.5, description=(
        "False-positive rate of a promotion: a challenger no better than the champion is promoted with at most "
        "this probability (one-sided test of the per-bar P&L difference)."))
    kinds: list[str] = Field(default_factory=lambda: ["lgbm"], min_length=1, description=(
        "Model families retrained (lgbm, lstm, ppo); each stored kind of a family is challenged on its own."))
    expiration_hours: float = Field(168.0, ge=0, description=(
        "A served model older than this (its manifest's created_at) adds a warning to every prediction and "
        "trademl_model_expired 1 in /metrics; 0: models never expire."))

    @field_validator("window", "holdout", "every")
    @classmethod
    def _durations(cls, value: str, info) -> str:
        try:
            parse_duration(value, f"[retrain] {info.field_name}")
        except TradeMLError as e:
            raise ValueError(e.message) from None
        return value


class MonitorConfig(_Section):
    """The monitor: drift and calibration alerts over the prediction log."""

    psi_threshold: float = Field(0.2, description="A feature drifts when its PSI (live vs training) is above this.")
    calibration_threshold: float = Field(0.1, description="Calibration error above which a model raises an alert.")
    # Below these counts sampling noise alone reaches the thresholds (PSI ~ bins/n; the
    # calibration error of 5 bins of n/5 outcomes ~ 0.4/sqrt(n/5)): reported, not alerted.
    min_drift_samples: int = Field(200, description="Fewest live rows for a drift alert (fewer: reported only).")
    min_calibration_samples: int = Field(300, description="Fewest judged calls for a calibration alert (fewer: reported only).")
    calibration_bins: int = Field(5, description="Equal-count bins of the calibration error.")
    # LightGBM states the probability that its trade wins after costs, which is what the monitor
    # measures. The LSTM/PPO class probabilities (a move beyond 1.5x costs; an action) and the
    # ensemble's confidence score are other quantities; their calibration is reported, and
    # alerts on it are opt-in.
    calibration_models: list[str] = Field(default_factory=lambda: ["lgb_5m", "lgb_30m"], description=(
        "Models whose calibration can raise an alert."))


class DemoConfig(_Section):
    """The small budget (`trademl demo`, `trademl backtest --budget small`): settings that
    replace those of the named sections, e.g. ``[demo.lstm] EPOCHS = 2``. Sized so the demo
    (train all three, then a 3-fold walk-forward that trains them again per fold) runs in a
    few minutes on two CPU cores; see ``small_budget``."""

    lgbm: dict[str, int | float] = Field(default_factory=lambda: {"n_estimators": 200, "n_folds": 3},
                                         description="[lgbm] settings replaced in the small budget.")
    # The LSTM dominates the demo's time. One torch thread: on a busy 2-core machine a
    # second one waits on the first (walk-forward folds took 77 s and 156 s instead of 13 s).
    lstm: dict[str, int | float] = Field(default_factory=lambda: {
        "HIDDEN_SIZE": 32, "NUM_LAYERS": 1, "EPOCHS": 3, "N_FOLDS": 2, "BATCH_SIZE": 512, "TORCH_THREADS": 1},
        description="[lstm] settings replaced in the small budget.")
    ppo: dict[str, int | float] = Field(default_factory=lambda: {"total_timesteps": 200_000},
                                        description="[ppo] settings replaced in the small budget.")
    backtest: dict[str, int | float] = Field(default_factory=lambda: {"n_folds": 3},
                                             description="[backtest] settings replaced in the small budget.")


class ParamRange(_Section):
    """One hyperparameter's search range: ``low``..``high`` (``log`` for a log scale, ``integer``
    for whole numbers), or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[float | int | str | bool] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamRange":
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either choices (a non-empty list) or low and high, not both")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs low < high (or a list of choices)")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


def _space(**ranges) -> dict[str, ParamRange]:
    return {name: ParamRange(**r) for name, r in ranges.items()}


class TuneConfig(_Section):
    """`trademl tune`: Optuna's search spaces per kind, where studies live, and the trials
    already spent choosing the settings in force (the backtest deflates its Sharpe by them)."""

    storage: str = Field("artifacts/tune/studies.db", description=(
        "SQLite file of the Optuna studies: a study killed mid-trial resumes from it."))
    seed: int = Field(0, description="Seed of the TPE sampler.")
    lgbm: dict[str, ParamRange] = Field(default_factory=lambda: _space(
        learning_rate={"low": 0.01, "high": 0.3, "log": True}, num_leaves={"low": 7, "high": 63, "integer": True},
        min_child_samples={"low": 50, "high": 2000, "log": True, "integer": True},
        feature_fraction={"low": 0.4, "high": 1.0}, lambda_l2={"low": 1e-3, "high": 30.0, "log": True}),
        description="[lgbm] settings searched, objective: walk-forward log-loss of the raw test-block probabilities.")
    lstm: dict[str, ParamRange] = Field(default_factory=lambda: _space(
        LEARNING_RATE={"low": 1e-4, "high": 3e-3, "log": True}, HIDDEN_SIZE={"choices": [32, 64, 128]},
        DROPOUT={"low": 0.0, "high": 0.5}),
        description="[lstm] settings searched, objective: the mean best validation loss of the walk-forward folds.")
    ppo: dict[str, ParamRange] = Field(default_factory=lambda: _space(
        learning_rate={"low": 1e-4, "high": 1e-3, "log": True}, clip_epsilon={"low": 0.1, "high": 0.3},
        n_steps={"choices": [16, 32, 64]}, gamma={"low": 0.3, "high": 0.95}, ent_coef={"low": 1e-4, "high": 0.05, "log": True}),
        description="[ppo] settings searched, objective: the held-out Sharpe net of costs (maximised).")
    trials: dict[str, int] = Field(default_factory=dict, description=(
        "Trials already tried to choose the settings in force, by kind ({lgbm = 40}; `trademl tune` writes it): "
        "every one counts in the walk-forward's deflated Sharpe."))

    @field_validator("trials")
    @classmethod
    def _counts(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if not isinstance(n, int) or n < 0}
        if bad:
            raise ValueError(f"trial counts must be whole numbers >= 0: {bad}")
        return v

    @model_validator(mode="after")
    def _known_settings(self) -> "TuneConfig":
        for kind, section in (("lgbm", LGBMConfig), ("lstm", LSTMConfig), ("ppo", PPOConfig)):
            unknown = sorted(set(getattr(self, kind)) - set(section.model_fields))
            if unknown:
                raise ValueError(f"[tune.{kind}] searches {unknown}, which are not [{kind}] settings")
        return self


class PathsConfig(_Section):
    """Where data, models, logs and reports live."""

    data_dir: str = Field("artifacts/data", description="Datasets built by `trademl data build`.")
    model_root: str = Field("artifacts/models", description="The model store.")
    log_dir: str = Field("logs", description="Prediction logs (predictions.sqlite).")
    report_dir: str = Field("artifacts/reports", description="HTML reports (backtest, monitor).")


class ContractOverride(_Section):
    """One instrument, ``[contracts.SPY]``: an instrument not listed in ``trademl.market.contracts``
    needs tick_size and point_value; for a listed root, the fields given replace its own."""

    tick_size: float | None = Field(None, gt=0, description="Smallest price step.")
    point_value: float | None = Field(None, gt=0, description="Dollars one full point of price is worth per contract "
                                      "(share, unit); tick value = tick_size x point_value.")
    commission_per_side: float | None = Field(None, ge=0, description=(
        "Commission per contract per side for this instrument; None: [costs] commission_per_side."))
    description: str | None = Field(None, description="What the instrument is (shown in summaries).")
    exchange: str | None = Field(None, description="Where it trades.")


class Config(_Section):
    contracts: dict[str, ContractOverride] = Field(default_factory=dict, description=(
        "Instruments by root, [contracts.SPY] tick_size = 0.01, point_value = 1.0 (trademl.market.contracts)."))
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    account: AccountConfig = Field(default_factory=AccountConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    lgbm: LGBMConfig = Field(default_factory=LGBMConfig)
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
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


def validation_problems(error: ValidationError) -> str:
    """A pydantic error as one line a user can act on: 'section.name: message; ...'."""
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in error.errors())


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
        problems = validation_problems(e)
        raise TradeMLError(f"invalid [demo] budget: {problems}", where="config [demo]") from None


DEFAULT_CONFIG_FILE = "trademl.toml"


def _merge(raw: dict, overrides: dict) -> None:
    """``overrides`` ({"section": {"name": value}}) into ``raw``; an instrument's table in [contracts]
    is merged field by field, so --tick-size keeps the file's commission for it."""
    for section, values in overrides.items():
        if not isinstance(values, dict) or not isinstance(raw.get(section, {}), dict):
            raw[section] = values  # not a table: validation names it
            continue
        target = raw.setdefault(section, {})
        for name, value in values.items():
            if section == "contracts" and isinstance(value, dict) and isinstance(target.get(name), dict):
                target[name] = {**target[name], **value}
            else:
                target[name] = value


MAX_EXTENDS = 5  # a chain of `extends` longer than this is a loop


def _read_toml(p: Path, depth: int = 0) -> dict:
    """A config file's tables; ``extends = "base.toml"`` (relative to the file) reads that one
    first and lays this one over it: what `trademl tune` writes, the tuned settings over yours."""
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise TradeMLError("config file not found", where=str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise TradeMLError(f"not valid TOML: {e}", where=str(p)) from None
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or depth >= MAX_EXTENDS:
        raise TradeMLError("`extends` must name one config file, in a chain of at most "
                           f"{MAX_EXTENDS}", where=str(p))
    merged = _read_toml((p.parent / base), depth + 1)
    _merge(merged, raw)
    return merged


def config_file_in_use(path: str | os.PathLike | None = None) -> Path | None:
    """The file :func:`load_config` reads for ``path``: it, else TRADEML_CONFIG, else ./trademl.toml
    when there is one; None for the defaults alone."""
    path = path or os.environ.get("TRADEML_CONFIG")
    if path is not None:
        return Path(path)
    return Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).exists() else None


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Defaults <- TOML file (if any) <- overrides ({"ppo": {"total_timesteps": 1000}})."""
    in_use = config_file_in_use(path)
    raw = _read_toml(in_use) if in_use is not None else {}
    _reject_moved(raw, str(path or DEFAULT_CONFIG_FILE))
    _reject_moved(overrides or {}, "config overrides")
    _merge(raw, overrides or {})
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = validation_problems(e)
        raise TradeMLError(f"invalid configuration: {problems}", where=str(in_use or "config")) from None


def describe_settings(config: Config) -> dict[str, dict]:
    """Every setting of ``config`` as ``{"section.name": {"value": ..., "description": ...}}``,
    values as JSON would hold them (what `trademl config show` prints)."""
    out = {}
    for section in type(config).model_fields:
        values = getattr(config, section)
        if isinstance(values, dict):  # [contracts]: one table per instrument; none: the section itself
            if not values:
                out[section] = {"value": {}, "description": type(config).model_fields[section].description or ""}
            for key, table in values.items():
                for name, setting in type(table).model_fields.items():
                    out[f"{section}.{key}.{name}"] = {"value": getattr(table, name), "description": setting.description or ""}
            continue
        dumped = values.model_dump(mode="json")
        for name, setting in type(values).model_fields.items():
            out[f"{section}.{name}"] = {"value": dumped[name], "description": setting.description or ""}
    return out


def resolve_config(config: Config | str | os.PathLike | None = None) -> Config:
    """The one way every entry point gets its settings: a Config is used as is; a path or
    None goes through :func:`load_config` (so ``TRADEML_CONFIG`` or ./trademl.toml is honoured)."""
    if isinstance(config, Config):
        return config
    return load_config(config)


def with_overrides(config=None, overrides: dict | None = None) -> Config:
    """``resolve_config(config)`` with ``{"section": {"name": value}}`` applied and validated
    (what keyword arguments such as ``LGBMWinModel(n_estimators=200)`` do)."""
    cfg = resolve_config(config)
    if not overrides:
        return cfg
    raw = cfg.model_dump()
    unknown = [section for section in overrides if section not in raw]
    if unknown:
        raise TradeMLError(f"no config section [{unknown[0]}]", where="overrides")
    _merge(raw, overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = validation_problems(e)
        raise TradeMLError(f"invalid setting: {problems}", where="overrides") from None
