"""Walk-forward backtest of the trained models: train on the past, predict the fold, trade it.

For every purged, embargoed fold of the dataset rows (``trademl.data.splits``, horizon =
the longest label horizon):

1. every model kind is trained on the fold's training rows only, with the library
   trainers, into a temporary model store (``train_models``);
2. the stored models are opened with their serving runtimes (ONNX Runtime, no torch and no
   lightgbm) and predict every bar of the test fold: LightGBM and the LSTM in batches, the
   PPO agent bar by bar, because its observation holds the account it trades;
3. the votes are combined by ``trademl.predict.combine`` with the weights
   ``trademl.predict.ensemble.choose_weights`` gives from the models' validation skill, the
   code the predictor runs, so backtest and serving cannot disagree.

The folds' test spans are concatenated and traded by ``run_backtest`` (the guide's +/-1
contract rule up to max_position_size, only above the confidence threshold, fills at the
next bar's open through the shared execution model). A fold boundary is a segment break:
the account is flat when the models are replaced. Next to the ensemble, each model alone
(its own vote through the same rule; the PPO agent with its own account) and the
baselines (flat, buy-and-hold, random entries with the same trade count) run on the same
bars; every Sharpe is deflated for the candidates compared.

The PPO agent observes an account: for the ensemble, the ensemble's position, its average
entry price, the segment's net P&L and the last 10 actions the ensemble took (hold when no
signal counted); the account restarts flat at every segment start, as the agent's training
episodes and held-out evaluation do.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from trademl.config import Config, resolve_config, small_budget
from trademl.errors import InsufficientDataError, ModelStoreError, TradeMLError

MODEL_KINDS = {"lgbm": ("lgb_5m", "lgb_30m"), "lstm": ("lstm",), "ppo": ("ppo",)}
ENSEMBLE = "ensemble"
BUDGETS = ("small", "full")
LSTM_BATCH = 1024  # windows per ONNX call: bounded memory on long folds

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- configuration


def budget_config(config: Config, budget: str | None) -> Config:
    """``full`` (or None): the config as it is; ``small``: its [demo] budget applied."""
    if budget in (None, "full"):
        return config
    if budget == "small":
        return small_budget(config)
    raise TradeMLError(f"budget must be one of {', '.join(BUDGETS)}, not {budget!r}", where="--budget")


def check_models(models) -> tuple[str, ...]:
    models = tuple(models)
    unknown = [m for m in models if m not in MODEL_KINDS]
    if unknown or not models:
        raise TradeMLError(f"unknown models {unknown}; choose among {', '.join(MODEL_KINDS)}", where="models")
    return models


# ----------------------------------------------------------------------------- training


@dataclass
class TrainedModels:
    """What ``train_models`` stored, with the trainers' own reports for printing."""

    stored: dict  # kind -> StoredModel
    skipped: dict = field(default_factory=dict)  # kind -> why it was not trained
    seconds: dict = field(default_factory=dict)  # model group -> training seconds
    lgbm_reports: list = field(default_factory=list)
    lstm_result: object = None
    ppo_result: object = None

    @property
    def metrics(self) -> dict:
        return {kind: s.manifest.get("metrics") or {} for kind, s in self.stored.items()}


def ppo_bars(dataset) -> pd.DataFrame:
    """The dataset's bars for the PPO trainer; a planted ``edge`` column (synthetic market)
    rides along so the agent's held-out evaluation can score it against the edge oracle."""
    bars = dataset.bars()
    if "edge" in dataset.frame.columns:
        bars["edge"] = dataset.frame["edge"].to_numpy(np.float64)
    return bars


