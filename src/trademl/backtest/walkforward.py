"""Walk-forward backtest of the trained models: train on the past, predict the fold, trade it.

For every purged, embargoed fold of the dataset rows (``trademl.data.splits``, horizon =
the longest label horizon):

1. every registered kind is trained on the fold's training rows only, into the fold's own
   model store (``trademl.models.train_all.train_models``, what `trademl train all` runs);
2. the stored models are opened with their serving runtimes (ONNX Runtime, no torch and no
   lightgbm) and predict every bar of the test fold through the one model interface
   (``Runtime.predict(ModelInputs) -> Votes``): the kinds that do not observe the account in
   one batch, the PPO agent bar by bar, because its observation holds the account it trades;
3. the fold's stacker (``trademl.models.stacker``, fitted by ``train all`` on the last rows
   of the fold's training span, which its base models did not train on) decides every bar in
   one batch, at the fold's threshold (``fold_thresholds``: the configured one, or with "auto"
   the stacker's own choice); a fold without a stacker (too few rows) takes the weighted vote,
   ``trademl.predict.decision.decide`` with the weights ``choose_weights`` gives from the
   stored validation skill. Both are the functions the predictor calls, so backtest and
   serving cannot disagree (a test replays a fold through the predictor bar by bar and gets
   the same decisions, with each).

The folds' test spans are concatenated and traded by ``run_backtest`` (the guide's +/-1
contract rule up to max_position_size, only above the fold's threshold, fills at the next
bar's open through the broker; with the stacker each counted signal holds its contract for
[ensemble] horizon bars, ``holding_bars``). A fold boundary is a segment break: the account is
flat when the models are replaced. Next to the ensemble, each model alone (its own vote
through the same rule; the PPO agent with its own account) and the baselines (flat,
buy-and-hold, random entries with the same trade count) run on the same bars; every Sharpe
is deflated for the candidates compared.

The PPO agent observes an account, kept by the one broker (``trademl.market.broker``): for
the ensemble, the ensemble's position, its average entry price, the segment's net P&L and
the last 10 actions the ensemble took (hold when no signal counted); the account restarts
flat at every segment start, as the agent's training episodes and held-out evaluation do.
Under an account's rules (``account=``) the loop's accounts start at the rules' balance and
carry their limits across segments and folds (``trademl.risk.limits.AccountLimits``), so an
agent trained under rules observes its true room to each limit; the verdicts still come from
``apply_rules`` over the assembled runs.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from trademl.config import Config, resolve_config, small_budget
from trademl.data.dataset import sub_dataset
from trademl.errors import InsufficientDataError, TradeMLError
from trademl.market.actions import direction_of
from trademl.market.execution import ExecutionModel
from trademl.models.base import ModelInputs, Votes, kind_order, open_runtime
from trademl.models.stacker import STACKER_KIND
from trademl.models.train_all import PackedModels, train_packed
from trademl.predict.decision import choose_weights, decide

ENSEMBLE = "ensemble"
BUDGETS = ("small", "full")

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- configuration


def budget_config(config: Config, budget: str | None) -> Config:
    """``full`` (or None): the config as it is; ``small``: its [demo] budget applied."""
    if budget in (None, "full"):
        return config
    if budget == "small":
        return small_budget(config)
    raise TradeMLError(f"budget must be one of {', '.join(BUDGETS)}, not {budget!r}", where="--budget")


# ----------------------------------------------------------------------------- predicting one fold


@dataclass
class FoldPrediction:
    """Per test bar of one fold: every model's vote, the ensemble's and each model's own signal."""

    votes: dict  # kind -> [n, 3] (hold, buy, sell), NaN where the model could not run
    outputs: dict  # "<kind>_<output>" -> [n]: win probabilities, LSTM and PPO heads, ...
    action: np.ndarray  # ensemble: 0 hold, 1 buy, 2 sell
    confidence: np.ndarray
    alone: dict  # "<kind>" -> (action 0/1/2, confidence)
    thresholds: dict  # "ensemble" and each "<kind>" -> the confidence its signals must be above


def fold_thresholds(config: Config, stacker, kinds) -> dict:
    """The thresholds in force in one fold: [backtest] confidence_threshold for every run, or with
    "auto" the ones the fold's stacker chose on its validation span (``trademl.models.stacker``)."""
    from trademl.models.stacker import NO_EDGE

    t = config.backtest.confidence_threshold
    if t != "auto":
        return {ENSEMBLE: float(t), **{k: float(t) for k in kinds}}
    if stacker is None:  # no stacker in this fold (too few rows): no evidence, every candidate holds
        return {ENSEMBLE: NO_EDGE, **{k: NO_EDGE for k in kinds}}
    return {ENSEMBLE: stacker.threshold_auto, **{k: stacker.alone_thresholds.get(k, NO_EDGE) for k in kinds}}


def open_runtimes(stored: dict) -> dict:
    """{kind: Runtime} in the predictor's order (the order ``decide`` sums the votes in)."""
    return {kind: open_runtime(stored[kind]) for kind in sorted(stored, key=kind_order)}


