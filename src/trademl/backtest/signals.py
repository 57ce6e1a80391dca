"""``trademl backtest-signals``: a bot's own signals through the same engine and account rules.

A signals file is a CSV (or JSONL) of ``timestamp,action[,confidence]`` with action BUY / SELL
/ HOLD or +1 / -1 / 0 (confidence 1 when absent), or the bot's decision log
(``timestamp,symbol,side``: each decision a BUY or SELL with confidence 1). Each signal is
decided at the close of the last bar that closed at or before its stamp (never a later bar),
so a fill is at the next bar's open as always. It then runs through the guide's +/-1 contract
rule, the broker, and, with ``--account``, the account's rules (``trademl.risk``): trading stops
at a breach, the result says passed or failed, which rule, when, and the Monte Carlo
probability of passing from the run's own trading days; flat and buy-and-hold through the
same rules beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trademl.errors import DataError

SIGNALS_NAME = "signals"


def read_signals(path, tz: str | None = None) -> pd.DataFrame:
    """The signals file as (timestamp UTC, action +1/-1/0, confidence), sorted, with its lines.
    Naive stamps are read in ``tz`` (None: UTC) the way bars are (``trademl.data.bars``)."""
    from trademl.backtest.engine import action_codes

    path = Path(path)
    if not path.is_file():
        raise DataError("signals file not found", where=str(path))
    try:
        raw = pd.read_json(path, lines=True) if path.suffix.lower() in (".jsonl", ".ndjson") else pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable signals file: {str(e)[:200]}", where=str(path)) from None
    cols = {str(c).strip().lower(): c for c in raw.columns}
    if "timestamp" not in cols or not ({"action", "side"} & set(cols)):
        raise DataError(f"a signals file needs timestamp and action (or side) columns, found {list(raw.columns)[:8]}",
                        where=str(path))
    from trademl.data.bars import parse_timestamps

    ns = parse_timestamps(raw[cols["timestamp"]], tz=tz, mixed=True)  # unreadable: NaT
    stamps = pd.Series(pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC"))
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if len(bad):
        raise DataError(f"timestamp {str(raw[cols['timestamp']].iloc[bad[0]])[:60]!r} is not a time",
                        where=f"{path}, line {bad[0] + 2}")
    column = raw[cols["action"]] if "action" in cols else raw[cols["side"]].astype(str).str.lower().map(
        {"buy": "BUY", "long": "BUY", "sell": "SELL", "short": "SELL"}).fillna(raw[cols["side"]].astype(str))
    try:
        action = action_codes(column.to_numpy())
    except DataError as e:
        row = int(str(e.where).split("row ")[1].split(",")[0]) if "row " in str(e.where) else 0
        raise DataError(e.message, where=f"{path}, line {row + 2}, field action") from None
    confidence = (pd.to_numeric(raw[cols["confidence"]], errors="coerce").to_numpy(np.float64)
                  if "confidence" in cols else np.ones(len(raw)))
    if not np.isfinite(confidence).all():
        row = int(np.flatnonzero(~np.isfinite(confidence))[0])
        raise DataError("confidence is not a number", where=f"{path}, line {row + 2}, field confidence")
    frame = pd.DataFrame({"timestamp": stamps, "action": action, "confidence": confidence, "line": np.arange(len(raw)) + 2})
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def align_signals(signals: pd.DataFrame, bars: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(per-bar action and confidence, signals before the first bar's close): each signal to the
    last bar that closed at or before it; the last signal of a bar wins."""
    from trademl.data.bars import median_bar_minutes

    step = pd.Timedelta(minutes=float(median_bar_minutes(bars) or 1.0))
    closes = (bars.index + step).as_unit("ns").asi8
    at = np.searchsorted(closes, signals["timestamp"].dt.as_unit("ns").astype("int64").to_numpy(), side="right") - 1
    early = int((at < 0).sum())
    out = pd.DataFrame({"action": np.zeros(len(bars), np.int8), "confidence": np.zeros(len(bars))}, index=bars.index)
    keep = at >= 0
    out.iloc[at[keep], 0] = signals["action"].to_numpy()[keep]
    out.iloc[at[keep], 1] = signals["confidence"].to_numpy()[keep]
    return out, early