def train_models(dataset, config: Config, model_root, *, models=tuple(MODEL_KINDS), work_dir=None,
                 skip_failed: bool = False, progress: bool = False, console=None) -> TrainedModels:
    """Train the chosen model groups on ``dataset`` into the store at ``model_root``.

    ``work_dir`` holds the trainers' checkpoints (default: where the config puts them). With
    ``skip_failed`` a model kind that cannot be trained here (too little data in an early
    fold, or its ONNX export failed its parity check) is skipped and named in ``skipped``,
    as the predictor skips a model it cannot load, instead of failing the whole run.
    """
    from trademl.models.lgbm import train_win_model
    from trademl.models.lstm import train_lstm
    from trademl.models.ppo.train import train_ppo
    from trademl.models.store import ModelStore

    models = check_models(models)
    model_root = Path(model_root)
    cfg = config.model_copy(deep=True)
    cfg.paths.model_root = str(model_root)
    lstm_checkpoints = None  # the trainer's default, beside the store
    if work_dir is not None:
        cfg.ppo.checkpoint_dir = str(Path(work_dir) / "ppo")
        lstm_checkpoints = Path(work_dir) / "lstm"
    out = TrainedModels({})

    def lgbm(horizon):
        report = train_win_model(dataset, horizon, cfg, ModelStore(model_root))
        out.lgbm_reports.append(report)
        return report.stored

    def lstm():
        out.lstm_result = train_lstm(dataset, cfg, store_root=model_root, checkpoint_dir=lstm_checkpoints,
                                     progress=progress)
        return out.lstm_result.stored

    def ppo():
        out.ppo_result = train_ppo(ppo_bars(dataset), cfg, features=dataset.X, schema=dataset.manifest["feature_schema"],
                                   symbol=dataset.symbol, progress=progress, console=console)
        return out.ppo_result.stored

    # One job per stored kind, so that one kind failing leaves the others (train_lgbm's horizons).
    jobs = []
    if "lgbm" in models:
        horizons = [h for h in (5, 30) if h in dataset.horizons] or list(dataset.horizons)
        jobs += [("lgbm", f"lgb_{h}m", lambda h=h: lgbm(h)) for h in horizons]
    jobs += [(g, g, fn) for g, fn in (("lstm", lstm), ("ppo", ppo)) if g in models]
    for group, kind, job in jobs:
        started = time.perf_counter()
        try:
            out.stored[kind] = job()
        except (InsufficientDataError, ModelStoreError) as e:
            if not skip_failed:
                raise
            out.skipped[kind] = str(e)
        out.seconds[group] = out.seconds.get(group, 0.0) + time.perf_counter() - started
    return out


def print_trained(trained: TrainedModels, console) -> None:
    """Each trainer's own table, then where the models are."""
    from trademl.models.lgbm import print_reports
    from trademl.models.lstm import stored_summary
    from trademl.models.ppo.train import print_summary

    if trained.lgbm_reports:
        print_reports(trained.lgbm_reports, console)
    if trained.lstm_result is not None:
        console.print(stored_summary(trained.lstm_result.stored))
    if trained.ppo_result is not None:
        print_summary(trained.ppo_result, console)
    for kind, why in trained.skipped.items():
        console.print(f"[yellow]{kind} not trained: {why}[/]")
    times = ", ".join(f"{g} {s:.0f} s" for g, s in trained.seconds.items())
    console.print(f"trained in {times}")


def sub_dataset(dataset, rows: np.ndarray):
    """The dataset restricted to ``rows`` (a contiguous, time-ordered block)."""
    from trademl.data.dataset import Dataset

    frame = dataset.frame.iloc[int(rows[0]): int(rows[-1]) + 1]
    return Dataset(frame, dict(dataset.manifest), None, getattr(dataset, "path", None))


# ----------------------------------------------------------------------------- the account the PPO agent sees