def predict_fold(runtimes: dict, weights: dict, dataset, rows: np.ndarray, bt_segments: np.ndarray,
                 config: Config, limits=None, stacker=None) -> FoldPrediction:
    """Every model and the ensemble on the test ``rows`` of ``dataset`` (see the module doc).

    Kinds whose votes do not depend on the account predict the whole fold in one batch;
    kinds that observe the account (the PPO agent) run bar by bar beside the broker.
    ``limits``: the accounts' rules state (``AccountLimits`` over 1 + observing kinds accounts),
    carried from fold to fold by the caller; None without rules. ``stacker``: the fold's
    ``StackerRuntime``, which then decides for the ensemble (None: the weighted vote).
    """
    inputs = ModelInputs(dataset.X, rows, dataset.segments)
    votes = {kind: rt.predict(inputs) for kind, rt in runtimes.items() if not rt.needs_account}
    thresholds = fold_thresholds(config, stacker, runtimes)
    alone = {}
    for kind, v in votes.items():
        single = decide({kind: v.vote}, {kind: 1.0})
        alone[kind] = (single.action, single.confidence)
    observing = {kind: rt for kind, rt in runtimes.items() if rt.needs_account}
    stacked = _stacked_fold(stacker, runtimes, votes, inputs, dataset, rows, config, thresholds[ENSEMBLE])
    novel = novel_rows(runtimes, dataset.X[rows], config)
    if observing:
        action, confidence, looped = _account_loop(observing, votes, list(runtimes), weights, dataset, inputs,
                                                   bt_segments, config, limits, stacked, thresholds, novel)
        votes.update(looped.votes)
        alone.update(looped.alone)
        extra = looped.outputs
    elif stacked is not None:
        action, confidence, extra = (*held_when_novel(stacked.action, stacked.confidence, _stacked_hold(stacked), novel), {})
    else:
        decision = decide({k: v.vote for k, v in votes.items()}, weights)
        action, confidence, extra = (*held_when_novel(decision.action, decision.confidence,
                                                      decision.probabilities[:, 0], novel), {})
    outputs = {f"{kind}_{name}": values for kind, v in votes.items() for name, values in v.outputs.items()}
    outputs.update(extra)
    if stacked is not None:
        outputs.update({"stacker_p_win_long": stacked.p_long, "stacker_p_win_short": stacked.p_short,
                        "stacker_pnl_long": stacked.pnl_long, "stacker_pnl_short": stacked.pnl_short,
                        "stacker_contracts": stacked.contracts.astype(np.float64)})
        if novel is not None:  # where the novelty rule held the ensemble: its threshold trials hold there too
            outputs["stacker_novel_held"] = novel.astype(np.float64)
    return FoldPrediction({k: v.vote for k, v in votes.items()}, outputs, action, confidence, alone, thresholds)


def novel_rows(runtimes: dict, X: np.ndarray, config: Config) -> np.ndarray | None:
    """Rows whose features are unlike the training inputs, where the predictor would answer HOLD
    ([serve] novelty_action = "hold"; ``trademl.models.novelty``); None: no such rule here."""
    if config.serve.novelty_action != "hold":
        return None
    reference = next((rt.novelty for rt in runtimes.values() if getattr(rt, "novelty", None) is not None), None)
    return None if reference is None else reference.novel(X)


def held_when_novel(action: np.ndarray, confidence: np.ndarray, hold_confidence: np.ndarray, novel):
    """The predictor's rule on a batch: a BUY or SELL on a novel row becomes HOLD, with HOLD's confidence."""
    if novel is None:
        return action, confidence
    turned = novel & (action != 0)
    return np.where(turned, 0, action).astype(action.dtype), np.where(turned, hold_confidence, confidence)


def _stacked_hold(stacked) -> np.ndarray:
    """HOLD's confidence with the stacker: the probability that neither side wins (the predictor's)."""
    return np.clip(1.0 - stacked.p_long - stacked.p_short, 0.0, 1.0)


def _stacked_fold(stacker, runtimes: dict, votes: dict, inputs: ModelInputs, dataset, rows, config: Config,
                  threshold: float):
    """The stacker's decision on every bar of the fold in one batch (None without a stacker). The
    agents that observe an account vote from a flat one here, as the stacker was fitted, so the
    decision does not depend on the positions it leads to."""
    if stacker is None:
        return None
    stack_votes = {k: v.vote for k, v in votes.items()}
    for kind, rt in runtimes.items():
        if rt.needs_account:
            stack_votes[kind] = rt.predict(inputs).vote
    return stacker.decide(stack_votes, dataset.X[rows], dataset.feature_names, threshold=threshold,
                          max_contracts=config.account.max_position_size)


@dataclass
class _Looped:
    votes: dict  # kind -> Votes over the fold (the ensemble account's observations)
    alone: dict  # kind -> (action, confidence) of the kind trading its own account
    outputs: dict  # extra columns: the positions each observing kind saw


