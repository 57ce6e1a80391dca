"""The steps of the single-timeframe indicators (``indicators``), one bar at a time.

Each function mirrors its batch namesake in ``indicators`` formula for formula (the same
order of operations, the same fill where a denominator is 0), so a flat window or a bar with
no range gives exactly what the batch gives. The state (EMAs, rolling windows, OBV, the
session's VWAP sums) lives in ``incremental.Shared``; the warm-up NaNs are the engine's.
"""

from __future__ import annotations

import math

import numpy as np

from trademl.data.features import indicators as ind
from trademl.data.features.incremental import Shared, StreamBar, stepper
from trademl.data.features.context import NS_PER_DAY, NS_PER_MINUTE

# The batch's calendar tables (indicators._cyclic): the same numbers, not a recomputed sin.
_TOD_SIN, _TOD_COS = (fn(2 * math.pi * np.arange(1440) / 1440).tolist() for fn in (np.sin, np.cos))
_DOW_SIN, _DOW_COS = (fn(2 * math.pi * np.arange(7) / 7).tolist() for fn in (np.sin, np.cos))


def _ratio(num: float, den: float, fill: float = 0.0) -> float:
    """num / den, ``fill`` where den is 0 (indicators._safe_ratio)."""
    return fill if den == 0 else num / den


