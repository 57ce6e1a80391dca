"""Causal, segment-aware features of minute bars, a registry of them, and their schema.

    from trademl.data.features import compute_features, FeatureSchema, FEATURES, DEFAULT_FEATURES

``compute_features(bars)`` -> float32 frame of DEFAULT_FEATURES (the guide's close, volume,
rsi, dist_to_poc_ticks plus moving averages, Bollinger, MACD, OBV, VWAP, ATR, returns,
realized volatility, bar shape, volume z-score, order-flow imbalance, calendar).
Modules: rolling (segment-aware windows and EMAs), profile (volume-profile POC),
context (bars as arrays + shared intermediates), indicators (the computations),
registry (names -> FeatureSpec), schema (FeatureSchema), compute (the entry points).
"""

from trademl.data.features.compute import compute_features, feature_row_from_bars, required_history, resolve_features
from trademl.data.features.registry import DEFAULT_FEATURES, FEATURE_VERSION, FEATURES, FeatureSpec, describe_features
from trademl.data.features.schema import FeatureSchema

__all__ = [
    "DEFAULT_FEATURES",
    "FEATURES",
    "FEATURE_VERSION",
    "FeatureSchema",
    "FeatureSpec",
    "compute_features",
    "describe_features",
    "feature_row_from_bars",
    "required_history",
    "resolve_features",
]