def _account_loop(observing: dict, votes: dict, order: list, weights: dict, dataset, inputs: ModelInputs,
                  bt_segments: np.ndarray, config: Config, limits=None, stacked=None, thresholds=None, novel=None):
    """Bar by bar through the broker: account 0 is the ensemble's, account 1 + j the j-th observing
    kind's own. At each close every observing kind sees the ensemble's account (its vote joins
    the ensemble's, unless the stacker's ``stacked`` decisions are the ensemble's) and its own (its
    decision alone); the decisions count above their ``thresholds``, move the broker's targets, and
    fill at the next open (flat before a gap or a fold boundary). ``novel``: rows where the
    ensemble's BUY or SELL becomes HOLD, as the predictor's novelty rule does.
    """
    from trademl.market.broker import Broker
    from trademl.segments import bars_to_end, segment_start_mask

    frame = dataset.frame
    X, data_segments, rows = inputs.X, inputs.segments, inputs.at  # the batch's own copies: none made per bar
    open_ = frame["open"].to_numpy(np.float64)[rows]
    close = frame["close"].to_numpy(np.float64)[rows]
    n, kinds = len(rows), list(observing)
    starts, left = segment_start_mask(bt_segments), bars_to_end(bt_segments)
    execution = ExecutionModel.from_config(dataset.spec, config.costs, config.account.max_position_size)
    broker = Broker(execution, 1 + len(kinds), config.account.initial_balance, hold_bars=holding_bars(config))
    account_day = None
    if limits is not None:  # the accounts are the rules' (see the module doc)
        from trademl.risk.account import trading_days

        broker.initial_balance = limits.rules.starting_balance
        account_day = trading_days(frame.index[rows], limits.rules)[0]
    thresholds = thresholds or fold_thresholds(config, None, kinds)
    threshold = np.array([thresholds[ENSEMBLE], *(thresholds[k] for k in kinds)])
    seen = np.zeros((n, 1 + len(kinds)))
    bar_pnl = 0.0  # the P&L booked for the bar being observed (by the previous bar's fill)
    seen_room = np.ones((n, 2))  # the ensemble account's room to its limits, as observed (under rules)
    ran = {k: [] for k in kinds}  # per bar: the kind's Votes of the ensemble account, or None
    codes, conf = np.zeros((n, 1 + len(kinds)), np.int8), np.zeros((n, 1 + len(kinds)))
    for i in range(n):
        if starts[i]:
            if limits is not None:
                limits.carry(slice(None), broker.equity)
            broker.restart()
        seen[i] = broker.position
        state = broker.state(close[i])
        if limits is not None:
            state.room = _room_at(limits, account_day[i], broker.equity, bar_pnl)
            seen_room[i] = state.room[0]
        row_votes = {k: v.vote[i] for k, v in votes.items()}
        for j, kind in enumerate(kinds):
            # Both accounts in one batch of two: the policy's ONNX graph gives each row the same
            # bits as a batch of one (the predictor's), checked in tests/test_one_house.py.
            both = observing[kind].predict(ModelInputs(X, [rows[i], rows[i]], data_segments,
                                                       account=state.take([0, 1 + j])))
            ran[kind].append(both if both.ran[0] else None)
            if both.ran[0]:
                row_votes[kind] = both.vote[0]
                single = decide({kind: both.vote[1:]}, {kind: 1.0})
                codes[i, 1 + j], conf[i, 1 + j] = single.action[0], single.confidence[0]
        if stacked is not None:
            codes[i, 0], conf[i, 0] = stacked.action[i], stacked.confidence[i]
            hold_conf = _stacked_hold(stacked)[i]
        elif row_votes:
            decision = decide({k: row_votes[k][None] for k in order if k in row_votes}, weights)
            codes[i, 0], conf[i, 0] = decision.action[0], decision.confidence[0]
            hold_conf = decision.probabilities[0][0]
        if novel is not None and novel[i] and codes[i, 0] != 0:
            codes[i, 0], conf[i, 0] = 0, hold_conf
        broker.signal(codes[i], conf[i] > threshold)
        bar_pnl = 0.0
        if left[i] > 0:
            bar_pnl = broker.fill_target(left[i] == 1, close[i], open_[i + 1], close[i + 1])[0]
    if limits is not None:  # the next fold's accounts go on from here
        limits.carry(slice(None), broker.equity)
    looped = _Looped({k: _stack_votes(k, ran[k], n) for k in kinds},
                     {k: (codes[:, 1 + j], conf[:, 1 + j]) for j, k in enumerate(kinds)}, {})
    for j, kind in enumerate(kinds):
        looped.outputs[f"{kind}_seen_ensemble_position"] = seen[:, 0]
        looped.outputs[f"{kind}_alone_position"] = seen[:, 1 + j]
        if limits is not None:
            looped.outputs[f"{kind}_seen_room_trailing"] = seen_room[:, 0]
            looped.outputs[f"{kind}_seen_room_daily"] = seen_room[:, 1]
    return codes[:, 0], conf[:, 0], looped


def _room_at(limits, day: int, broker_equity: np.ndarray, bar_pnl) -> np.ndarray:
    """The accounts' room at this close; a new trading day first closes the last one at the
    previous close (the equity before this bar's P&L)."""
    limits.open_day(np.full(len(broker_equity), day), limits.equity(broker_equity - bar_pnl))
    return limits.room(limits.equity(broker_equity))


def _stack_votes(kind: str, per_bar: list, n: int) -> Votes:
    """One Votes over the fold from per-bar ones (None: the model could not run on that bar)."""
    template = next((v for v in per_bar if v is not None), None)
    if template is None:
        return Votes.none(kind, n, "never ran on this fold")
    vote = np.full((n, 3), np.nan)
    outputs = {name: np.full(n, np.nan) for name in template.outputs}
    for i, v in enumerate(per_bar):
        if v is not None:
            vote[i] = v.vote[0]
            for name in outputs:
                outputs[name][i] = v.outputs[name][0]
    return Votes(kind, vote, outputs, template.fields)


# ----------------------------------------------------------------------------- the walk-forward


@dataclass
class FoldOutcome:
    number: int
    train_rows: tuple[int, int]  # first and last dataset row trained on
    test_rows: tuple[int, int]
    versions: dict  # kind -> version in the fold's store
    training_spans: dict  # kind -> the manifest's training span
    weights: dict
    weight_warning: str | None
    skipped: dict
    seconds: dict
    thresholds: dict = None  # "ensemble" and each "<kind>" -> the threshold in force in this fold
    stacker: str | None = None  # the stacker's version when it decided this fold