def close(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return bar.close


def volume(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return bar.volume


def rsi(bar: StreamBar, shared: Shared, tick_size: float, period: int) -> float:
    up = max(bar.close_change, 0.0)
    gain = shared.ema("up_move", 1.0 / period, lambda: up)
    loss = shared.ema("down_move", 1.0 / period, lambda: up - bar.close_change)
    total = gain + loss
    if total < 1e-9 * tick_size:  # nothing moved
        return 50.0
    return min(max(gain / total * 100.0, 0.0), 100.0)


def log_return(bar: StreamBar, shared: Shared, tick_size: float, lag: int) -> float:
    past = shared.window("log_close", lag + 1, lambda: bar.log_close).values
    return bar.log_close - past[-lag - 1] if len(past) > lag else math.nan


def realized_vol(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    squares = shared.window("ret1_squared", window, lambda: bar.ret1 * bar.ret1)
    return math.sqrt(squares.sum(window) / window)


def _centred_close(bar: StreamBar, shared: Shared, window: int):
    return shared.window("close_centred", window, lambda: bar.close - shared.close_ref)


def sma_distance(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    sma = _centred_close(bar, shared, window).sum(window) / window + shared.close_ref
    return bar.close / sma - 1.0


def ema_distance(bar: StreamBar, shared: Shared, tick_size: float, span: int) -> float:
    return bar.close / shared.ema_close(span) - 1.0


def _macd_parts(bar: StreamBar, shared: Shared, fast: int, slow: int, signal: int) -> tuple[float, float]:
    line = shared.ema_close(fast) - shared.ema_close(slow)
    return line, shared.ema(f"macd_line_{fast}_{slow}", 2.0 / (signal + 1), lambda: line)


def macd(bar: StreamBar, shared: Shared, tick_size: float, fast: int, slow: int, signal: int) -> float:
    return _macd_parts(bar, shared, fast, slow, signal)[0] / bar.close


def macd_signal(bar: StreamBar, shared: Shared, tick_size: float, fast: int, slow: int, signal: int) -> float:
    return _macd_parts(bar, shared, fast, slow, signal)[1] / bar.close


def macd_hist(bar: StreamBar, shared: Shared, tick_size: float, fast: int, slow: int, signal: int) -> float:
    line, sig = _macd_parts(bar, shared, fast, slow, signal)
    return (line - sig) / bar.close


def _bollinger(bar: StreamBar, shared: Shared, window: int) -> tuple[float, float]:
    mean, std = _centred_close(bar, shared, window).mean_std(window)
    return mean + shared.close_ref, std


def bollinger_pctb(bar: StreamBar, shared: Shared, tick_size: float, window: int, width: float) -> float:
    mean, std = _bollinger(bar, shared, window)
    band = 2.0 * width * std
    return 0.5 if band == 0 else (bar.close - mean) / band + 0.5


def bollinger_width(bar: StreamBar, shared: Shared, tick_size: float, window: int, width: float) -> float:
    mean, std = _bollinger(bar, shared, window)
    return std * (2.0 * width) / mean


def atr_ticks(bar: StreamBar, shared: Shared, tick_size: float, period: int) -> float:
    return shared.atr(period) / tick_size


def bar_range_ticks(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return shared.bar_range / tick_size


def range_to_atr(bar: StreamBar, shared: Shared, tick_size: float, period: int) -> float:
    return _ratio(shared.bar_range, shared.atr(period))


def close_location(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return shared.close_location


def body_ratio(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return _ratio(bar.close - bar.open, shared.bar_range)


def _volume_window(bar: StreamBar, shared: Shared, window: int):
    return shared.window("volume", window, lambda: bar.volume)


def volume_zscore(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    mean, std = _volume_window(bar, shared, window).mean_std(window)
    return _ratio(bar.volume - mean, std)


def obv_slope(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    moved = shared.window("signed_volume", window, lambda: shared.signed_volume).sum(window)
    return _ratio(moved, _volume_window(bar, shared, window).sum(window))


def obv_zscore(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    mean, std = shared.window("obv", window, lambda: shared.obv).mean_std(window)
    return _ratio(shared.obv - mean, std)


def vwap_distance_ticks(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return (bar.close - shared.session_vwap) / tick_size


def order_flow_imbalance(bar: StreamBar, shared: Shared, tick_size: float, window: int) -> float:
    signed = shared.window("clv_volume", window, lambda: shared.close_location * bar.volume).sum(window)
    return _ratio(signed, _volume_window(bar, shared, window).sum(window))


# A window spanning this many price bins or more has no POC (profile._MAX_WIDTH_CLASS: 2**20 bins).
_MAX_POC_WIDTH = 1 << 20


def poc_distance_ticks(bar: StreamBar, shared: Shared, tick_size: float, window: int, bin_ticks: int) -> float:
    """close - the POC of the last ``window`` bars' volume profile, in ticks (profile.rolling_poc)."""
    bin_size = bin_ticks * tick_size
    bins = shared.window("poc_bin", window, lambda: math.floor(shared.typical / bin_size + 1e-9)).values[-window:]
    volumes = _volume_window(bar, shared, window).values[-window:]
    if len(bins) < window or not math.fsum(volumes) > 0 or max(bins) - min(bins) >= _MAX_POC_WIDTH:
        return math.nan
    profile: dict[int, float] = {}
    for b, v in zip(bins, volumes):  # the batch's bincount adds in window order too
        profile[b] = profile.get(b, 0.0) + v
    top = max(profile.values())
    poc_bin = min(b for b, v in profile.items() if v == top)  # ties: the lowest price
    return (bar.close - (poc_bin + 0.5) * bin_size) / tick_size


def time_of_day_sin(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return _TOD_SIN[(bar.stamp % NS_PER_DAY) // NS_PER_MINUTE]


def time_of_day_cos(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return _TOD_COS[(bar.stamp % NS_PER_DAY) // NS_PER_MINUTE]


def day_of_week_sin(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return _DOW_SIN[(shared.trading_day + 3) % 7]


def day_of_week_cos(bar: StreamBar, shared: Shared, tick_size: float) -> float:
    return _DOW_COS[(shared.trading_day + 3) % 7]


STEPS = {getattr(ind, fn.__name__): stepper(fn) for fn in (
    close, volume, rsi, log_return, realized_vol, sma_distance, ema_distance, macd, macd_signal, macd_hist,
    bollinger_pctb, bollinger_width, atr_ticks, bar_range_ticks, range_to_atr, close_location, body_ratio,
    volume_zscore, obv_slope, obv_zscore, vwap_distance_ticks, order_flow_imbalance, poc_distance_ticks,
    time_of_day_sin, time_of_day_cos, day_of_week_sin, day_of_week_cos,
)}
