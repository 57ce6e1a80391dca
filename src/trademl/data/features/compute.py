"""compute_features: bars -> float32 feature frame; feature_row_from_bars for serving."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from trademl.data.features.context import BarContext
from trademl.data.features.registry import DEFAULT_FEATURES, FEATURES, FeatureSpec
from trademl.data.features.schema import FeatureSchema
from trademl.errors import DataError, TradeMLError
from trademl.market.contracts import spec_of_bars


def resolve_features(names: Iterable[str] | None = None) -> list[FeatureSpec]:
    """The specs of ``names`` (default: DEFAULT_FEATURES); unknown names are an error."""
    names = list(DEFAULT_FEATURES if names is None else [names] if isinstance(names, str) else names)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        guesses = {n: difflib.get_close_matches(n, FEATURES, n=3) for n in unknown}
        raise TradeMLError(
            f"unknown feature(s) {unknown}",
            where="features",
            hint="; ".join(f"{n}: did you mean {g}?" for n, g in guesses.items() if g) or "see trademl.data.features.FEATURES",
        )
    if len(set(names)) != len(names):
        raise TradeMLError(f"features listed twice: {sorted({n for n in names if names.count(n) > 1})}", where="features")
    return [FEATURES[n] for n in names]


def required_history(names: Iterable[str] | None = None) -> int:
    """Bars the serving path keeps so the last row is exact: the longest history of ``names``."""
    return max(spec.history for spec in resolve_features(names))


def _symbol_of(bars: pd.DataFrame, symbol: str | None) -> str:
    symbol = symbol or bars.attrs.get("symbol")
    if not symbol:
        raise DataError(
            "no contract symbol: tick-based features need the tick size",
            where=str(bars.attrs.get("source") or "bars"),
            hint="pass symbol= (e.g. 'NQZ5') or set bars.attrs['symbol']",
        )
    return symbol


def _extra_values(bars: pd.DataFrame, extra_columns: Sequence[str], taken: set[str]) -> dict[str, np.ndarray]:
    out = {}
    where = str(bars.attrs.get("source") or "bars")
    for col in extra_columns:
        if col not in bars.columns:
            raise DataError(f"extra feature column {col!r} is not in the bars", where=where)
        if col in taken:
            raise DataError(f"extra column {col!r} has the name of a registered feature", where=where)
        if not pd.api.types.is_numeric_dtype(bars[col]):
            raise DataError(f"extra feature column {col!r} is not numeric ({bars[col].dtype})", where=where)
        out[col] = bars[col].to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _without_volume_features(specs: list[FeatureSpec], ctx: BarContext, defaults: bool):
    """The specs that can be computed, and {left-out name: why}; one warning when any is left out."""
    if not ctx.has_volume:
        why = "the bars have no volume column"
    elif defaults and len(ctx) and not (ctx.volume > 0).any():
        why = "the bars' volume is all zero"
    else:
        return specs, {}
    left_out = {s.name: why for s in specs if s.needs_volume}
    if left_out:
        warnings.warn(f"{why}: leaving out the volume features {list(left_out)}", stacklevel=3)
    return [s for s in specs if not s.needs_volume], left_out


def compute_features(
    bars: pd.DataFrame,
    *,
    symbol: str | None = None,
    names: Iterable[str] | None = None,
    max_gap_minutes: float | None = None,
    extra_columns: Sequence[str] = (),
    contract=None,
    volume_optional: bool | None = None,
    context: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Causal features of every bar: float32 columns in schema order, same index as ``bars``.
    ``contract``: the ContractSpec whose tick size the tick-based features use (None: the one the
    bars carry, else ``symbol``'s, ``trademl.market.contracts.spec_of_bars``).

    The value at bar t reads bars up to t only; windows restart at segment boundaries
    (gaps longer than ``max_gap_minutes``, None: [data] max_gap_minutes; contract rolls) and are NaN during each
    segment's warm-up. Volume features are left out, with one warning, when the bars carry
    no volume, and, for the default set (``names=None``), when their volume is all zero (spot
    FX feeds): they would be constant or NaN. Named features are computed as asked, so that a
    model's own list (serving, later chunks of a build) always gives the same columns, unless
    ``volume_optional`` (a selection of [features] exclude: the default rule applies to it too).
    What was left out and why is in the schema (``left_out``). ``extra_columns`` (e.g. ``edge``
    of synthetic bars) are passed through as features of the same name. The schema is in
    ``result.attrs["schema"]``. ``context``: another instrument's bars frame, read by the
    cross-market features (FEATURE_GROUPS["context"]) as of each bar.
    """
    specs = resolve_features(names)
    needing = [s.name for s in specs if s.needs_context]
    if needing and context is None:
        raise DataError(f"the features {needing} read another instrument's bars and none were given",
                        where=str(bars.attrs.get("source") or "bars"),
                        hint="give the context instrument's bars: --context FILE (context_bars in a request)")
    extra_columns = (extra_columns,) if isinstance(extra_columns, str) else tuple(extra_columns)
    extras = _extra_values(bars, extra_columns, set(FEATURES))
    # the spec the bars carry (a dataset's, or one given on the command line), else the symbol's
    spec_contract = contract or spec_of_bars(bars, _symbol_of(bars, symbol))
    ctx = BarContext(bars, spec_contract.tick_size, max_gap_minutes, market_context=context if needing else None)
    specs, left_out = _without_volume_features(specs, ctx, defaults=names is None if volume_optional is None
                                               else volume_optional)

    columns = [s.name for s in specs] + list(extra_columns)
    matrix = np.empty((len(ctx), len(columns)), dtype=np.float32, order="F")
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, spec in enumerate(specs if len(ctx) else ()):
            matrix[:, j] = spec.compute(ctx)  # float64 math, float32 storage
            if spec.warmup:
                matrix[ctx.segs.young(spec.warmup), j] = np.nan
    for j, col in enumerate(extra_columns, start=len(specs)):
        matrix[:, j] = extras[col]

    frame = pd.DataFrame(matrix, index=bars.index, columns=columns, copy=False)
    frame.attrs["schema"] = FeatureSchema.for_names(columns, extra_columns, left_out=left_out)
    frame.attrs["symbol"] = spec_contract.root
    return frame


def feature_row_from_bars(
    bars_tail: pd.DataFrame,
    *,
    symbol: str | None = None,
    names: Iterable[str] | None = None,
    max_gap_minutes: float | None = None,
    extra_columns: Sequence[str] = (),
    context: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The features of the LAST bar, from the last ``required_history(names)`` bars only.

    What the serving path calls with a rolling buffer of recent bars: one row, equal to
    the last row of compute_features over the whole history (to float32 precision).
    """
    if len(bars_tail) == 0:
        raise DataError("no bars to compute features from", where=str(bars_tail.attrs.get("source") or "bars"))
    tail = bars_tail.iloc[-required_history(names) :]
    tail.attrs.update(bars_tail.attrs)
    return compute_features(
        tail, symbol=symbol, names=names, max_gap_minutes=max_gap_minutes, extra_columns=extra_columns,
        context=context,
    ).iloc[-1:]