def _open_stacker(stored):
    from trademl.models.stacker import StackerRuntime

    return None if stored is None else StackerRuntime.load(stored)


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
    # With an account (``--account topstep-50k``): every run traded through its rules, and per run
    # the verdict (passed, breached, when, trading days) with the Monte Carlo pass probability.
    accounts: dict | None = None
    # With ``stops=True`` (``--stops``): the ATR stop and target every run's trades had
    # (``trademl.backtest.signals.stops_used``); None: the signals' own exits only.
    stops: dict | None = None
    # The probability of backtest overfitting over the DSR's candidates (``candidate_pbo``); NaN
    # when there are too few candidates or sessions.
    pbo: float = math.nan
    # The ensemble's confidence as a probability of a win (``ensemble_calibration``): ece, n, bins.
    calibration: dict | None = None

    @property
    def ensemble(self):
        return self.runs[ENSEMBLE]

    def suggested_sizes(self) -> np.ndarray | None:
        """The stacker's suggested contracts on the ensemble's BUY/SELL bars (None without it)."""
        if "stacker_contracts" not in self.outputs:
            return None
        calls = (self.signals["action"] != 0).to_numpy()
        sizes = self.outputs["stacker_contracts"].to_numpy()[calls]
        return sizes[np.isfinite(sizes)]

    def write_report(self, path, title: str | None = None) -> Path:
        from trademl.backtest.report import write_report

        bt = self.config.backtest
        symbol = self.bars.attrs.get("symbol", "")
        title = title or (f"trademl walk-forward backtest: {symbol}, {len(self.folds)} folds"
                          + (f", ATR stops {self.stops['stop_atr']:g} / targets {self.stops['target_atr']:g}"
                             if self.stops else ""))
        self.report_path = write_report(path, self.runs, bars=self.bars, main=ENSEMBLE, table=self.table, title=title,
                                        confidence_threshold=(None if bt.confidence_threshold == "auto"
                                                              else bt.confidence_threshold),
                                        hit_rate_horizon=bt.hit_rate_horizon, calibration=self.calibration,
                                        pbo=self.pbo, sizes=self.suggested_sizes())
        return self.report_path

    def to_json(self) -> dict:
        """The results as plain JSON values (NaN as null): bars, DSR trials, PBO, each run's
        headline figures under its plain name (``random``, not ``random (seed 0)``), and the
        ensemble's calibration."""
        from trademl.backtest.baselines import is_baseline
        from trademl.backtest.signals import json_figures, plain_value

        runs = {(name.split(" ")[0] if is_baseline(name) else name): json_figures(self.table, name)
                for name in self.table.index}
        return {"bars": len(self.bars), "dsr_trials": int(self.table.loc[ENSEMBLE, "dsr_trials"]),
                "pbo": plain_value(float(self.pbo)), "runs": runs,
                "ensemble_calibration": self.calibration}

    def write_json(self, path) -> Path:
        """``to_json`` written atomically: a reader sees the old file or the new one, never half."""
        import json

        from trademl.html_page import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        return path


def backtest_segments(data_segments: np.ndarray, fold_of_row: np.ndarray) -> np.ndarray:
    """Segment ids of the concatenated test bars: a new one at every data gap and fold boundary."""
    from trademl.segments import segment_start_mask

    change = segment_start_mask(data_segments) | segment_start_mask(fold_of_row)
    change[:1] = False
    return np.cumsum(change, dtype=np.int32)


