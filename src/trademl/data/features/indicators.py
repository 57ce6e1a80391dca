"""The feature computations: each takes the BarContext and its parameters, returns float64.

Every function is causal and segment-aware through the helpers in ``rolling``; warm-up
rows may hold anything, because compute_features masks the first ``warmup`` bars of each
segment with NaN (FeatureSpec.warmup). Scale-free forms (ratios, z-scores, ticks) are
preferred so that a model trained on one price level still reads another.
"""

from __future__ import annotations

import math

import numpy as np

from trademl.data.features import rolling
from trademl.data.features.context import NS_PER_DAY, NS_PER_MINUTE, BarContext
from trademl.data.features.profile import rolling_poc


def _safe_ratio(num: np.ndarray, den: np.ndarray, fill: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """num / den, with ``fill`` where den is 0 (a flat window). NaN stays NaN.

    ``out=num`` reuses a buffer the caller owns (never a cached intermediate).
    """
    flat = den == 0
    out = np.divide(num, den, out=out)
    out[flat] = fill
    return out


# Price and volume as they are (the guide's request fields) ------------------------------


def close(ctx: BarContext) -> np.ndarray:
    return ctx.close


def volume(ctx: BarContext) -> np.ndarray:
    return ctx.volume


# Momentum and trend ----------------------------------------------------------------------


def rsi(ctx: BarContext, period: int) -> np.ndarray:
    """Wilder's RSI: 100 * avg gain / (avg gain + avg loss), EMAs with alpha 1/period; 50 when flat."""
    change = ctx.close_change
    up = ctx.cached(("up_move",), lambda: np.maximum(change, 0.0))
    gain = ctx.ema_of("up_move", lambda: up, 1.0 / period)
    loss = ctx.ema_of("down_move", lambda: up - change, 1.0 / period)  # max(-change, 0)
    out = gain + loss
    # Nothing moved (to rounding: an EMA's restart can leave 1e-16 where it should be 0).
    flat = out < 1e-9 * ctx.tick_size
    np.divide(gain, out, out=out)
    out *= 100.0
    out[flat] = 50.0
    return np.clip(out, 0.0, 100.0, out=out)


def log_return(ctx: BarContext, lag: int) -> np.ndarray:
    """log(close[t] / close[t-lag])."""
    out = np.empty(len(ctx))
    out[:lag] = np.nan
    np.subtract(ctx.log_close[lag:], ctx.log_close[:-lag], out=out[lag:])
    return out


def realized_vol(ctx: BarContext, window: int) -> np.ndarray:
    """Root mean square of the last ``window`` one-bar log returns (per bar, not annualised)."""
    squares = ctx.window_sum("ret1_squared", lambda: ctx.ret1 * ctx.ret1, window, x_first_valid=1)
    squares /= window
    return np.sqrt(squares, out=squares)


def sma_distance(ctx: BarContext, window: int) -> np.ndarray:
    """close / SMA(close, window) - 1."""
    out = ctx.window_sum("close_centred", lambda: ctx.close - ctx.close_ref, window)
    out /= window
    out += ctx.close_ref  # the SMA
    np.divide(ctx.close, out, out=out)
    out -= 1.0
    return out


def ema_distance(ctx: BarContext, span: int) -> np.ndarray:
    """close / EMA(close, span) - 1, EMA alpha 2 / (span + 1)."""
    out = ctx.close / ctx.ema_close(span)
    out -= 1.0
    return out


def _macd_parts(ctx: BarContext, fast: int, slow: int, signal: int) -> tuple[np.ndarray, np.ndarray]:
    def make_line():
        return ctx.ema_close(fast) - ctx.ema_close(slow)

    line = ctx.cached(("macd_line", fast, slow), make_line)
    sig = ctx.ema_of(f"macd_line_{fast}_{slow}", lambda: line, 2.0 / (signal + 1))
    return line, sig


def macd(ctx: BarContext, fast: int, slow: int, signal: int) -> np.ndarray:
    """MACD line EMA(fast) - EMA(slow), divided by the close so that it is scale-free."""
    line, _ = _macd_parts(ctx, fast, slow, signal)
    return line / ctx.close


def macd_signal(ctx: BarContext, fast: int, slow: int, signal: int) -> np.ndarray:
    """EMA(signal) of the MACD line, divided by the close."""
    _, sig = _macd_parts(ctx, fast, slow, signal)
    return sig / ctx.close


def macd_hist(ctx: BarContext, fast: int, slow: int, signal: int) -> np.ndarray:
    """MACD line - signal line, divided by the close."""
    line, sig = _macd_parts(ctx, fast, slow, signal)
    out = line - sig
    out /= ctx.close
    return out


def _bollinger(ctx: BarContext, window: int) -> tuple[np.ndarray, np.ndarray]:
    return ctx.cached(
        ("bollinger", window),
        lambda: rolling.window_mean_std(ctx.close, window, ctx.segs, ctx.close_ref),
    )


def bollinger_pctb(ctx: BarContext, window: int, width: float) -> np.ndarray:
    """%B: where the close sits between the bands mean -/+ width*std (0 lower, 1 upper); 0.5 if flat."""
    mean, std = _bollinger(ctx, window)
    band = 2.0 * width * std
    out = ctx.close - mean
    out /= band
    out += 0.5  # (close - lower) / (upper - lower), lower = mean - band / 2
    out[band == 0] = 0.5
    return out


def bollinger_width(ctx: BarContext, window: int, width: float) -> np.ndarray:
    """Band width relative to the middle band: 2 * width * std / mean."""
    mean, std = _bollinger(ctx, window)
    out = std * (2.0 * width)
    out /= mean
    return out


# Volatility and bar shape ----------------------------------------------------------------


def atr_ticks(ctx: BarContext, period: int) -> np.ndarray:
    """Wilder's ATR in ticks of the contract."""
    return ctx.atr(period) / ctx.tick_size


def bar_range_ticks(ctx: BarContext) -> np.ndarray:
    return ctx.bar_range / ctx.tick_size


def range_to_atr(ctx: BarContext, period: int) -> np.ndarray:
    """This bar's high - low over the ATR: a wide-bar detector free of the price level."""
    return _safe_ratio(ctx.bar_range, ctx.atr(period))


def close_location(ctx: BarContext) -> np.ndarray:
    return ctx.close_location


def body_ratio(ctx: BarContext) -> np.ndarray:
    """(close - open) / (high - low) in [-1, 1]; 0 for a bar with no range."""
    body = ctx.close - ctx.open
    return _safe_ratio(body, ctx.bar_range, out=body)


# Volume ----------------------------------------------------------------------------------


def volume_zscore(ctx: BarContext, window: int) -> np.ndarray:
    """(volume - rolling mean) / rolling std over ``window`` bars; 0 when volume is constant."""
    mean, std = rolling.window_mean_std(ctx.volume, window, ctx.segs)
    np.subtract(ctx.volume, mean, out=mean)
    return _safe_ratio(mean, std, out=mean)


def obv_slope(ctx: BarContext, window: int) -> np.ndarray:
    """OBV change over ``window`` bars / volume traded in them, in [-1, 1]."""
    moved = ctx.window_sum("signed_volume", lambda: ctx.signed_volume, window, x_first_valid=1)
    traded = ctx.window_sum("volume", lambda: ctx.volume, window, x_first_valid=1)
    return _safe_ratio(moved, traded, out=moved)


def obv_zscore(ctx: BarContext, window: int) -> np.ndarray:
    """z-score of OBV within its last ``window`` values (the level of OBV is arbitrary)."""
    mean, std = rolling.window_mean_std(ctx.obv, window, ctx.segs)  # OBV is 0 at each start
    np.subtract(ctx.obv, mean, out=mean)
    return _safe_ratio(mean, std, out=mean)


def _typical_price(ctx: BarContext) -> np.ndarray:
    return ctx.cached(("typical",), lambda: (ctx.high + ctx.low + ctx.close) / 3.0)


def vwap_distance_ticks(ctx: BarContext) -> np.ndarray:
    """close - session VWAP, in ticks; VWAP of typical prices since the session began.

    A session restarts at each segment start and at each trading day (22:00 UTC roll).
    Before any volume has traded in the session, the VWAP is the close itself.
    """
    typical = _typical_price(ctx)
    sessions = ctx.sessions
    pv = np.cumsum(typical * ctx.volume)
    vol = np.cumsum(ctx.volume)
    # Cumulative sums since the session began: subtract the sums just before its first bar.
    before = sessions.first_rows - 1
    pv -= sessions.per_bar(np.where(before >= 0, pv[before], 0.0))
    vol -= sessions.per_bar(np.where(before >= 0, vol[before], 0.0))
    vwap = np.divide(pv, vol, out=ctx.close.copy(), where=vol > 0)
    return (ctx.close - vwap) / ctx.tick_size


def order_flow_imbalance(ctx: BarContext, window: int) -> np.ndarray:
    """Volume signed by close location, summed over ``window`` bars, over the volume: [-1, 1].

    A bar closing at its high counts its volume as bought, at its low as sold (a proxy
    for the trade-side imbalance that OHLCV bars do not carry).
    """
    signed = ctx.window_sum("clv_volume", lambda: ctx.close_location * ctx.volume, window)
    traded = ctx.window_sum("volume", lambda: ctx.volume, window)
    return _safe_ratio(signed, traded, out=signed)


def poc_distance_ticks(ctx: BarContext, window: int, bin_ticks: int) -> np.ndarray:
    """close - point of control of the volume profile of the last ``window`` bars, in ticks."""
    typical = _typical_price(ctx)
    traded = ctx.window_sum("volume", lambda: ctx.volume, window)
    poc = rolling_poc(typical, ctx.volume, traded, window, bin_ticks * ctx.tick_size)
    np.subtract(ctx.close, poc, out=poc)
    poc /= ctx.tick_size
    return poc


# Calendar --------------------------------------------------------------------------------


def _cyclic(index: np.ndarray, period: int, fn) -> np.ndarray:
    """fn(2 pi index / period) through a table of the ``period`` values: one gather per bar."""
    return fn(2 * math.pi * np.arange(period) / period)[index]


def _minute_of_day(ctx: BarContext) -> np.ndarray:
    return ctx.cached(("minute_of_day",), lambda: (ctx.stamps % NS_PER_DAY) // NS_PER_MINUTE)


def _day_of_week(ctx: BarContext) -> np.ndarray:
    """Weekday of the trading day, Monday = 0 (1970-01-01 was a Thursday, day 3)."""
    return ctx.cached(("day_of_week",), lambda: (ctx.trading_day + 3) % 7)


def time_of_day_sin(ctx: BarContext) -> np.ndarray:
    return _cyclic(_minute_of_day(ctx), 1440, np.sin)


def time_of_day_cos(ctx: BarContext) -> np.ndarray:
    return _cyclic(_minute_of_day(ctx), 1440, np.cos)


def day_of_week_sin(ctx: BarContext) -> np.ndarray:
    return _cyclic(_day_of_week(ctx), 7, np.sin)


def day_of_week_cos(ctx: BarContext) -> np.ndarray:
    return _cyclic(_day_of_week(ctx), 7, np.cos)