class Accounts:
    """Position, average entry price, segment P&L and last 10 actions of N accounts.

    Each account follows the backtest engine's rule (``target_from_signals``): a counted
    BUY/SELL moves the target one contract within +/-max_position, the target restarts at
    0 at a segment start, and the execution model closes the position at the open of a
    segment's last bar. Fills and P&L come from the shared ``ExecutionModel``.
    """

    def __init__(self, n: int, execution, initial_balance: float):
        from trademl.models.ppo.env import N_RECENT_ACTIONS

        self.execution = execution
        self.initial_balance = initial_balance
        self.target = np.zeros(n)
        self.position = np.zeros(n)
        self.avg_price = np.zeros(n)
        self.equity = np.zeros(n)
        self.recent = np.zeros((n, N_RECENT_ACTIONS), np.int64)

    def restart(self) -> None:
        for a in (self.target, self.position, self.avg_price, self.equity, self.recent):
            a[...] = 0

    def state(self, close: float):
        """(position, balance, unrealized P&L) at a bar's close, as the PPO environment defines them."""
        unrealized = self.position * (close - self.avg_price) * self.execution.spec.point_value
        return self.position, self.initial_balance + self.equity - unrealized, unrealized

    def decide(self, step: np.ndarray, action_code: np.ndarray, max_position: int) -> None:
        """Apply counted steps (+1/-1/0) at this bar's close; record the actions (0/1/2)."""
        self.target = np.clip(self.target + step, -max_position, max_position)
        self.recent[:, :-1] = self.recent[:, 1:]
        self.recent[:, -1] = action_code

    def fill(self, closing: bool, prev_close: float, open_: float, close: float) -> None:
        """The next bar: fill at its open (flat when it is the segment's last), book its P&L."""
        prev = self.position
        new = np.zeros_like(prev) if closing else self.target.copy()
        pnl, _ = self.execution.bar_pnl(prev, new, prev_close, open_, close)
        qty = new - prev
        fill = self.execution.fill_price(open_, qty)
        # The broker's average entry price (the PPO environment's rule): adding averages in,
        # reducing keeps it, flipping through zero restarts at the fill.
        grows = (np.abs(new) > np.abs(prev)) & (prev * new >= 0)
        grown = (self.avg_price * np.abs(prev) + fill * np.abs(qty)) / np.maximum(np.abs(new), 1)
        avg = np.where(grows, grown, self.avg_price)
        avg = np.where(prev * new < 0, fill, avg)
        self.avg_price = np.where(new == 0, 0.0, avg)
        self.position = new
        self.equity = self.equity + pnl


# ----------------------------------------------------------------------------- predicting one fold


@dataclass
class FoldPrediction:
    """Per test bar of one fold: every model's vote, the ensemble's and each model's own signal."""

    votes: dict  # kind -> [n, 3] (hold, buy, sell), NaN where the model could not run
    outputs: dict  # column -> [n]: win probabilities, LSTM and PPO heads
    action: np.ndarray  # ensemble: 0 hold, 1 buy, 2 sell
    confidence: np.ndarray
    alone: dict  # "<kind>" -> (action 0/1/2, confidence)


def open_runtimes(stored: dict) -> dict:
    from trademl.predict.ensemble import _load_runtime

    return {kind: _load_runtime(kind, s) for kind, s in stored.items()}


def _lgbm_votes(rt, X: np.ndarray):
    usable = np.isfinite(X).any(axis=1)  # the predictor skips a bar whose features are all missing
    p_long, p_short = rt.predict_win(X, np.ones(len(X))), rt.predict_win(X, -np.ones(len(X)))
    p_long[~usable] = p_short[~usable] = np.nan
    from trademl.predict.combine import lgbm_vote

    return lgbm_vote(p_long, p_short), p_long, p_short


def _lstm_votes(rt, X: np.ndarray, segments: np.ndarray, rows: np.ndarray):
    from trademl.data.sequences import valid_window_ends, windows_at
    from trademl.predict.combine import signal_vote

    n = len(rows)
    heads = {k: np.full(n, np.nan) for k in ("hold", "buy", "sell", "movement", "risk")}
    ends = np.intersect1d(valid_window_ends(X, segments, rt.sequence_length), rows)
    at = np.searchsorted(rows, ends)
    for lo in range(0, len(ends), LSTM_BATCH):
        out = rt.predict(windows_at(X, ends[lo: lo + LSTM_BATCH], rt.sequence_length))
        for k in heads:
            heads[k][at[lo: lo + LSTM_BATCH]] = np.ravel(out[k])
    return signal_vote(heads["hold"], heads["buy"], heads["sell"]), heads