def walk_forward_backtest(dataset, config: Config | None = None, *, models=None,
                          n_folds: int | None = None, budget: str | None = None,
                          progress: Progress | None = None, work_dir=None, keep_models=None,
                          account=None, stops: bool = False, workers: int = 1,
                          ray_address: str | None = None) -> WalkForwardResult:
    """Train on each fold's past, predict its test span, trade the concatenated folds. See the module doc.

    ``models``: the families to train (default: every registered one). ``keep_models``: a folder
    that keeps each fold's model store (``fold<N>``), e.g. to replay a fold through the
    predictor; by default they are temporary. ``account``: a preset name (``topstep-50k``) or
    AccountRules: every run is traded through the account's rules (``result.accounts``).
    ``stops``: every run's trades also get an ATR stop and target ([risk] stop_atr, target_atr),
    checked inside each bar, as ``backtest-signals --stops`` (``result.stops`` says which).
    ``workers``: folds trained at once (``trademl.parallel``: > 1 on Ray, at ``ray_address`` if
    given); the folds are then predicted and traded in order, so the result is the same.
    """
    from trademl.data.splits import walk_forward_splits
    from trademl.models.train_all import check_families, families
    from trademl.parallel import run_jobs, threads_per_worker, with_threads
    from trademl.risk.rules import rules_for

    cfg = budget_config(resolve_config(config), budget)
    models = check_families(models or families())
    n_folds = n_folds or cfg.backtest.n_folds
    horizon = max(dataset.horizons)
    folds = walk_forward_splits(len(dataset.frame), n_folds, horizon, cfg.lgbm.embargo_bars)
    say = progress or (lambda _msg: None)
    outcomes, parts = [], []
    rules, limits = (rules_for(account) if account is not None else None), None
    for fold in folds:
        say(f"fold {fold.number + 1}/{len(folds)}: training on rows 0..{fold.train[-1]:,} "
            f"({dataset.frame.index[fold.train[-1]]:%Y-%m-%d %H:%M}), testing {len(fold.test):,} bars "
            f"from {dataset.frame.index[fold.test[0]]:%Y-%m-%d %H:%M}")
    job_cfg = with_threads(cfg, threads_per_worker(workers, ray_address)) if workers > 1 else cfg
    # Longest training first: the expanding folds' costs grow with their rows, and a worker that
    # starts the biggest one while the others share the small ones finishes soonest.
    order = sorted(range(len(folds)), key=lambda i: -len(folds[i].train))
    jobs = run_jobs(train_fold, [(int(folds[i].train[0]), int(folds[i].train[-1]) + 1) for i in order],
                    workers=workers, address=ray_address, shared={"dataset": dataset, "config": job_cfg, "models": models})
    trained_folds = [None] * len(folds)
    for i, trained in zip(order, jobs):
        trained_folds[i] = trained
    with tempfile.TemporaryDirectory(prefix="trademl-wf-", dir=work_dir) as tmp:
        for fold, trained in zip(folds, trained_folds):
            root = Path(keep_models) / f"fold{fold.number}" if keep_models is not None else Path(tmp) / f"fold{fold.number}"
            stored, stacker, runtimes, weights, warning = _open_fold(trained, root, fold, cfg)
            fold_segments = backtest_segments(dataset.segments[fold.test], np.zeros(len(fold.test)))
            predicting = time.perf_counter()
            limits = _fold_limits(limits, rules, runtimes)
            predicted = predict_fold(runtimes, weights, dataset, fold.test, fold_segments, cfg, limits, stacker)
            seconds = dict(trained.seconds, predict=time.perf_counter() - predicting)
            seconds["total"] = sum(seconds.values())
            outcomes.append(FoldOutcome(
                fold.number, (int(fold.train[0]), int(fold.train[-1])), (int(fold.test[0]), int(fold.test[-1])),
                {k: s.version for k, s in stored.items()}, {k: s.manifest.get("training_span") for k, s in stored.items()},
                weights, warning, trained.skipped, seconds, predicted.thresholds,
                stacker.version if stacker is not None else None))
            parts.append((fold, predicted))
            used = ("stacked" if stacker is not None else "vote: " + ", ".join(f"{k} {w:.2f}" for k, w in weights.items())
                    + f"; threshold {predicted.thresholds[ENSEMBLE]:g}")
            parts_time = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
            say(f"fold {fold.number + 1}/{len(folds)} done in {seconds['total']:.0f} s ({parts_time}); ensemble: {used}"
                + (f" ({warning})" if warning and stacker is None else "")
                + "".join(f"; {k} skipped: {why}" for k, why in trained.skipped.items()))
    return _assemble(dataset, cfg, horizon, parts, outcomes, account, stops, tuned=tuning_trials(cfg, models))


def train_fold(start: int, stop: int, *, dataset, config: Config, models) -> PackedModels:
    """Every chosen family trained on rows ``start:stop``, packed (``train_all.train_packed``)."""
    return train_packed(sub_dataset(dataset, np.arange(start, stop)), config, models)


def _open_fold(trained: PackedModels, root: Path, fold, cfg: Config):
    """The fold's store unpacked at ``root`` and opened: stored models, stacker, runtimes, weights."""
    from trademl.models.store import ModelStore
    from trademl.parallel import unpack_folder

    unpack_folder(trained.store, root)
    stored = {k: ModelStore(root).load(k) for k in trained.kinds}
    stacker = _open_stacker(stored.pop(STACKER_KIND, None))
    if not stored:
        raise InsufficientDataError(f"fold {fold.number + 1}: no model could be trained: {trained.skipped}",
                                    where="walk-forward", hint="use more data or fewer folds")
    # The predictor's order and weights (``trademl.predict.loader``): stored skill of each kind.
    runtimes = open_runtimes(stored)
    weights, warning = choose_weights(cfg.ensemble.weights, {k: stored[k].manifest.get("metrics") or {}
                                                           for k in runtimes})
    return stored, stacker, runtimes, weights, warning


def tuning_trials(cfg: Config, models) -> int:
    """Trials spent choosing the settings of the families traded here (``[tune] trials``, which
    `trademl tune` writes): each was a configuration tried, so each counts in the deflated Sharpe."""
    return sum(n for kind, n in cfg.tune.trials.items() if kind in models)


def _fold_limits(limits, rules, runtimes: dict):
    """The accounts' limits for the next fold's loop (None without rules): the last fold's, going
    on, unless the number of accounts changed (a kind that observes the account was skipped)."""
    if rules is None:
        return None
    from trademl.risk.limits import AccountLimits

    n = 1 + sum(rt.needs_account for rt in runtimes.values())
    if limits is None or len(limits.base) != n:
        limits = AccountLimits(rules, n)
    return limits


