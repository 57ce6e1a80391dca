"""The registry of named, parameterised features and the default feature set.

A name says what a feature is and with which parameters ("rsi_14", "ret_5",
"ema_dist_20"); names never change meaning. A change to a definition bumps
FEATURE_VERSION, which changes every schema hash, so an old model refuses new data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from trademl.data.features import cross_market as xm
from trademl.data.features import indicators as ind
from trademl.data.features import intraday as intra
from trademl.data.features.incremental_context import STEPS as _CONTEXT_STEPS
from trademl.data.features.incremental_indicators import STEPS as _INDICATOR_STEPS
from trademl.data.features.incremental_intraday import STEPS as _INTRADAY_STEPS
from trademl.data.features.rolling import ema_memory

FEATURE_VERSION = 1
# A VWAP session is at most one trading day: 1440 one-minute bars (bars are >= 1 minute).
_SESSION_BARS = 1440


@dataclass(frozen=True)
class FeatureSpec:
    """One registered feature.

    warmup: the first ``warmup`` bars of every segment are NaN (the feature needs them).
    history: bars that make the value exact (>= warmup + 1; EMAs need longer, until their
        start is forgotten to 1e-9) - what the serving path keeps.
    crosses_segments: reads earlier segments (yesterday's levels across the daily halt): a
        chunked build must hand it the bars before the chunk.
    needs_context: reads another instrument's bars (--context).
    step: the incremental form (``trademl.data.features.incremental``): ``step(tick_size, **params)``
        makes an object whose ``update(bar, shared)`` gives the batch value of each new bar.
    """

    name: str
    fn: Callable[..., np.ndarray]
    params: dict = field(default_factory=dict)
    warmup: int = 0
    history: int = 1
    needs_volume: bool = False
    description: str = ""
    crosses_segments: bool = False
    needs_context: bool = False
    step: type | None = None

    def compute(self, ctx) -> np.ndarray:
        return self.fn(ctx, **self.params)


FEATURES: dict[str, FeatureSpec] = {}
# batch function -> its incremental step
_STEPS: dict = {**_INDICATOR_STEPS, **_INTRADAY_STEPS, **_CONTEXT_STEPS}


def _register(name, fn, params=None, *, warmup=0, history=None, needs_volume=False, description="",
              crosses_segments=False, needs_context=False):
    if name in FEATURES:
        raise ValueError(f"feature {name!r} registered twice")
    FEATURES[name] = FeatureSpec(
        name, fn, dict(params or {}), warmup, max(history or 0, warmup + 1), needs_volume, description,
        crosses_segments, needs_context, _STEPS.get(fn),
    )


def _ema_alpha(span: int) -> float:
    return 2.0 / (span + 1)


def _register_all() -> None:
    _register("close", ind.close, description="last price (the guide's request field)")
    _register("volume", ind.volume, needs_volume=True, description="contracts traded in the bar")
    _register("dist_to_poc_ticks", ind.poc_distance_ticks, {"window": 60, "bin_ticks": 4}, warmup=59,
              needs_volume=True, description="close - point of control of the 60-bar volume profile, ticks")
    _register("rsi", ind.rsi, {"period": 14}, warmup=14, history=14 + ema_memory(1 / 14),
              description="Wilder RSI(14), 0..100 (the guide's name)")
    for p in (7, 14, 21):
        _register(f"rsi_{p}", ind.rsi, {"period": p}, warmup=p, history=p + ema_memory(1 / p),
                  description=f"Wilder RSI({p}), 0..100")
    for lag in (1, 2, 5, 10, 15, 30, 60, 120):
        _register(f"ret_{lag}", ind.log_return, {"lag": lag}, warmup=lag, description=f"log return over {lag} bars")
    for w in (5, 15, 30, 60, 120):
        _register(f"rvol_{w}", ind.realized_vol, {"window": w}, warmup=w,
                  description=f"RMS of one-bar log returns over {w} bars")
    for w in (5, 10, 20, 50, 100, 200):
        _register(f"sma_dist_{w}", ind.sma_distance, {"window": w}, warmup=w - 1,
                  description=f"close / SMA({w}) - 1")
    for w in (5, 10, 12, 20, 26, 50, 100, 200):  # 12 and 26 share their EMAs with MACD
        _register(f"ema_dist_{w}", ind.ema_distance, {"span": w}, warmup=w - 1,
                  history=w - 1 + ema_memory(_ema_alpha(w)), description=f"close / EMA({w}) - 1")
    for w in (20, 50):
        _register(f"bb_pctb_{w}", ind.bollinger_pctb, {"window": w, "width": 2.0}, warmup=w - 1,
                  description=f"Bollinger %B ({w}, 2 std)")
        _register(f"bb_width_{w}", ind.bollinger_width, {"window": w, "width": 2.0}, warmup=w - 1,
                  description=f"Bollinger band width / middle band ({w}, 2 std)")
    macd_params = {"fast": 12, "slow": 26, "signal": 9}
    macd_history = ema_memory(_ema_alpha(26)) + ema_memory(_ema_alpha(9))
    _register("macd", ind.macd, macd_params, warmup=25, history=macd_history,
              description="MACD(12, 26) line / close")
    _register("macd_signal", ind.macd_signal, macd_params, warmup=33, history=macd_history,
              description="EMA(9) of the MACD line / close")
    _register("macd_hist", ind.macd_hist, macd_params, warmup=33, history=macd_history,
              description="MACD line - signal, / close")
    for p in (7, 14, 30):
        _register(f"atr_ticks_{p}", ind.atr_ticks, {"period": p}, warmup=p, history=p + ema_memory(1 / p),
                  description=f"Wilder ATR({p}) in ticks")
    _register("range_atr_14", ind.range_to_atr, {"period": 14}, warmup=14, history=14 + ema_memory(1 / 14),
              description="bar range / ATR(14)")
    _register("bar_range_ticks", ind.bar_range_ticks, description="high - low in ticks")
    _register("clv", ind.close_location, description="close location value in the bar, -1 (low) .. 1 (high)")
    _register("body_ratio", ind.body_ratio, description="(close - open) / (high - low)")
    for w in (20, 60):
        _register(f"volume_z_{w}", ind.volume_zscore, {"window": w}, warmup=w - 1, needs_volume=True,
                  description=f"volume z-score over {w} bars")
        _register(f"obv_slope_{w}", ind.obv_slope, {"window": w}, warmup=w, needs_volume=True,
                  description=f"OBV change over {w} bars / volume traded, -1..1")
        _register(f"obv_z_{w}", ind.obv_zscore, {"window": w}, warmup=w - 1, needs_volume=True,
                  description=f"OBV z-score over {w} bars")
    _register("vwap_dist_ticks", ind.vwap_distance_ticks, history=_SESSION_BARS, needs_volume=True,
              description="close - session VWAP in ticks (session: segment and trading day)")
    for w in (5, 15, 60):
        _register(f"ofi_{w}", ind.order_flow_imbalance, {"window": w}, warmup=w - 1, needs_volume=True,
                  description=f"close-location-signed volume / volume over {w} bars, -1..1")
    _register("tod_sin", ind.time_of_day_sin, description="sin of UTC minute of day")
    _register("tod_cos", ind.time_of_day_cos, description="cos of UTC minute of day")
    _register("dow_sin", ind.day_of_week_sin, description="sin of the trading day's weekday")
    _register("dow_cos", ind.day_of_week_cos, description="cos of the trading day's weekday")
    _register_intraday()
    _register_cross_market()


def _register_intraday() -> None:
    """Higher timeframes, session structure and the volatility regime (trademl.data.features.intraday)."""
    for m in (5, 15, 60):
        history = 5 * m + 1  # the current higher bar and the four before it
        _register(f"tf_ret_{m}", intra.higher_return, {"minutes": m}, history=history,
                  description=f"log(close / open) of the last completed {m}-minute bar")
        _register(f"tf_range_{m}", intra.higher_range, {"minutes": m}, history=history,
                  description=f"log(high / low) of the last completed {m}-minute bar")
        _register(f"tf_trend_{m}", intra.higher_trend, {"minutes": m, "bars": 3}, history=history,
                  description=f"log return over the last 3 completed {m}-minute bars")
    day = {"history": intra.session_history(1), "crosses_segments": True}
    _register("minutes_since_open", intra.minutes_since_open,
              description="minutes since the regular session's 08:30 Chicago open; negative overnight")
    for side in ("high", "low"):
        _register(f"or_{side}_dist_ticks", intra.opening_range_distance, {"minutes": 30, "side": side}, **day,
                  description=f"close - the 30-minute opening range's {side} in ticks (today's once complete, "
                              "else yesterday's)")
        _register(f"overnight_{side}_dist_ticks", intra.overnight_distance, {"side": side}, **day,
                  description=f"close - the overnight {side} in ticks (running during the overnight)")
    for level in ("high", "low", "close", "settle"):
        _register(f"prev_{level}_dist_ticks", intra.previous_day_distance, {"level": level}, **day,
                  description=f"close - the previous trading day's {level} in ticks"
                              + (" (its last close before 15:00 Chicago)" if level == "settle" else ""))
    # two days: their bars and today's (4,321) fit in a request's 5,000 bars, so serving is exact
    _register("rvol_pct_60", intra.volatility_percentile, {"window": 60, "days": 2},
              history=intra.session_history(2), crosses_segments=True,
              description="percentile of rvol_60 among its values of the previous 2 trading days, 0..1")


def _register_cross_market() -> None:
    """Another instrument's bars as context (trademl.data.features.cross_market; --context FILE)."""
    ctx = {"needs_context": True}
    for lag in (1, 5, 15):
        _register(f"ctx_ret_{lag}", xm.context_return, {"lag": lag}, history=lag + 1, **ctx,
                  description=f"the context instrument's log return over {lag} bars (as-of aligned)")
    for lag in (15, 60):
        _register(f"ctx_rel_strength_{lag}", xm.relative_strength, {"lag": lag}, history=lag + 1, **ctx,
                  description=f"our log return minus the context's over {lag} bars")
    _register("ctx_corr_60", xm.rolling_correlation, {"window": 60}, history=61, **ctx,
              description="correlation of one-bar returns with the context's over 60 bars")
    _register("ctx_beta_60", xm.rolling_beta, {"window": 60}, history=61, **ctx,
              description="beta of one-bar returns on the context's over 60 bars")


_register_all()

DEFAULT_FEATURES: tuple[str, ...] = (
    # the guide's request fields
    "close", "volume", "rsi", "dist_to_poc_ticks",
    # returns and realized volatility
    "ret_1", "ret_5", "ret_15", "ret_30", "ret_60",
    "rvol_15", "rvol_30", "rvol_60",
    # trend: moving averages, MACD, a fast RSI
    "sma_dist_10", "sma_dist_20", "sma_dist_50",
    "ema_dist_12", "ema_dist_26", "ema_dist_50",
    "macd", "macd_signal", "macd_hist", "rsi_7",
    # bands, range and bar shape
    "bb_pctb_20", "bb_width_20",
    "atr_ticks_14", "range_atr_14", "bar_range_ticks", "clv", "body_ratio",
    # volume and order flow
    "volume_z_60", "obv_slope_20", "obv_z_60", "vwap_dist_ticks", "ofi_15", "ofi_60",
    # calendar
    "tod_sin", "tod_cos", "dow_sin", "dow_cos",
)


# Groups of features a config can name in [features] include / exclude, beside single names.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "guide": ("close", "volume", "rsi", "dist_to_poc_ticks"),
    "returns": ("ret_1", "ret_5", "ret_15", "ret_30", "ret_60", "rvol_15", "rvol_30", "rvol_60"),
    "trend": ("sma_dist_10", "sma_dist_20", "sma_dist_50", "ema_dist_12", "ema_dist_26", "ema_dist_50",
              "macd", "macd_signal", "macd_hist", "rsi_7"),
    "bands": ("bb_pctb_20", "bb_width_20", "atr_ticks_14", "range_atr_14", "bar_range_ticks", "clv", "body_ratio"),
    "volume": (),  # filled below: every feature that reads volume
    "calendar": ("tod_sin", "tod_cos", "dow_sin", "dow_cos"),
    "default": DEFAULT_FEATURES,
    "timeframes": tuple(f"tf_{k}_{m}" for m in (5, 15, 60) for k in ("ret", "range", "trend")),
    "session": ("minutes_since_open", "or_high_dist_ticks", "or_low_dist_ticks", "overnight_high_dist_ticks",
                "overnight_low_dist_ticks", "prev_high_dist_ticks", "prev_low_dist_ticks", "prev_close_dist_ticks",
                "prev_settle_dist_ticks"),
    "regime": ("rvol_pct_60",),
    "context": (),  # filled below: every feature that reads the context instrument
}
FEATURE_GROUPS["intraday"] = FEATURE_GROUPS["timeframes"] + FEATURE_GROUPS["session"] + FEATURE_GROUPS["regime"]