def predict_fold(runtimes: dict, weights: dict, dataset, rows: np.ndarray, bt_segments: np.ndarray,
                 config: Config) -> FoldPrediction:
    """Every model and the ensemble on the test ``rows`` of ``dataset`` (see the module doc)."""
    from trademl.predict.combine import combine_votes

    X = dataset.X
    seg = dataset.segments
    votes, outputs = {}, {}
    for kind in ("lgb_5m", "lgb_30m"):
        if kind in runtimes:
            votes[kind], outputs[f"{kind}_win_long"], outputs[f"{kind}_win_short"] = _lgbm_votes(runtimes[kind], X[rows])
    if "lstm" in runtimes:
        votes["lstm"], heads = _lstm_votes(runtimes["lstm"], X, seg, rows)
        outputs.update({f"lstm_{k}": v for k, v in heads.items()})
    alone = {}
    for kind, vote in votes.items():
        single = combine_votes({kind: vote}, {kind: 1.0})
        alone[kind] = (single.action, single.confidence)
    if "ppo" in runtimes:
        action, confidence, ppo_out, alone["ppo"] = _ppo_loop(runtimes["ppo"], votes, weights, dataset, rows,
                                                               bt_segments, config)
        votes["ppo"] = ppo_out.pop("vote")
        outputs.update(ppo_out)
    else:
        combined = combine_votes(votes, weights)
        action, confidence = combined.action, combined.confidence
    return FoldPrediction(votes, outputs, action, confidence, alone)


def _ppo_loop(rt, votes: dict, weights: dict, dataset, rows: np.ndarray, bt_segments: np.ndarray, config: Config):
    """Bar by bar: the agent sees the ensemble's account (row 0) and its own (row 1), in one
    batch-2 ONNX call; the ensemble vote of the bar follows, then both accounts trade."""
    from trademl.data.segments import bars_to_end
    from trademl.data.sequences import valid_window_ends
    from trademl.market.execution import ExecutionModel
    from trademl.predict.combine import combine_votes, signal_vote

    bt = config.backtest
    X = dataset.X
    frame = dataset.frame
    open_ = frame["open"].to_numpy(np.float64)[rows]
    close = frame["close"].to_numpy(np.float64)[rows]
    n, w = len(rows), rt.window
    can_run = np.isin(rows, valid_window_ends(X, dataset.segments, w))
    starts = np.r_[True, bt_segments[1:] != bt_segments[:-1]]
    left = bars_to_end(bt_segments)
    execution = ExecutionModel.from_config(dataset.spec, config.costs, config.account.max_position_size)
    accounts = Accounts(2, execution, config.account.initial_balance)
    direction = np.array([0.0, 1.0, -1.0])  # hold, buy, sell -> contracts
    probs_all, value_all = np.full((n, 3), np.nan), np.full(n, np.nan)
    action, confidence = np.zeros(n, np.int8), np.zeros(n)
    alone_action, alone_conf = np.zeros(n, np.int8), np.zeros(n)
    seen = np.zeros((n, 2))  # the positions the agent saw: the ensemble's account, its own
    for i in range(n):
        if starts[i]:
            accounts.restart()
        seen[i] = accounts.position
        row_votes = {k: v[i] for k, v in votes.items()}
        if can_run[i]:
            window = X[rows[i] - w + 1: rows[i] + 1]
            position, balance, unrealized = accounts.state(close[i])
            obs = rt.observation(np.stack([window, window]), position, balance, unrealized, accounts.recent)
            probs, value = rt.predict(obs)
            probs_all[i], value_all[i] = probs[0], float(np.ravel(value)[0])
            row_votes["ppo"] = signal_vote(probs[:1, 0], probs[:1, 1], probs[:1, 2])[0]
            own = int(np.argmax(probs[1]))
            alone_action[i], alone_conf[i] = own, float(probs[1][own] / probs[1].sum())
        if row_votes:
            combined = combine_votes({k: v[None] for k, v in row_votes.items()}, weights)
            action[i], confidence[i] = combined.action[0], combined.confidence[0]
        codes = np.array([action[i], alone_action[i]])
        counted = (np.array([confidence[i], alone_conf[i]]) > bt.confidence_threshold) & (codes != 0)
        accounts.decide(np.where(counted, direction[codes], 0.0), np.where(counted, codes, 0), config.account.max_position_size)
        if left[i] > 0:
            accounts.fill(left[i] == 1, close[i], open_[i + 1], close[i + 1])
    ppo_out = {"vote": signal_vote(probs_all[:, 0], probs_all[:, 1], probs_all[:, 2]),
               "ppo_hold": probs_all[:, 0], "ppo_buy": probs_all[:, 1], "ppo_sell": probs_all[:, 2],
               "ppo_value": value_all, "ppo_seen_ensemble_position": seen[:, 0],
               "ppo_alone_position": seen[:, 1]}
    return action, confidence, ppo_out, (alone_action, alone_conf)