def _assemble(dataset, cfg: Config, horizon: int, parts, outcomes, account=None,
              stops: bool = False, tuned: int = 0) -> WalkForwardResult:
    """Concatenate the folds, then backtest the ensemble, the baselines and each model alone;
    with ``account`` and / or ``stops``, every run then through the rules and / or the stops.
    ``tuned``: trials a hyperparameter search spent before this run, added to the DSR's."""
    from trademl.backtest.baselines import comparison_table, run_baselines
    from trademl.backtest.engine import run_backtest
    from trademl.backtest.signals import stops_used

    rows = np.concatenate([f.test for f, _ in parts])
    fold_of_row = np.concatenate([np.full(len(f.test), f.number) for f, _ in parts])
    bars = dataset.bars().iloc[rows]
    bars.attrs["symbol"] = dataset.symbol
    segments = backtest_segments(dataset.segments[rows], fold_of_row)
    # Every run's signals count above its fold's threshold (``fold_thresholds``, the column
    # ``threshold``); the engine trades what counts (``_counting``).
    signals = pd.DataFrame({
        "action": direction_of(np.concatenate([p.action for _, p in parts])),
        "confidence": np.concatenate([p.confidence for _, p in parts]),
        "fold": fold_of_row,
        "threshold": _fold_threshold(parts, ENSEMBLE),
    }, index=bars.index)
    model_signals = {}
    for kind in sorted({k for _, p in parts for k in p.alone}, key=kind_order):
        # A fold where the model was skipped holds: no signal, confidence 0.
        held = [p.alone.get(kind, (np.zeros(len(f.test), np.int8), np.zeros(len(f.test)))) for f, p in parts]
        model_signals[kind] = pd.DataFrame({
            "action": direction_of(np.concatenate([a for a, _ in held])),
            "confidence": np.concatenate([c for _, c in held]),
            "threshold": _fold_threshold(parts, kind),
        }, index=bars.index)
    columns = sorted({c for _, p in parts for c in p.outputs})
    outputs = pd.DataFrame({c: np.concatenate([p.outputs.get(c, np.full(len(f.test), np.nan)) for f, p in parts])
                            for c in columns}, index=bars.index)
    bt = cfg.backtest
    hold = holding_bars(cfg)
    strategy = run_backtest(bars, _counting(signals), spec=dataset.spec, segments=segments,
                            name=ENSEMBLE, config=cfg, confidence_threshold=ALL_COUNTED, hold_bars=hold)
    runs = run_baselines(bars, strategy, model_signals={k: _counting(v) for k, v in model_signals.items()},
                         confidence_threshold=ALL_COUNTED, seed=bt.random_baseline_seed, hold_bars=hold)
    runs.update(_threshold_trials(bars, strategy, outputs, cfg, hold))
    from trademl.backtest.baselines import is_baseline

    exits = _stop_inputs(dataset, bars, cfg, rows) if stops else None
    accounts = None
    if account is not None or exits is not None:
        runs, accounts = _through_account(runs, bars, account, exits)
    # Every candidate counts as a trial, also one that never traded (with Sharpe 0): it was tried;
    # so does every trial of a search that chose the models' settings.
    candidates = [name for name in runs if not is_baseline(name)]
    table = comparison_table(runs, n_trials=len(candidates) + tuned)
    calibration = ensemble_calibration(bars, segments, strategy.model, signals, bt.hit_rate_horizon, outputs)
    return WalkForwardResult(bars, segments, signals, model_signals, outputs, outcomes, runs, table, cfg, horizon,
                             accounts=accounts, stops=stops_used(exits), pbo=candidate_pbo(runs, candidates),
                             calibration=calibration)


ALL_COUNTED = -1.0  # an engine threshold below every confidence: the signals were cut per fold already


def _fold_threshold(parts, name: str) -> np.ndarray:
    """Per test bar, the threshold of ``name`` in force in its fold (inf where it had none: a model
    skipped in that fold, whose signals never count)."""
    return np.concatenate([np.full(len(f.test), p.thresholds.get(name, np.inf)) for f, p in parts])


def _counting(signals: pd.DataFrame) -> pd.DataFrame:
    """What the engine trades: the signals above their ``threshold``, a HOLD elsewhere (then traded
    with ALL_COUNTED, so the per-fold cut is the only one)."""
    counted = signals["confidence"].to_numpy() > signals["threshold"].to_numpy()
    return pd.DataFrame({"action": np.where(counted, signals["action"].to_numpy(), 0),
                         "confidence": signals["confidence"].to_numpy()}, index=signals.index)


def holding_bars(cfg: Config) -> int | None:
    """How long every run of the walk-forward holds a counted signal: [backtest] hold_bars, else
    with the stacker its [ensemble] horizon (the trade its probability is about), else the guide's
    rule (None: until an opposite signal)."""
    if cfg.backtest.hold_bars is not None:
        return cfg.backtest.hold_bars
    return cfg.ensemble.horizon if cfg.ensemble.method == "stacked" else None


def _threshold_trials(bars: pd.DataFrame, strategy, outputs: pd.DataFrame, cfg: Config, hold: int | None) -> dict:
    """With ``confidence_threshold = "auto"``: the stacked ensemble at each threshold of the grid,
    every fold alike, beside the one chosen per fold. Each is a candidate of the deflated Sharpe
    and the PBO: every threshold the choice looked at was tried."""
    from trademl.backtest.engine import run_backtest
    from trademl.models.stacker import THRESHOLD_GRID

    if cfg.backtest.confidence_threshold != "auto" or "stacker_p_win_long" not in outputs:
        return {}
    trials = {}
    for t in THRESHOLD_GRID:
        action = direction_of(trial_actions(outputs, t))
        name = f"{ENSEMBLE} at {t:g}"
        trials[name] = run_backtest(bars, pd.DataFrame({"action": action, "confidence": 1.0}, index=bars.index),
                                    spec=strategy.model.spec, segments=strategy.segments, name=name, config=cfg,
                                    confidence_threshold=ALL_COUNTED, hold_bars=hold)
    return trials