@dataclass
class SignalsBacktest:
    runs: dict  # name -> BacktestResult
    table: pd.DataFrame
    account: dict | None  # the rules' verdict and pass probability, with --account
    rules_results: dict  # name -> RulesResult, with --account
    skipped_signals: int
    stops: dict | None = None  # with --stops: the ATR multiples used (stops_used)

    def to_json(self) -> dict:
        runs = {name: json_figures(self.table, name) for name in self.table.index}
        return {"account": self.account, "stops": self.stops, "runs": runs,
                "signals_before_first_bar": self.skipped_signals}


# A run's headline figures in the JSON of `backtest-signals --json` and `backtest --json`.
JSON_COLUMNS = ("sharpe", "psr", "dsr", "trades", "total_pnl", "exposure")


def json_figures(table: pd.DataFrame, name: str) -> dict:
    return {c: plain_value(table.loc[name, c]) for c in JSON_COLUMNS}


def plain_value(value):
    """A JSON value: numpy scalars as Python ones, NaN and infinities as None (JSON has neither)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def backtest_signals(bars: pd.DataFrame, signals: pd.DataFrame, *, config=None, account=None,
                     threshold: float | None = None, mc_paths: int = 5_000, stops: bool = False) -> SignalsBacktest:
    """Trade ``signals`` (see ``read_signals``) on ``bars``; with ``account`` (a preset name or
    AccountRules) through its rules, with the probability of passing; with ``stops`` every trade
    also gets an ATR stop and target ([risk] stop_atr, target_atr) checked inside each bar."""
    from trademl.backtest.baselines import buy_and_hold, comparison_table, flat
    from trademl.backtest.engine import run_backtest
    from trademl.config import fixed_threshold, resolve_config
    from trademl.market.contracts import spec_of_bars

    cfg = resolve_config(config)
    per_bar, early = align_signals(signals, bars)
    threshold = fixed_threshold(cfg.backtest.confidence_threshold if threshold is None else threshold)
    spec = spec_of_bars(bars, bars.attrs.get("symbol") or cfg.data.symbol, cfg)
    rules = None
    if account is not None:
        from trademl.risk.rules import rules_for

        rules = rules_for(account)
    cap = rules.max_contracts(spec.root) if rules else cfg.account.max_position_size
    balance = rules.starting_balance if rules else cfg.account.initial_balance
    strategy = run_backtest(bars, per_bar, spec=spec, costs=cfg.costs, max_position_size=cap,
                            confidence_threshold=threshold, initial_balance=balance, name=SIGNALS_NAME)
    runs = {r.name: r for r in (strategy, flat(bars, strategy), buy_and_hold(bars, strategy))}
    exits = stop_inputs(bars, spec, cfg) if stops else None
    runs, verdicts = with_exits(runs, bars, rules, exits)
    account_json = account_summary(verdicts[SIGNALS_NAME], mc_paths) if rules is not None else None
    table = comparison_table(runs)
    return SignalsBacktest(runs, table, account_json, verdicts, early, stops_used(exits))


# ----------------------------------------------------------------------------- exits beyond the signal
# Shared with the walk-forward (``backtest --account ... --stops``): one way to give runs stops and rules.


def with_exits(runs: dict, bars: pd.DataFrame, rules=None, exits: dict | None = None) -> tuple[dict, dict]:
    """(runs, RulesResult per run): every run with the ATR stops of ``exits`` (``stop_inputs``) and,
    with ``rules``, traded through the account's rules (no verdicts without rules)."""
    from trademl.backtest.engine import BacktestResult

    if rules is None:  # stops alone (or nothing): the runs' own fills with the stops on top
        runs = {name: _with_stops(run, bars, exits, BacktestResult) for name, run in runs.items()} if exits else runs
        return dict(runs), {}
    verdicts = {name: through_rules(run, bars, rules, exits) for name, run in runs.items()}
    return {name: as_backtest(verdicts[name], run, BacktestResult) for name, run in runs.items()}, verdicts