# ----------------------------------------------------------------------------- the walk-forward


@dataclass
class FoldOutcome:
    number: int
    train_rows: tuple[int, int]  # first and last dataset row trained on
    test_rows: tuple[int, int]
    versions: dict  # kind -> version in the fold's temporary store
    training_spans: dict  # kind -> the manifest's training span
    weights: dict
    weight_warning: str | None
    skipped: dict
    seconds: dict


@dataclass
class WalkForwardResult:
    bars: pd.DataFrame  # the test bars of every fold, concatenated (attrs: symbol)
    segments: np.ndarray  # backtest segments: the data's, plus a break at every fold boundary
    signals: pd.DataFrame  # ensemble: action (+1/-1/0), confidence, fold
    model_signals: dict  # "<kind>" -> DataFrame(action, confidence)
    outputs: pd.DataFrame  # every model's raw outputs per test bar
    folds: list
    runs: dict  # name -> BacktestResult (ensemble first, baselines, each model alone)
    table: pd.DataFrame
    config: Config
    horizon: int
    report_path: Path | None = None

    @property
    def ensemble(self):
        return self.runs[ENSEMBLE]

    def write_report(self, path, title: str | None = None) -> Path:
        from trademl.backtest.report import write_report

        bt = self.config.backtest
        symbol = self.bars.attrs.get("symbol", "")
        title = title or f"trademl walk-forward backtest: {symbol}, {len(self.folds)} folds"
        self.report_path = write_report(path, self.runs, bars=self.bars, main=ENSEMBLE, table=self.table, title=title,
                                        confidence_threshold=bt.confidence_threshold,
                                        hit_rate_horizon=bt.hit_rate_horizon)
        return self.report_path


def _engine_codes(action: np.ndarray) -> np.ndarray:
    """combine's 0 hold / 1 buy / 2 sell -> the engine's 0 / +1 / -1."""
    return np.array([0, 1, -1], dtype=np.int8)[np.asarray(action, dtype=np.int64)]


def backtest_segments(data_segments: np.ndarray, fold_of_row: np.ndarray) -> np.ndarray:
    """Segment ids of the concatenated test bars: a new one at every data gap and fold boundary."""
    change = np.r_[False, (data_segments[1:] != data_segments[:-1]) | (fold_of_row[1:] != fold_of_row[:-1])]
    return np.cumsum(change, dtype=np.int32)