def trial_actions(outputs: pd.DataFrame, threshold: float) -> np.ndarray:
    """The stacked ensemble's actions (0 HOLD, 1 BUY, 2 SELL) at one threshold on every test bar:
    the stacker's rule (``choose_action``), then HOLD where the novelty rule held the ensemble, so a
    fold whose auto threshold is ``threshold`` trades exactly as this trial does there."""
    from trademl.models.stacker import choose_action

    cols = [np.nan_to_num(outputs[c].to_numpy(np.float64), nan=-np.inf if c.startswith("stacker_pnl") else 0.0)
            for c in ("stacker_p_win_long", "stacker_p_win_short", "stacker_pnl_long", "stacker_pnl_short")]
    action = choose_action(*cols, threshold)
    if "stacker_novel_held" not in outputs:
        return action
    novel = outputs["stacker_novel_held"].to_numpy() > 0.5
    unused = np.zeros(len(action))  # the trials trade at confidence 1: only the actions matter here
    return held_when_novel(action, unused, unused, novel)[0]


def candidate_pbo(runs: dict, candidates: list[str]) -> float:
    """PBO (``metrics.probability_of_backtest_overfitting``) over the DSR's candidates' daily returns.

    The candidates are the ensemble and each model alone, the runs one would choose between; the
    baselines (flat, buy-and-hold, random) are yardsticks nobody would pick, left out as in the DSR.
    A candidate that never traded is in, with a return of 0 every session.
    """
    from trademl.backtest.metrics import daily_returns, probability_of_backtest_overfitting

    daily = pd.concat({name: daily_returns(runs[name].pnl, runs[name].index, runs[name].initial_balance)
                       for name in candidates}, axis=1)
    return probability_of_backtest_overfitting(daily.to_numpy())


def ensemble_calibration(bars: pd.DataFrame, segments: np.ndarray, execution, signals: pd.DataFrame,
                         horizon: int, outputs: pd.DataFrame | None = None) -> dict:
    """The ensemble's out-of-sample probability against whether the trade won after costs
    (``metrics.trade_won`` over [backtest] hit_rate_horizon bars, priced by the engine's execution
    model).

    With the stacker: its win probability of both sides at every test bar (a long and a short per
    bar), the probability every confidence and every threshold is read from; the folds where it
    did not decide are left out. Without it: the vote's confidence on every bar it said BUY or
    SELL, above the threshold or not; HOLD bars are left out, their confidence is about no trade.
    """
    from trademl.backtest.metrics import confidence_calibration, trade_won

    if outputs is not None and "stacker_p_win_long" in outputs:
        n = len(bars)
        won_long = trade_won(bars, segments, execution, np.ones(n), horizon=horizon)
        won_short = trade_won(bars, segments, execution, -np.ones(n), horizon=horizon)
        p = np.r_[outputs["stacker_p_win_long"].to_numpy(np.float64), outputs["stacker_p_win_short"].to_numpy(np.float64)]
        return {**confidence_calibration(p, np.r_[won_long, won_short]), "of": "stacker p_win_long and p_win_short"}
    won = trade_won(bars, segments, execution, signals["action"].to_numpy(), horizon=horizon)
    return {**confidence_calibration(signals["confidence"].to_numpy(), won), "of": "vote confidence on BUY/SELL bars"}


def _stop_inputs(dataset, bars: pd.DataFrame, cfg: Config, rows: np.ndarray) -> dict:
    """backtest-signals' stop inputs on the test bars, with the dataset's own ATR feature when it
    has one (computed on the whole history: no warm-up at the first test bar, nothing later)."""
    from trademl.backtest.signals import stop_inputs

    column = "atr_ticks_14"
    atr_ticks = dataset.frame[column].to_numpy(np.float64)[rows] if column in dataset.frame.columns else None
    return stop_inputs(bars, dataset.spec, cfg, atr_ticks)


def _through_account(runs: dict, bars: pd.DataFrame, account, exits: dict | None = None) -> tuple[dict, dict | None]:
    """Every run with the stops of ``exits`` (when given) and through the account's rules (when
    given), with each run's verdict and pass probability (None without an account)."""
    from trademl.backtest.signals import account_summary, stops_used, with_exits
    from trademl.risk.rules import rules_for

    rules = rules_for(account) if account is not None else None
    traded, verdicts = with_exits(runs, bars, rules, exits)
    if rules is None:
        return traded, None
    used = stops_used(exits)
    return traded, {name: {**account_summary(v, mc_paths=2_000), "stops": used} for name, v in verdicts.items()}


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
    if row["trades"] == 0 and "stacker_p_win_long" in result.outputs:
        used = sorted({f.thresholds[ENSEMBLE] for f in result.folds if f.thresholds})
        p = result.outputs[["stacker_p_win_long", "stacker_p_win_short"]].to_numpy()
        peak = f"{np.nanmax(p):.2f}" if np.isfinite(p).any() else "-"
        return (f"ensemble: NO edge found: no bar's trade had a win probability after costs above the threshold "
                f"({', '.join(f'{t:g}' for t in used)}) with a positive expected P&L; the highest win probability "
                f"was {peak}, the average {np.nanmean(p):.2f}")
    if row["trades"] == 0:
        signals = result.signals
        calls = signals["confidence"][signals["action"] != 0]
        peak = f"its BUY/SELL confidence peaked at {calls.max():.2f}" if len(calls) else "it never said BUY or SELL"
        used = sorted({f.thresholds[ENSEMBLE] for f in result.folds if f.thresholds})
        return (f"ensemble: never traded: {peak}, the threshold was {', '.join(f'{t:g}' for t in used)} "
                "(backtest.confidence_threshold); no Sharpe to test")
    if not (isinstance(dsr, float) and math.isfinite(dsr)):
        return "ensemble: no Sharpe to test (its P&L never varied)"
    significant = dsr > 0.95
    return (f"ensemble: deflated Sharpe {dsr:.3f} over {trials} candidates: "
            + ("a significant edge (> 0.95)" if significant else "NO significant edge (<= 0.95)"))


