"""The backtest engine: signals -> target positions -> the shared execution model -> trades.

The guide's rule, bar by bar: a BUY adds one contract while the position is below
+max_position_size, a SELL removes one while it is above -max_position_size, and only a
signal whose confidence is above the threshold counts. The position that rule produces is
a clipped cumulative sum; the broker's vectorised form of the rule computes it for all bars
at once (``trademl.market.broker.target_from_directions``) and ``broker.simulate`` fills each
decision taken at the close of bar t at the open of bar t+1 (plus slippage and commission)
and flattens the account before every gap. Nothing in this module prices a fill or holds a
position: the broker and the execution model do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from trademl.config import Config, CostsConfig, fixed_threshold, resolve_config
from trademl.segments import segment_ids
from trademl.errors import DataError, TradeMLError
from trademl.market.actions import ACTION_NAMES, DIRECTION
from trademl.market.broker import simulate, target_from_directions
from trademl.market.contracts import ContractSpec, spec_of_bars
from trademl.market.execution import ExecutionModel
from trademl.segments import segment_start_mask

# BUY/SELL/HOLD by name -> +1/-1/0: the direction map of trademl.market.actions.
ACTION_CODES = {name: int(DIRECTION[code]) for code, name in enumerate(ACTION_NAMES)}
TRADE_COLUMNS = [
    "entry_time", "exit_time", "side", "qty", "entry_price", "exit_price",
    "pnl", "costs", "bars_held", "entry_bar", "exit_bar",
]


# ----------------------------------------------------------------------------- position rule


def action_codes(action) -> np.ndarray:
    """+1/-1/0 (int8) from numbers or from the strings BUY/SELL/HOLD (any case)."""
    arr = np.asarray(action)
    if arr.dtype.kind in "OUS":
        upper = pd.Series(arr, dtype="string").str.upper()
        codes = upper.map(ACTION_CODES)
        bad = codes.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"action {arr[row]!r} is not BUY, SELL or HOLD", where=f"signals row {row}, field action")
        return codes.to_numpy(dtype=np.int8)
    if arr.dtype.kind in "iu" and (len(arr) == 0 or (arr.min() >= -1 and arr.max() <= 1)):
        return arr.astype(np.int8, copy=False)  # the common case, checked with two reductions
    arr = np.asarray(arr, dtype=np.float64)
    bad = ~((arr == 1.0) | (arr == 0.0) | (arr == -1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"action {arr[row]!r} is not +1, -1 or 0", where=f"signals row {row}, field action")
    return arr.astype(np.int8)


def target_from_signals(action, confidence, *, max_position_size: int, confidence_threshold: float,
                        segments=None, hold_bars: int | None = None) -> np.ndarray:
    """The guide's +/-1 contract rule as a target-position series (decided at each bar's close).

    A signal counts when its confidence is strictly above the threshold (NaN never counts);
    the broker's rule does the rest (``trademl.market.broker.target_from_directions``).
    """
    codes = action_codes(action)
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.shape != codes.shape:
        raise DataError(f"{len(conf)} confidences for {len(codes)} actions", where="signals, field confidence")
    return target_from_directions(codes, conf > confidence_threshold, max_position_size, segments, hold_bars)


# ----------------------------------------------------------------------------- trade list


def _fifo_round_trips(entries: np.ndarray, exits: np.ndarray):
    """Pair the k-th unit opened with the k-th unit closed (FIFO), then merge equal pairs.

    ``entries`` and ``exits`` are bar numbers, one per contract, both sorted. Returns
    (entry_bar, exit_bar, qty) of the closed round trips and the count of units still open.
    """
    k = min(len(entries), len(exits))
    e, x = entries[:k], exits[:k]
    if k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, len(entries) - k
    new = segment_start_mask(e) | segment_start_mask(x)  # a new (entry, exit) pair starts a run
    first = np.flatnonzero(new)
    qty = np.diff(np.r_[first, k])
    return e[first], x[first], qty, len(entries) - k


def round_trips(position: np.ndarray, fill_price: np.ndarray, index: pd.DatetimeIndex,
                model: ExecutionModel, exit_fill: np.ndarray | None = None) -> tuple[pd.DataFrame, int]:
    """Round trips from the per-bar positions of an execution result, matched FIFO.

    A fill that reverses (+2 -> -3) closes the two longs and opens three shorts at one
    price. P&L is net of slippage (inside the fill prices) and commission on both sides.
    ``exit_fill`` (``ExecutionResult.exit_fill``): where finite, the price the contracts closed
    on that bar got (a stop or target inside the bar before), while the bar's entries keep
    ``fill_price``. Returns the trade table and the contracts still open at the end (signed).
    """
    pos = np.asarray(position, dtype=np.int64)
    closing_price = fill_price if exit_fill is None else np.where(np.isfinite(exit_fill), exit_fill, fill_price)
    prev = np.r_[0, pos[:-1]]
    bars = np.arange(len(pos))
    tables = []
    for side in (1, -1):
        held_before, held_after = np.maximum(side * prev, 0), np.maximum(side * pos, 0)
        opened = np.maximum(held_after - held_before, 0)
        closed = np.maximum(held_before - held_after, 0)
        entry, exit_, qty, _ = _fifo_round_trips(np.repeat(bars, opened), np.repeat(bars, closed))
        entry_price, exit_price = fill_price[entry], closing_price[exit_]
        commission, slippage = model.round_trip_costs(qty)
        pnl = side * (exit_price - entry_price) * model.spec.point_value * qty - commission
        tables.append((entry, exit_, np.full(len(entry), side, np.int8), qty, entry_price, exit_price,
                       pnl, commission + slippage))
    cols = [np.concatenate(parts) for parts in zip(*tables)]
    order = np.lexsort((cols[1], cols[0]))
    entry, exit_, side, qty, entry_price, exit_price, pnl, costs = (c[order] for c in cols)
    trades = pd.DataFrame({
        "entry_time": index[entry], "exit_time": index[exit_], "side": side, "qty": qty,
        "entry_price": entry_price, "exit_price": exit_price, "pnl": pnl, "costs": costs,
        "bars_held": exit_ - entry, "entry_bar": entry, "exit_bar": exit_,
    }, columns=TRADE_COLUMNS)
    return trades, int(pos[-1]) if len(pos) else 0


# ----------------------------------------------------------------------------- the backtest


@dataclass
class BacktestResult:
    """Per-bar arrays (aligned with ``index``), the trade list and, on demand, the metrics.

    ``position`` is held during the bar (it changed at the bar's open), ``pnl`` and ``costs``
    are that bar's net dollars and the slippage + commission inside them, ``equity`` is the
    account balance at each bar's close.
    """

    index: pd.DatetimeIndex
    position: np.ndarray
    trade_qty: np.ndarray
    fill_price: np.ndarray
    pnl: np.ndarray
    costs: np.ndarray
    target: np.ndarray
    segments: np.ndarray
    model: ExecutionModel
    initial_balance: float
    open_position_at_end: int = 0
    action: np.ndarray | None = None
    confidence: np.ndarray | None = None
    name: str = "strategy"
    account: object = None  # trademl.risk.account.RulesResult, when run through an account's rules
    exit_fill: np.ndarray | None = None  # stop / target exits' prices (ExecutionResult.exit_fill)
    _trades: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def equity(self) -> np.ndarray:
        return self.initial_balance + np.cumsum(self.pnl)

    @property
    def trades(self) -> pd.DataFrame:
        """Closed round trips (FIFO); contracts still open at the end are in ``open_position_at_end``."""
        if self._trades is None:
            self._trades, _ = round_trips(self.position, self.fill_price, self.index, self.model, self.exit_fill)
        return self._trades

    @cached_property
    def metrics(self) -> dict:
        from trademl.backtest.metrics import compute_metrics

        return compute_metrics(self)

    def frame(self) -> pd.DataFrame:
        """The per-bar arrays as one DataFrame (index: bar-open timestamp)."""
        return pd.DataFrame({
            "target": self.target, "position": self.position, "trade_qty": self.trade_qty,
            "fill_price": self.fill_price, "pnl": self.pnl, "costs": self.costs,
            "equity": self.equity, "segment": self.segments,
        }, index=self.index)


def _price_arrays(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(bars.index, pd.DatetimeIndex):
        raise DataError("bars must be indexed by a DatetimeIndex of bar-open times", where="bars.index")
    missing = [c for c in ("open", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", where="bars")
    out = []
    for col in ("open", "close"):
        values = bars[col].to_numpy(dtype=np.float64)
        if len(values) and values.min() > 0 and values.max() < np.inf:  # NaN fails both: fast path
            out.append(values)
            continue
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"price {values[row]!r} is not a positive number", where=f"bars row {row} ({bars.index[row]}), field {col}")
        out.append(values)
    return out[0], out[1]


def _check_alignment(signals: pd.DataFrame, index: pd.DatetimeIndex) -> None:
    """A signal frame indexed by time must carry exactly the bars' stamps: a shifted frame
    would trade on the wrong bar (possibly on the future)."""
    if not isinstance(signals.index, pd.DatetimeIndex) or len(signals) != len(index):
        return
    if signals.index is index or signals.index.equals(index):
        return
    stamps = signals.index if signals.index.tz is not None else signals.index.tz_localize("UTC")
    differ = stamps != index
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        raise DataError(f"signal stamp {stamps[row]} is not the bar's {index[row]}; align signals to the bars",
                        where=f"signals row {row}")


def _signal_columns(signals, n: int, index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """(action, confidence) from a DataFrame/dict with those columns, or a (action, confidence) pair."""
    if isinstance(signals, pd.DataFrame):
        _check_alignment(signals, index)
    if isinstance(signals, (pd.DataFrame, dict)) and "action" not in signals and "ensemble_recommendation" in signals:
        # the predictor's JSON names, e.g. a frame of logged predictions
        signals = {"action": signals["ensemble_recommendation"], "confidence": signals.get("confidence_score")}
    if isinstance(signals, (pd.DataFrame, dict)):
        for col in ("action", "confidence"):
            if col not in signals or signals[col] is None:
                raise DataError(f"signals need columns 'action' and 'confidence', {col!r} is missing", where="signals")
        action, confidence = signals["action"], signals["confidence"]
    else:
        try:
            action, confidence = signals
        except (TypeError, ValueError):
            raise DataError("signals must be a frame with action and confidence, or a pair of arrays", where="signals") from None
    action = np.asarray(action)
    try:
        confidence = np.asarray(confidence, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("confidence must be numbers (NaN: no confidence)", where="signals, field confidence") from None
    if len(action) != n or len(confidence) != n:
        raise DataError(f"{len(action)} signals for {n} bars; give one signal per bar", where="signals")
    return action, confidence


def _target_array(target, n: int, max_position_size: int) -> np.ndarray:
    values = np.asarray(target, dtype=np.float64)
    if values.shape != (n,):
        raise DataError(f"target has shape {values.shape}, expected ({n},): one position per bar", where="target")
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"target position {values[row]!r} is not a whole number of contracts", where=f"target row {row}")
    return np.clip(values, -max_position_size, max_position_size)


def run_backtest(
    bars: pd.DataFrame,
    signals=None,
    *,
    target=None,
    spec: ContractSpec | None = None,
    costs: CostsConfig | None = None,
    max_position_size: int | None = None,
    confidence_threshold: float | None = None,
    segments=None,
    max_gap_minutes: float | None = None,
    initial_balance: float | None = None,
    name: str = "strategy",
    config: Config | None = None,
    account=None,
    hold_bars: int | None = None,
) -> BacktestResult:
    """Backtest per-bar signals (or a target-position series) through the shared execution model.

    ``signals``: a frame (or dict) with ``action`` (+1/-1/0 or BUY/SELL/HOLD) and
    ``confidence`` per bar, decided at the bar's close (the predictor's names
    ``ensemble_recommendation`` and ``confidence_score`` work too, and
    ``trademl.predict.decision.Decision.direction`` is its vectorised vote); or pass ``target=`` (contracts wanted
    after each bar's close) instead. ``spec`` defaults to ``bars.attrs["symbol"]``'s contract,
    ``segments`` to :func:`segment_ids` of the bars; ``costs``, ``max_position_size``,
    ``confidence_threshold``, ``max_gap_minutes`` and ``initial_balance`` left as None come
    from ``config`` (resolved by :func:`resolve_config`: [costs], [account], [backtest], [data]).
    ``hold_bars`` (else [backtest] hold_bars of a given config): each counted signal holds one
    contract for that many bars (``trademl.market.broker.held_target``) instead of the guide's rule.
    """
    needed = (costs, max_position_size, confidence_threshold, max_gap_minutes, initial_balance)
    cfg = resolve_config(config) if config is not None or None in needed else None
    costs = cfg.costs if costs is None else costs
    max_position_size = cfg.account.max_position_size if max_position_size is None else max_position_size
    confidence_threshold = fixed_threshold(cfg.backtest.confidence_threshold if confidence_threshold is None
                                           else confidence_threshold)
    max_gap_minutes = cfg.data.max_gap_minutes if max_gap_minutes is None else max_gap_minutes
    initial_balance = cfg.account.initial_balance if initial_balance is None else initial_balance
    if (signals is None) == (target is None):
        raise TradeMLError("give either signals or target, not both and not neither", where="run_backtest")
    if max_position_size < 1:
        raise TradeMLError(f"max_position_size must be >= 1, got {max_position_size}", where="account.max_position_size")
    open_, close = _price_arrays(bars)
    n = len(bars)
    if n == 0:
        raise DataError("no bars to backtest", where="bars")
    if spec is None:
        symbol = bars.attrs.get("symbol")
        if not symbol:
            raise TradeMLError("no contract: pass spec= or set bars.attrs['symbol']", where="bars.attrs")
        spec = spec_of_bars(bars, symbol, config)  # a dataset's own spec (e.g. one given on the command line)
    model = ExecutionModel.from_config(spec, costs, max_position_size)
    seg = segment_ids(bars, max_gap_minutes) if segments is None else np.asarray(segments)
    if len(seg) != n:
        raise DataError(f"{len(seg)} segment ids for {n} bars", where="segments")

    action = confidence = None
    if signals is not None:
        action, confidence = _signal_columns(signals, n, bars.index)
        if hold_bars is None and cfg is not None:
            hold_bars = cfg.backtest.hold_bars
        wanted = target_from_signals(action, confidence, max_position_size=max_position_size,
                                     confidence_threshold=confidence_threshold, segments=seg, hold_bars=hold_bars)
        action = action_codes(action)
    else:
        wanted = _target_array(target, n, max_position_size)

    verdict = None
    if account is None:
        executed = simulate(model, wanted, open_, close, seg)
    else:  # the account's rules fill the same target (trademl.risk.account), one pass
        from trademl.risk.account import apply_rules
        from trademl.risk.rules import rules_for

        rules = rules_for(account)
        verdict = apply_rules(bars.index, wanted, open_, close, model, rules, seg)
        executed, initial_balance = verdict.execution, rules.starting_balance
    return BacktestResult(
        index=bars.index, position=executed.position, trade_qty=executed.trade_qty,
        fill_price=executed.fill_price, pnl=executed.pnl, costs=executed.costs, target=wanted,
        segments=seg, model=model, initial_balance=float(initial_balance),
        open_position_at_end=int(executed.position[-1]) if n else 0,
        action=action, confidence=confidence, name=name, account=verdict, exit_fill=executed.exit_fill,
    )
