"""A prediction request: parsed and validated, then turned into every model's inputs.

``parse_request`` validates the guide's JSON (``trademl.predict.schema``); ``request_inputs``
turns it into one ``ModelInputs`` for every kind: the feature row of the decision bar, the
feature history (a ``sequence`` as sent, or the features computed from raw ``bars`` with the
training code, cut to the last segment) and the account the bot reported. Anything
malformed is a ``RequestError`` naming the field, never a silent HOLD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from trademl.errors import TradeMLError
from trademl.market.broker import RECENT_ACTIONS, AccountState
from trademl.models.base import ModelInputs
from trademl.predict.schema import PredictRequest, describe_validation_error


class RequestError(TradeMLError):
    """A prediction request that cannot be answered as sent; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None, kind: str = "validation", detail=None):
        super().__init__(message, where=field)
        self.field = field
        self.kind = kind
        self.detail = detail

    def to_json(self) -> dict:
        out = {"error": {"message": str(self), "field": self.field, "kind": self.kind}}
        if self.detail:
            out["detail"] = self.detail
        return out


def parse_request(market_data) -> PredictRequest:
    """A dict (the guide's market_data) or a PredictRequest -> a validated PredictRequest."""
    from pydantic import ValidationError

    if isinstance(market_data, PredictRequest):
        return market_data
    if not isinstance(market_data, dict):
        raise RequestError(f"the request must be a JSON object, got {type(market_data).__name__}", field="body")
    market_data = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in market_data.items()}
    try:
        return PredictRequest.model_validate(market_data)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        message, where = describe_validation_error(errors)
        raise RequestError(message, field=where, detail=errors) from None


def parse_json_body(data: bytes | str, max_bytes: int):
    """Bytes of one request -> the decoded JSON value, or RequestError (too large, not JSON).

    NaN and Infinity are decoded (as FastAPI does) so that validation rejects them naming
    the field they are in, rather than as an anonymous syntax error.
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise RequestError(f"request is larger than {max_bytes} bytes", field="body", kind="too_large")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"request is not valid JSON: {e}", field="body", kind="not_json") from None


def iso_utc(dt: datetime) -> str:
    """2024-01-01T12:00:00Z, the guide's stamp format."""
    text = dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    return text + "Z"


@dataclass
class RequestInputs:
    """What a request gives the models, and what the response needs besides their outputs."""

    inputs: ModelInputs
    timestamp: str
    symbol: str
    side: int  # +1 long, -1 short: which side the win probabilities are asked for
    warnings: list[str] = field(default_factory=list)


def request_inputs(request: PredictRequest, feature_names: list[str], config, *, model_symbol: str | None = None,
                   min_history: int = 1) -> RequestInputs:
    """The request as ``ModelInputs`` for the models reading ``feature_names``."""
    from trademl.market.contracts import contract_spec, root_of

    symbol = request.symbol or model_symbol or config.data.symbol
    try:
        spec = contract_spec(symbol)
    except TradeMLError as e:
        raise RequestError(e.message + (f" ({e.hint})" if e.hint else ""), field="symbol") from None
    warnings = []
    if model_symbol and root_of(model_symbol) != spec.root:
        warnings.append(f"the models were trained on {model_symbol}; this request is {symbol}")
    limit = config.account.max_position_size
    if abs(request.position) > limit:
        raise RequestError(f"position {request.position} is beyond max_position_size {limit}", field="position")
    if request.bars is not None:
        row, seq, stamp = _from_bars(request, spec.root, feature_names, config, warnings)
    else:
        seq = _sequence_matrix(request.sequence, feature_names, min_history)
        row = _feature_row(request.features, feature_names, warnings) if request.features is not None else None
        stamp = None
    if request.timestamp is not None:
        stamp = iso_utc(request.timestamp)
    elif stamp is None:
        stamp = iso_utc(datetime.now(timezone.utc))
    inputs = ModelInputs(seq, [len(seq) - 1] if seq is not None else [0], rows=None if row is None else row[None],
                         account=_account(request, config))
    return RequestInputs(inputs, stamp, symbol, 1 if request.side == "long" else -1, warnings)


def _account(request: PredictRequest, config) -> AccountState:
    """The account the bot reported; a missing balance is the configured initial balance."""
    recent = [0] * (RECENT_ACTIONS - len(request.recent_actions)) + list(request.recent_actions)
    balance = config.account.initial_balance if request.balance is None else request.balance
    return AccountState(np.array([float(request.position)]), np.array([float(balance)]),
                        np.array([float(request.unrealized_pnl)]), np.array([recent], dtype=np.int64))


def _from_bars(request, root: str, names: list[str], config, warnings: list[str]):
    """(feature row of the last bar, the last segment's feature rows, the last bar's stamp)."""
    from trademl.predict.features_online import features_from_bars

    try:
        online = features_from_bars(request.bars, symbol=root, feature_names=names,
                                    max_gap_minutes=config.data.max_gap_minutes)
    except TradeMLError as e:
        raise RequestError(e.message, field=e.where if (e.where or "").startswith("bars") else "bars") from None
    in_segment = online.rows_in_last_segment()
    seq = online.matrix[len(online.matrix) - in_segment:]
    warming = [n for n, v in zip(names, online.matrix[-1]) if not np.isfinite(v)]
    if warming:
        warnings.append(f"{len(warming)} of {len(names)} features of the last bar are still warming up "
                        f"(send more bars): {', '.join(warming[:5])}{' ...' if len(warming) > 5 else ''}")
    return online.matrix[-1], seq, iso_utc(request.bars[-1].timestamp)


def _feature_row(features, names: list[str], warnings: list[str]) -> np.ndarray:
    width = len(names)
    if isinstance(features, list):
        if len(features) != width:
            raise RequestError(f"features has {len(features)} values; the models read {width} (in schema order, see GET /v1/models)", field="features")
        return np.array([np.nan if v is None else v for v in features], dtype=np.float32)
    unknown = [k for k in features if k not in set(names)]
    if unknown:
        raise RequestError(f"unknown features {unknown[:5]}; the models read {width} features (GET /v1/models lists them)",
                           field=f"features.{unknown[0]}")
    row = np.full(width, np.nan, dtype=np.float32)
    index = {n: i for i, n in enumerate(names)}
    for k, v in features.items():
        if v is not None:
            row[index[k]] = v
    missing = [n for n, v in zip(names, row) if not np.isfinite(v)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.append(f"{len(missing)} of {width} features missing, treated as missing values by LightGBM: {shown}")
    return row


def _sequence_matrix(sequence, names: list[str], needed: int) -> np.ndarray | None:
    if sequence is None:
        return None
    width = len(names)
    if isinstance(sequence[0], dict):
        keys = list(sequence[0])
        if set(keys) != set(names):
            missing = [n for n in names if n not in keys]
            extra = [k for k in keys if k not in names]
            raise RequestError(f"sequence rows must name every feature: missing {missing[:5]}, unknown {extra[:5]}",
                               field="sequence[0]")
        seq = np.array([[row[n] for n in names] for row in sequence], dtype=np.float32)
    else:
        if len(sequence[0]) != width:
            raise RequestError(f"sequence rows have {len(sequence[0])} values; the models read {width}", field="sequence[0]")
        seq = np.asarray(sequence, dtype=np.float32)
    if len(seq) < needed:
        raise RequestError(f"sequence has {len(seq)} rows; the models need {needed} (the last {needed} are used when more are sent)",
                           field="sequence")
    return seq
