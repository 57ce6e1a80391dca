"""Labels at horizon h (5 and 30 bars by default), all priced through the execution model.

For a decision at the close of bar t, a trade of one contract enters at the open of
bar t+1 and exits at the open of bar t+h+1 (the bot decides to exit at the close of
bar t+h), each fill moved against us by the slippage, each side paying commission:
exactly what `trademl.market.execution` charges. Per horizon h:

- ``win_long_h`` / ``win_short_h``: 1 if that trade's net P&L is > 0, else 0.
- ``signal_h``: 1 buy / 2 sell when the gross move is beyond ``signal_cost_multiple``
  round-trip costs in that direction, else 0 hold (the PPO action coding).
- ``movement_h``: forward log return log(close[t+h] / close[t]).
- ``risk_h``: the larger adverse excursion over bars t+1..t+h of a long or a short
  entered at close[t], in units of 3 x ATR(14) at t, clipped to [0, 1].
- ``pnl_long_h``: net dollar P&L of the long trade (the short's is -gross - costs).

A label needs bars up to t+h+1 in the same segment; otherwise it is NaN, so no label
ever spans a gap or a contract roll.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from trademl.config import parse_horizon, resolve_config
from trademl.data.bars import bar_length_minutes
from trademl.errors import DataError
from trademl.segments import bars_to_end, segment_starts
from trademl.market.actions import BUY, HOLD, SELL
from trademl.market.execution import ExecutionModel

ATR_WINDOW = 14
RISK_ATR_MULTIPLE = 3.0


HORIZONS_WHERE = "[data] horizons"


def _minutes_text(minutes: float) -> str:
    return f"{minutes:g}"


def horizon_bars(horizons, bar_minutes: float | None) -> list[int]:
    """[data] horizons in bars: a number is bars already, "15min" is divided by the bars' length
    ``bar_minutes``, which must go into it evenly (labels are made per whole bar)."""
    out = []
    for given in horizons:
        try:
            h = parse_horizon(given)
        except ValueError as e:
            raise DataError(str(e), where=HORIZONS_WHERE) from None
        if isinstance(h, str):
            h = _minutes_to_bars(h, bar_minutes)
        if h in out:  # the two would write the same label columns
            raise DataError(f"two horizons are both {h} bars: {list(horizons)}", where=HORIZONS_WHERE)
        out.append(h)
    return out


def _minutes_to_bars(horizon: str, bar_minutes: float | None) -> int:
    minutes = int(horizon.removesuffix("min"))
    if bar_minutes is None or not math.isfinite(bar_minutes) or bar_minutes <= 0:
        raise DataError(f'horizon "{horizon}" is in minutes, and the bars\' length is unknown (no bars, or one)',
                        where=HORIZONS_WHERE, hint="give bars, or the horizon in bars")
    bars = minutes / bar_minutes
    if bars < 1 or abs(bars - round(bars)) > 1e-9:
        raise DataError(f'horizon "{horizon}" is not a whole number of {_minutes_text(bar_minutes)}-minute bars',
                        where=HORIZONS_WHERE, hint=f"give a multiple of {_minutes_text(bar_minutes)} minutes, "
                                                   "or the horizon in bars")
    return int(round(bars))


def horizon_minutes(horizons_in_bars, bar_minutes: float) -> dict[str, float]:
    """What each horizon (in bars) covers in minutes, keyed like the manifest's label balance ("5")."""
    return {str(h): (int(h * bar_minutes) if float(h * bar_minutes).is_integer() else h * bar_minutes)
            for h in horizons_in_bars}


def describe_horizons(horizons, bar_minutes: float | None) -> str:
    """What each horizon covers on bars of ``bar_minutes``: "5 bars = 15 min, 15min = 5 bars"; or why it cannot."""
    try:
        in_bars = horizon_bars(horizons, bar_minutes)
    except DataError as e:
        return e.message
    known = bar_minutes is not None and math.isfinite(bar_minutes)
    parts = []
    for given, h in zip(map(parse_horizon, horizons), in_bars):
        if isinstance(given, str):
            parts.append(f"{given} = {h} bars")
        else:
            parts.append(f"{h} bars" + (f" = {_minutes_text(h * bar_minutes)} min" if known else ""))
    return ", ".join(parts)


def warn_horizons_in_bars(horizons, bar_minutes: float | None) -> None:
    """One warning when horizons given in bars are not minutes: on 3-minute bars "5" covers 15 minutes."""
    in_bars = [h for h in map(parse_horizon, horizons) if isinstance(h, int)]
    if not in_bars or bar_minutes is None or not math.isfinite(bar_minutes) or bar_minutes == 1:
        return
    spans = ", ".join(f"horizon {h} bars = {_minutes_text(h * bar_minutes)} minutes" for h in in_bars)
    warnings.warn(f'{spans} on {_minutes_text(bar_minutes)}-minute bars ({HORIZONS_WHERE} counts bars; '
                  f'write "{_minutes_text(in_bars[0] * bar_minutes)}min" to give minutes)', stacklevel=3)