def synthetic_dataset(n_bars: int, edge_ic: float, seed: int, config: Config, flip_at: float | None = None):
    """A dataset of ``n_bars`` generated NQ bars (``trademl.data.synthetic``) whose planted
    ``edge`` column (rank IC ``edge_ic`` with the next 5 bars' return) is a feature, as in
    `trademl train ppo --synthetic`; ``flip_at``: the edge changes sign from that share of the
    bars on (``flip_edge``). Returns (dataset, the config with that feature)."""
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import flip_edge, synthetic_bars

    if not (isinstance(n_bars, int) and n_bars > 0):
        raise TradeMLError(f"the number of synthetic bars must be a positive whole number, not {n_bars!r}",
                           where="--synthetic")
    if not (math.isfinite(edge_ic) and abs(edge_ic) < 1):
        raise TradeMLError(f"the planted edge's IC must lie strictly between -1 and 1, not {edge_ic!r}",
                           where="--edge-ic", hint="0 is a random walk; 0.15 is a strong edge")
    cfg = config.model_copy(deep=True)
    if "edge" not in cfg.data.extra_feature_columns:
        cfg.data.extra_feature_columns = [*cfg.data.extra_feature_columns, "edge"]
    if flip_at is not None and not 0 < flip_at < 1:
        raise TradeMLError(f"the edge's flip must be a share of the bars strictly between 0 and 1, not {flip_at!r}",
                           where="--flip-at")
    bars = synthetic_bars(n_bars, seed=seed, edge_ic=edge_ic, edge_horizon=5, symbol="NQ")
    return dataset_from_bars(bars if flip_at is None else flip_edge(bars, flip_at), cfg), cfg


def honesty_lines(result: WalkForwardResult) -> str:
    """The PBO over the candidates and the calibration of the ensemble's confidence, in words."""
    n = int(result.table.loc[ENSEMBLE, "dsr_trials"])
    pbo = (f"PBO over {n} candidates: {result.pbo:.3f} (0.5: picking the best is luck; near 0: the best stays best)"
           if math.isfinite(result.pbo) else f"PBO over {n} candidates: - (too few candidates or sessions)")
    cal = result.calibration or {"ece": None, "n": 0}
    stacked = cal.get("of", "").startswith("stacker")
    what = "stacked win probabilities (long and short, every bar)" if stacked else "ensemble vote's confidence"
    over = "probabilities" if stacked else "BUY/SELL bars"
    ece = (f"{what} vs trades won after costs ({result.config.backtest.hit_rate_horizon} bars): "
           + (f"ECE {cal['ece']:.3f} over {cal['n']:,} {over}" if cal["ece"] is not None
              else f"no {over} with a known outcome"))
    return f"{pbo}\n{ece}"


def backtest_models(dataset_path=None, config: Config | None = None, *, n_folds: int | None = None,
                    budget: str | None = None, out=None, models=None, console=None, account=None,
                    stops: bool = False, synthetic: int | None = None, edge_ic: float = 0.15, seed: int = 0,
                    json_path=None, symbol: str | None = None, context=None, workers: int = 1,
                    ray_address: str | None = None) -> WalkForwardResult:
    """What `trademl backtest` and scripts/backtest_models.py run: progress per fold, the
    table, the verdict and the HTML report (default: [paths] report_dir/backtest.html).
    ``synthetic``: walk forward over that many generated bars (``synthetic_dataset``) instead of
    a dataset; ``json_path``: also write ``WalkForwardResult.to_json`` there; ``workers`` and
    ``ray_address``: folds trained at once (``walk_forward_backtest``)."""
    from trademl.data.dataset import load_training_dataset

    cfg = resolve_config(config)
    if synthetic is not None:
        if dataset_path is not None:
            raise TradeMLError("give a dataset or --synthetic N, not both", where="--synthetic")
        dataset, cfg = synthetic_dataset(synthetic, edge_ic, seed, cfg)
    else:
        # symbol and context (another instrument's bars): for a bars file
        dataset = load_training_dataset(dataset_path, cfg, symbol=symbol, context=context)
    say = (lambda msg: console.print(msg)) if console is not None else None
    if account is not None:
        from trademl.risk.rules import rules_for

        rules_for(account)  # an unknown preset fails before any training
    result = walk_forward_backtest(dataset, cfg, models=models, n_folds=n_folds, budget=budget, progress=say,
                                   account=account, stops=stops, workers=workers, ray_address=ray_address)
    path = Path(out) if out is not None else Path(cfg.paths.report_dir) / "backtest.html"
    result.write_report(path)
    if console is not None:
        console.print(results_table(result.table))
        console.print(verdict(result))
        console.print(honesty_lines(result))
        if result.stops:
            console.print(f"  every run with ATR stops: stop {result.stops['stop_atr']:g} ATR, target "
                          f"{result.stops['target_atr']:g} ATR ({result.stops['atr']}), checked inside each bar, "
                          "the stop first when both are hit")
        for name, a in (result.accounts or {}).items():
            status = "PASSED" if a["passed"] else f"failed: {a['breached']} at {a['breach_time']}" if a["breached"] else "not passed"
            p = a.get("pass_probability")
            console.print(f"  {a['rules']} {name}: {status}, ${a['final_balance']:,.0f} after {a['trading_days']} "
                          f"trading days; P(pass) {'-' if p is None else f'{p:.1%}'}")
        console.print(f"report: {result.report_path}")
    if json_path is not None:
        written = result.write_json(json_path)
        if console is not None:
            console.print(f"json: {written}")
    return result