def walk_forward_backtest(dataset, config: Config | None = None, *, models=tuple(MODEL_KINDS),
                          n_folds: int | None = None, budget: str | None = None,
                          progress: Progress | None = None, work_dir=None) -> WalkForwardResult:
    """Train on each fold's past, predict its test span, trade the concatenated folds. See the module doc."""
    from trademl.data.splits import walk_forward_splits
    from trademl.models.store import ModelStore
    from trademl.predict.ensemble import KINDS, choose_weights

    cfg = budget_config(resolve_config(config), budget)
    models = check_models(models)
    n_folds = n_folds or cfg.backtest.n_folds
    horizon = max(dataset.horizons)
    folds = walk_forward_splits(len(dataset.frame), n_folds, horizon, cfg.lgbm.embargo_bars)
    say = progress or (lambda _msg: None)
    outcomes, parts = [], []
    for fold in folds:
        started = time.perf_counter()
        say(f"fold {fold.number + 1}/{len(folds)}: training on rows 0..{fold.train[-1]:,} "
            f"({dataset.frame.index[fold.train[-1]]:%Y-%m-%d %H:%M}), testing {len(fold.test):,} bars "
            f"from {dataset.frame.index[fold.test[0]]:%Y-%m-%d %H:%M}")
        with tempfile.TemporaryDirectory(prefix="trademl-wf-", dir=work_dir) as tmp:
            trained = train_models(sub_dataset(dataset, fold.train), cfg, Path(tmp) / "models", models=models,
                                   work_dir=Path(tmp) / "checkpoints", skip_failed=True)
            # The predictor's order and weights: validation skill from each manifest.
            stored = {k: ModelStore(Path(tmp) / "models").load(k) for k in KINDS if k in trained.stored}
            if not stored:
                raise InsufficientDataError(f"fold {fold.number + 1}: no model could be trained: {trained.skipped}",
                                            where="walk-forward", hint="use more data or fewer folds")
            weights, warning = choose_weights(cfg.ensemble.weights, {k: s.manifest.get("metrics") or {}
                                                                   for k, s in stored.items()})
            runtimes = open_runtimes(stored)
        fold_segments = backtest_segments(dataset.segments[fold.test], np.zeros(len(fold.test)))
        predicting = time.perf_counter()
        predicted = predict_fold(runtimes, weights, dataset, fold.test, fold_segments, cfg)
        seconds = dict(trained.seconds, predict=time.perf_counter() - predicting, total=time.perf_counter() - started)
        outcomes.append(FoldOutcome(
            fold.number, (int(fold.train[0]), int(fold.train[-1])), (int(fold.test[0]), int(fold.test[-1])),
            {k: s.version for k, s in stored.items()}, {k: s.manifest.get("training_span") for k, s in stored.items()},
            weights, warning, trained.skipped, seconds))
        parts.append((fold, predicted))
        used = ", ".join(f"{k} {w:.2f}" for k, w in weights.items())
        parts_time = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
        say(f"fold {fold.number + 1}/{len(folds)} done in {seconds['total']:.0f} s ({parts_time}); weights: {used}"
            + (f" ({warning})" if warning else "") + "".join(f"; {k} skipped: {why}" for k, why in trained.skipped.items()))
    return _assemble(dataset, cfg, horizon, parts, outcomes)


def _assemble(dataset, cfg: Config, horizon: int, parts, outcomes) -> WalkForwardResult:
    """Concatenate the folds, then backtest the ensemble, the baselines and each model alone."""
    from trademl.backtest.baselines import comparison_table, run_baselines
    from trademl.backtest.engine import run_backtest

    rows = np.concatenate([f.test for f, _ in parts])
    fold_of_row = np.concatenate([np.full(len(f.test), f.number) for f, _ in parts])
    bars = dataset.bars().iloc[rows]
    bars.attrs["symbol"] = dataset.symbol
    segments = backtest_segments(dataset.segments[rows], fold_of_row)
    signals = pd.DataFrame({
        "action": _engine_codes(np.concatenate([p.action for _, p in parts])),
        "confidence": np.concatenate([p.confidence for _, p in parts]),
        "fold": fold_of_row,
    }, index=bars.index)
    model_signals = {}
    for kind in [k for k in ("lgb_5m", "lgb_30m", "lstm", "ppo") if any(k in p.alone for _, p in parts)]:
        # A fold where the model was skipped holds: no signal, confidence 0.
        held = [p.alone.get(kind, (np.zeros(len(f.test), np.int8), np.zeros(len(f.test)))) for f, p in parts]
        model_signals[kind] = pd.DataFrame({
            "action": _engine_codes(np.concatenate([a for a, _ in held])),
            "confidence": np.concatenate([c for _, c in held]),
        }, index=bars.index)
    columns = sorted({c for _, p in parts for c in p.outputs})
    outputs = pd.DataFrame({c: np.concatenate([p.outputs.get(c, np.full(len(f.test), np.nan)) for f, p in parts])
                            for c in columns}, index=bars.index)
    bt = cfg.backtest
    strategy = run_backtest(bars, signals[["action", "confidence"]], spec=dataset.spec, segments=segments,
                            name=ENSEMBLE, config=cfg)
    runs = run_baselines(bars, strategy, model_signals=model_signals, confidence_threshold=bt.confidence_threshold,
                         seed=bt.random_baseline_seed)
    # Every candidate counts as a trial, also one that never traded (no Sharpe): it was tried.
    from trademl.backtest.baselines import is_baseline

    table = comparison_table(runs, n_trials=sum(not is_baseline(name) for name in runs))
    return WalkForwardResult(bars, segments, signals, model_signals, outputs, outcomes, runs, table, cfg, horizon)