def select_features(include=None, exclude=()) -> list[str] | None:
    """The features ``[features] include / exclude`` choose (names or FEATURE_GROUPS), in registry
    order; None when both are empty (the default set, with its automatic volume rule). An unknown
    name or an empty choice is a ValueError naming it."""
    if include is None and not exclude:
        return None

    def expand(items, what: str) -> set[str]:
        out = set()
        for item in items:
            if item in FEATURE_GROUPS:
                out.update(FEATURE_GROUPS[item])
            elif item in FEATURES:
                out.add(item)
            else:
                raise ValueError(f"[features] {what}: {item!r} is neither a feature nor a group; groups are "
                                 f"{', '.join(FEATURE_GROUPS)} (`trademl data features` lists the features)")
        return out

    chosen = expand(include, "include") if include is not None else set(DEFAULT_FEATURES)
    chosen -= expand(exclude, "exclude")
    if not chosen:
        raise ValueError("[features] include / exclude leave no feature to compute")
    return [name for name in FEATURES if name in chosen]


def describe_features(names=None) -> list[dict]:
    """One row per feature (default: every registered one): what `trademl data features` prints."""
    default = set(DEFAULT_FEATURES)
    return [
        {
            "name": spec.name,
            "default": spec.name in default,
            "params": dict(spec.params),
            "warmup": spec.warmup,
            "history": spec.history,
            "needs_volume": spec.needs_volume,
            "description": spec.description,
        }
        for spec in (FEATURES[n] for n in (FEATURES if names is None else names))
    ]


assert all(spec.step is not None for spec in FEATURES.values()), "every feature has its incremental step"
FEATURE_GROUPS["volume"] = tuple(name for name, spec in FEATURES.items() if spec.needs_volume)
FEATURE_GROUPS["context"] = tuple(name for name, spec in FEATURES.items() if spec.needs_context)