def label_columns(horizons) -> list[str]:
    return [f"{name}_{h}" for h in horizons for name in ("win_long", "win_short", "signal", "movement", "risk", "pnl_long")]


def _shift_forward(x: np.ndarray, k: int) -> np.ndarray:
    """x[t + k], NaN past the end."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[: len(x) - k] = x[k:]
    return out


def _window_extreme(x: np.ndarray, h: int, fn) -> np.ndarray:
    """fn over x[t+1 .. t+h] for every t (NaN where the window runs past the end)."""
    out = np.full(len(x), np.nan)
    if len(x) > h:
        out[: len(x) - h] = fn(sliding_window_view(x[1:], h), axis=1)
    return out


def segment_atr(high, low, close, seg, window: int = ATR_WINDOW) -> np.ndarray:
    """Simple-average true range over the last ``window`` bars of the same segment (NaN before)."""
    prev_close = np.r_[np.nan, close[:-1]]
    starts = segment_starts(seg)
    first = np.arange(len(close)) == starts
    prev_close[first] = close[first]  # no previous close across a gap: use the bar's own range
    tr = np.maximum(high, prev_close) - np.minimum(low, prev_close)
    csum = np.r_[0.0, np.cumsum(tr)]
    idx = np.arange(len(close))
    lo = idx - window + 1
    atr = (csum[idx + 1] - csum[np.maximum(lo, 0)]) / window
    return np.where(lo >= starts, atr, np.nan)


def make_labels(
    bars: pd.DataFrame,
    segments: np.ndarray,
    execution: ExecutionModel,
    horizons=None,
    signal_cost_multiple: float | None = None,
) -> pd.DataFrame:
    """Labels frame (same index as bars), columns from ``label_columns(horizons)``.

    ``horizons`` and ``signal_cost_multiple`` left as None are [data] horizons and
    [costs] signal_cost_multiple; a horizon in minutes ("15min") is made bars by the bars' length."""
    if horizons is None or signal_cost_multiple is None:
        cfg = resolve_config()
        horizons = cfg.data.horizons if horizons is None else horizons
        signal_cost_multiple = cfg.costs.signal_cost_multiple if signal_cost_multiple is None else signal_cost_multiple
    if any(isinstance(h, str) for h in horizons):  # "15min": the bars' length tells how many bars
        horizons = horizon_bars(horizons, bar_length_minutes(bars))
    o = bars["open"].to_numpy(np.float64)
    h_ = bars["high"].to_numpy(np.float64)
    l_ = bars["low"].to_numpy(np.float64)
    c = bars["close"].to_numpy(np.float64)
    seg = np.asarray(segments)
    left = bars_to_end(seg)
    atr = segment_atr(h_, l_, c, seg)
    pv = execution.spec.point_value
    rt_cost = execution.round_trip_cost
    out = {}
    for h in horizons:
        valid = left >= h + 1
        entry = _shift_forward(o, 1)
        exit_ = _shift_forward(o, h + 1)
        gross_long = (exit_ - entry) * pv
        pnl_long = np.where(valid, gross_long - rt_cost, np.nan)
        pnl_short = np.where(valid, -gross_long - rt_cost, np.nan)
        threshold = signal_cost_multiple * rt_cost
        signal = np.where(gross_long > threshold, BUY, np.where(gross_long < -threshold, SELL, HOLD)).astype(float)
        lowest = _window_extreme(l_, h, np.min)
        highest = _window_extreme(h_, h, np.max)
        excursion = np.maximum(c - lowest, highest - c)
        with np.errstate(divide="ignore", invalid="ignore"):  # ATR 0 on a flat stretch: masked out below
            risk = np.clip(excursion / (RISK_ATR_MULTIPLE * atr), 0.0, 1.0)
        out[f"win_long_{h}"] = np.where(valid, (pnl_long > 0).astype(float), np.nan)
        out[f"win_short_{h}"] = np.where(valid, (pnl_short > 0).astype(float), np.nan)
        out[f"signal_{h}"] = np.where(valid, signal, np.nan)
        out[f"movement_{h}"] = np.where(valid, np.log(_shift_forward(c, h) / c), np.nan)
        out[f"risk_{h}"] = np.where(valid & np.isfinite(atr) & (atr > 0), risk, np.nan)
        out[f"pnl_long_{h}"] = pnl_long
    return pd.DataFrame(out, index=bars.index)[label_columns(horizons)]
