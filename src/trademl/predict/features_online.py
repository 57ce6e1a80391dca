"""Raw bars of a request -> the feature rows the models need, through the training code.

The features are computed by ``trademl.data.features.compute_features``, the very
function the dataset builder calls, over the bars the request sent; segments come from
``trademl.segments.segment_ids`` with the same gap rule. So a model sees at
serving time exactly what it saw in training, and a change to a feature changes both.

pandas and the feature library are imported here, not at the top of the predict path:
a request made of precomputed features never pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trademl.errors import DataError, SchemaError

BAR_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass
class OnlineFeatures:
    """Feature matrix of the request's bars in the models' order, and each bar's segment."""

    matrix: np.ndarray  # float32 [n_bars, F]; NaN during warm-up
    segments: np.ndarray  # int32 [n_bars]
    last_timestamp: str

    def rows_in_last_segment(self) -> int:
        """How many of the last bars share the last bar's segment (a window may not cross a gap)."""
        seg = self.segments
        return int(len(seg) - np.searchsorted(seg, seg[-1], side="left")) if len(seg) else 0


def bars_frame(bars: list, symbol: str, contract: dict | None = None, source: str = "request bars"):
    """The request's bars as the bars frame of DESIGN.md (UTC index "timestamp", float64 columns)."""
    import pandas as pd

    index = pd.DatetimeIndex([b.timestamp for b in bars], name="timestamp").tz_convert("UTC")
    columns: dict[str, np.ndarray] = {}
    for name in BAR_FIELDS:
        values = [getattr(b, name) for b in bars]
        if name == "volume" and all(v is None for v in values):
            continue  # no volume at all: volume features are left out, as the loader does
        if any(v is None for v in values):
            raise DataError("volume is given for some bars and not for others", where="bars.volume")
        columns[name] = np.asarray(values, dtype=np.float64)
    for name in sorted({k for b in bars for k in (b.model_extra or {})}):
        values = [(b.model_extra or {}).get(name) for b in bars]
        if any(v is None for v in values):
            raise DataError(f"extra field {name!r} is missing from some bars", where=f"bars.{name}")
        columns[name] = np.asarray(values, dtype=np.float64)
    frame = pd.DataFrame(columns, index=index)
    frame.attrs["symbol"] = symbol
    if contract is not None:  # the models' spec: tick-based features as in training
        frame.attrs["contract"] = contract
    frame.attrs["source"] = source
    return frame


def features_from_bars(bars: list, *, symbol: str, feature_names: list[str], max_gap_minutes: float,
                       contract: dict | None = None, context_bars: list | None = None) -> OnlineFeatures:
    """Compute ``feature_names`` (in that order) for every bar of the request; ``context_bars``:
    another instrument's bars, for models built with a context (--context)."""
    from trademl.data.features import compute_features
    from trademl.segments import segment_ids

    frame = bars_frame(bars, symbol, contract)
    extras = tuple(n for n in feature_names if n in frame.columns and n not in BAR_FIELDS)
    computed = [n for n in feature_names if n not in extras]
    context = None if context_bars is None else bars_frame(context_bars, "context", source="context_bars")
    feats = compute_features(
        frame, symbol=symbol, names=computed or None, max_gap_minutes=max_gap_minutes, extra_columns=extras,
        context=context,
    )
    missing = [n for n in feature_names if n not in feats.columns]
    if missing:
        raise SchemaError(
            f"the bars cannot give the models' features {missing}",
            where="bars",
            hint="send the extra columns the models were trained with as fields of every bar",
        )
    matrix = np.ascontiguousarray(feats[feature_names].to_numpy(np.float32))
    segments = segment_ids(frame, max_gap_minutes).astype(np.int32)
    return OnlineFeatures(matrix, segments, frame.index[-1].isoformat())