def through_rules(run, bars: pd.DataFrame, rules, stops: dict | None = None):
    from trademl.risk.account import apply_rules

    return apply_rules(bars.index, run.target, bars["open"], bars["close"], run.model, rules, run.segments,
                       stops=stops)


def _with_stops(run, bars: pd.DataFrame, exits: dict, cls):
    from trademl.market.broker import ExecutionResult, apply_stops

    executed = ExecutionResult(run.position, run.trade_qty, run.fill_price, run.pnl, run.costs, run.exit_fill)
    ex = apply_stops(executed, run.model, bars["open"], exits["high"], exits["low"], bars["close"], exits["atr"],
                     stop_atr=exits["stop_atr"], target_atr=exits["target_atr"])
    return cls(index=run.index, position=ex.position, trade_qty=ex.trade_qty, fill_price=ex.fill_price, pnl=ex.pnl,
               costs=ex.costs, target=run.target, segments=run.segments, model=run.model,
               initial_balance=run.initial_balance, action=run.action, confidence=run.confidence, name=run.name,
               exit_fill=ex.exit_fill)


def stop_inputs(bars: pd.DataFrame, spec, cfg, atr_ticks=None) -> dict:
    """What ``apply_stops`` needs: the bars' highs and lows, the ATR in price and [risk] stop_atr,
    target_atr. ``atr_ticks``: the atr_ticks_14 feature per bar when the caller has it (the
    walk-forward takes the dataset's, computed on the whole history, so no warm-up restarts at
    its first test bar); otherwise it is computed from ``bars``. Either is known at each close."""
    from trademl.data.features import compute_features

    missing = [c for c in ("high", "low") if c not in bars.columns]
    if missing:
        raise DataError(f"stops need the bars' {' and '.join(missing)}", where="bars")
    if atr_ticks is None:
        atr_ticks = compute_features(bars, names=["atr_ticks_14"], symbol=spec.root)["atr_ticks_14"].to_numpy()
    atr = np.asarray(atr_ticks, np.float64) * spec.tick_size
    if atr.shape != (len(bars),):
        raise DataError(f"{atr.size} ATR values for {len(bars)} bars", where="stops")
    return {"high": bars["high"].to_numpy(np.float64), "low": bars["low"].to_numpy(np.float64), "atr": atr,
            "stop_atr": cfg.risk.stop_atr, "target_atr": cfg.risk.target_atr}


def stops_used(exits: dict | None) -> dict | None:
    """What the JSON and the summaries say about the stops: None without, else the ATR multiples."""
    if exits is None:
        return None
    return {"atr": "atr_ticks_14", "stop_atr": float(exits["stop_atr"]), "target_atr": float(exits["target_atr"]),
            "both_in_one_bar": "stop"}


def as_backtest(verdict, like, cls):
    ex = verdict.execution
    return cls(index=like.index, position=ex.position, trade_qty=ex.trade_qty, fill_price=ex.fill_price, pnl=ex.pnl,
               costs=ex.costs, target=like.target, segments=like.segments, model=like.model,
               initial_balance=verdict.rules.starting_balance, action=like.action, confidence=like.confidence,
               name=like.name, account=verdict, exit_fill=ex.exit_fill)


def account_summary(verdict, mc_paths: int) -> dict:
    """The rules' verdict plus the Monte Carlo probability of passing, drawn from the strategy's
    own trading days (each with its intraday low, so intraday breaches are drawn too)."""
    from trademl.risk.montecarlo import pass_probability

    summary = verdict.summary()
    daily = verdict.daily
    if len(daily) >= 2:
        mc = pass_probability(daily["pnl"].to_numpy(), verdict.rules, daily_low=daily["low"].to_numpy(),
                              n_paths=mc_paths, block=min(5, len(daily)))
        summary["pass_probability"] = mc.probability
        summary["pass_probability_detail"] = mc.to_dict()
    else:
        summary["pass_probability"] = None
    return summary