# ----------------------------------------------------------------------------- presentation


# What fits 80 columns; the HTML report has every metric.
SHOWN = [("total_pnl", "net P&L", "${:,.0f}"), ("sharpe", "Sharpe", "{:.2f}"), ("max_drawdown_usd", "max DD", "${:,.0f}"),
         ("trades", "trades", "{:,.0f}"), ("win_rate", "win", "{:.0%}"), ("costs_paid", "costs", "${:,.0f}"),
         ("psr", "PSR", "{:.3f}"), ("dsr", "DSR", "{:.3f}")]


def results_table(table: pd.DataFrame, title: str = "out-of-sample, all folds"):
    """A rich table: one row per run (ensemble, baselines, each model alone)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    t.add_column("run", no_wrap=True)
    for _, label, _ in SHOWN:
        t.add_column(label, justify="right", no_wrap=True)
    for run, row in table.iterrows():
        cells = []
        for col, _, fmt in SHOWN:
            v = row[col]
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        t.add_row(str(run), *cells, style="bold" if run == ENSEMBLE else None)
    return t


def verdict(result: WalkForwardResult) -> str:
    """One line: is the ensemble's out-of-sample Sharpe significant after deflation?"""
    row = result.table.loc[ENSEMBLE]
    dsr, trials = row["dsr"], int(row["dsr_trials"])
    if row["trades"] == 0:
        signals = result.signals
        calls = signals["confidence"][signals["action"] != 0]
        peak = f"its BUY/SELL confidence peaked at {calls.max():.2f}" if len(calls) else "it never said BUY or SELL"
        return (f"ensemble: never traded: {peak}, the threshold is {result.config.backtest.confidence_threshold:g} "
                "(backtest.confidence_threshold); no Sharpe to test")
    if not (isinstance(dsr, float) and math.isfinite(dsr)):
        return "ensemble: no Sharpe to test (its P&L never varied)"
    significant = dsr > 0.95
    return (f"ensemble: deflated Sharpe {dsr:.3f} over {trials} candidates: "
            + ("a significant edge (> 0.95)" if significant else "NO significant edge (<= 0.95)"))


def backtest_models(dataset_path=None, config: Config | None = None, *, n_folds: int | None = None,
                    budget: str | None = None, out=None, models=tuple(MODEL_KINDS), console=None) -> WalkForwardResult:
    """What `trademl backtest` and scripts/backtest_models.py run: progress per fold, the
    table, the verdict and the HTML report (default: [paths] report_dir/backtest.html)."""
    from trademl.models.lgbm import load_training_dataset

    cfg = resolve_config(config)
    dataset = load_training_dataset(dataset_path, cfg)
    say = (lambda msg: console.print(msg)) if console is not None else None
    result = walk_forward_backtest(dataset, cfg, models=models, n_folds=n_folds, budget=budget, progress=say)
    path = Path(out) if out is not None else Path(cfg.paths.report_dir) / "backtest.html"
    result.write_report(path)
    if console is not None:
        console.print(results_table(result.table))
        console.print(verdict(result))
        console.print(f"report: {result.report_path}")
    return result
