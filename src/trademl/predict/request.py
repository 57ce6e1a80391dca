"""A prediction request: parsed and validated, then turned into every model's inputs.

``parse_request`` validates the guide's JSON (``trademl.predict.schema``); ``request_inputs``
turns it into one ``ModelInputs`` for every kind: the feature row of the decision bar, the
feature history (a ``sequence`` as sent, or the features computed from raw ``bars`` with the
training code, cut to the last segment) and the account the bot reported. Anything
malformed is a ``RequestError`` naming the field, never a silent HOLD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from trademl.errors import TradeMLError
from trademl.market.broker import RECENT_ACTIONS, AccountState
from trademl.models.base import ModelInputs
from trademl.predict.schema import BarsPush, PredictRequest, describe_validation_error

# Bars whose lows and highs lie further apart than this many ticks are refused: the volume
# profile's histogram is sized by that range (one bar priced 4e9..1e308 asked for TiBs).
# 100,000 ticks is 25,000 points of NQ or ES, more than the index itself moves in years.
MAX_PRICE_RANGE_TICKS = 100_000


class RequestError(TradeMLError):
    """A prediction request that cannot be answered as sent; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None, kind: str = "validation", detail=None):
        super().__init__(message, where=field)
        self.field = field
        self.kind = kind
        self.detail = detail
        self.predictor_logged = False  # the server logs it unless the predictor already did

    def to_json(self) -> dict:
        out = {"error": {"message": str(self), "field": self.field, "kind": self.kind}}
        if self.detail:
            out["detail"] = self.detail
        return out


def parse_request(market_data) -> PredictRequest:
    """A dict (the guide's market_data) or a PredictRequest -> a validated PredictRequest."""
    return _validated(PredictRequest, market_data)


def parse_push(market_data) -> BarsPush:
    """A dict or a BarsPush (the bar stream's call) -> a validated BarsPush."""
    return _validated(BarsPush, market_data)


def _validated(model, market_data):
    from pydantic import ValidationError

    if isinstance(market_data, model):
        return market_data
    if not isinstance(market_data, dict):
        raise RequestError(f"the request must be a JSON object, got {type(market_data).__name__}", field="body")
    market_data = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in market_data.items()}
    try:
        return model.model_validate(market_data)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        message, where = describe_validation_error(errors)
        raise RequestError(message, field=where, detail=errors) from None


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
    spec: object = None  # the ContractSpec prices are read with: the models' own when it is their instrument


def request_inputs(request: PredictRequest, feature_names: list[str], config, *, model_symbol: str | None = None,
                   min_history: int = 1, model_contract: dict | None = None, streamed=None) -> RequestInputs:
    """The request as ``ModelInputs`` for the models reading ``feature_names``. ``model_contract``: the
    spec stored with the models (their manifest's ``contract``), used for a request of their instrument.
    ``streamed``: (OnlineFeatures, bars seen) of the symbol's bar stream (``trademl.predict.stream``),
    used instead of computing the features of ``request.bars`` (the bars the stream just took)."""
    from trademl.market.contracts import root_of

    symbol = request.symbol or model_symbol or config.data.symbol
    spec = request_spec(symbol, model_contract, config)
    symbol = symbol or spec.root
    warnings = []
    if request._naive_as_utc:
        warnings.append("bar timestamps without an offset were read as UTC (give `timezone` if they are local)")
    if model_symbol and root_of(model_symbol) != spec.root:
        warnings.append(f"the models were trained on {model_symbol}; this request is {symbol}")
    limit = config.account.max_position_size
    if abs(request.position) > limit:
        raise RequestError(f"position {request.position} is beyond max_position_size {limit}", field="position")
    if request.bars is not None:
        check_price_range(request.bars, spec.tick_size)
        online, sent = streamed if streamed is not None else (_features_of_bars(request, spec, feature_names, config),
                                                              len(request.bars))
        row, seq, stamp = _rows_of(online, feature_names, sent, warnings)
    else:
        seq = _sequence_matrix(request, feature_names, min_history)
        row = _feature_row(request.features, feature_names, warnings) if request.features is not None else None
        stamp = None
    if request.timestamp is not None:
        stamp = iso_utc(request.timestamp)
    elif stamp is None:
        stamp = iso_utc(datetime.now(timezone.utc))
    inputs = ModelInputs(seq, [len(seq) - 1] if seq is not None else [0], rows=None if row is None else row[None],
                         account=_account(request, config))
    return RequestInputs(inputs, stamp, symbol, 1 if request.side == "long" else -1, warnings, spec)


def request_spec(symbol: str | None, model_contract: dict | None, config):
    """The models' stored spec when the request is for their instrument (or names none), else the symbol's."""
    from trademl.market.contracts import ContractSpec, contract_spec, root_of

    if model_contract and (not symbol or root_of(symbol, {model_contract["root"]}) == model_contract["root"]):
        return ContractSpec.from_dict(model_contract)
    try:
        return contract_spec(symbol, config=config)
    except TradeMLError as e:
        raise RequestError(e.message + (f" ({e.hint})" if e.hint else ""), field="symbol") from None


def _account(request: PredictRequest, config) -> AccountState:
    """The account the bot reported; a missing balance is the prop account's (``account.balance``),
    else the configured initial balance."""
    recent = [0] * (RECENT_ACTIONS - len(request.recent_actions)) + list(request.recent_actions)
    balance = request.balance
    if balance is None:
        balance = config.account.initial_balance if request.account is None else request.account.balance
    return AccountState(np.array([float(request.position)]), np.array([float(balance)]),
                        np.array([float(request.unrealized_pnl)]), np.array([recent], dtype=np.int64),
                        _room(request.account, request.unrealized_pnl))


def _room(account, unrealized_pnl: float) -> np.ndarray | None:
    """[1, 2] room to the account's limits (an agent trained under rules observes it), or None."""
    if account is None:
        return None
    from trademl.risk.limits import reported_balances, room_shares
    from trademl.risk.rules import rules_for

    sod, peak = reported_balances(account)
    return room_shares(rules_for(account.rules), account.balance + unrealized_pnl, sod, peak)[None]


def _features_of_bars(request, spec, names: list[str], config):
    """The OnlineFeatures of the request's raw bars, computed with the training code."""
    from trademl.predict.features_online import features_from_bars

    try:
        return features_from_bars(request.bars, symbol=spec.root, feature_names=names, contract=spec.to_dict(),
                                  max_gap_minutes=config.data.max_gap_minutes, context_bars=request.context_bars)
    except TradeMLError as e:
        field = e.where if (e.where or "").startswith(("bars", "context_bars")) else "bars"
        raise RequestError(e.message + (f" ({e.hint})" if e.hint else ""), field=field) from None


def _rows_of(online, names: list[str], sent: int, warnings: list[str]):
    """(feature row of the last bar, the last segment's feature rows, the last bar's stamp) of
    features computed from ``sent`` bars, with the warnings a short history deserves."""
    in_segment = online.rows_in_last_segment()
    seq = online.matrix[len(online.matrix) - in_segment:]
    warming = [n for n, v in zip(names, online.matrix[-1]) if not np.isfinite(v)]
    if warming:
        warnings.append(f"{len(warming)} of {len(names)} features of the last bar are still warming up "
                        f"(send more bars): {', '.join(warming[:5])}{' ...' if len(warming) > 5 else ''}")
    short = _short_of_history(names, sent, online.matrix[-1])
    if short:
        warnings.append(f"{len(short)} features read earlier days and may differ from training with "
                        f"{sent} bars (send {max(short.values())}): {', '.join(list(short)[:5])}")
    return online.matrix[-1], seq, iso_utc(datetime.fromisoformat(online.last_timestamp))


def _short_of_history(names: list[str], sent: int, last_row: np.ndarray) -> dict[str, int]:
    """{feature: bars it needs} of the features that read earlier trading days (yesterday's levels,
    the regime) and got a value from fewer bars than that: the first day sent may be partial, so
    the value may differ from the batch one without being NaN."""
    from trademl.data.features import FEATURES

    return {n: FEATURES[n].history for n, v in zip(names, last_row)
            if n in FEATURES and FEATURES[n].crosses_segments and sent < FEATURES[n].history and np.isfinite(v)}


def check_price_range(bars, tick: float) -> None:
    """Refuse bars whose price range would size the volume profile beyond MAX_PRICE_RANGE_TICKS."""
    lows = [b.low for b in bars]
    highs = [b.high for b in bars]
    lo, hi = min(lows), max(highs)
    if (hi - lo) / tick > MAX_PRICE_RANGE_TICKS:
        i = max(range(len(bars)), key=lambda k: max(highs[k] - lo, hi - lows[k]))
        raise RequestError(f"the bars span {lo:g}..{hi:g}, more than {MAX_PRICE_RANGE_TICKS} ticks of {tick:g}: "
                           f"not one instrument's prices", field=f"bars[{i}]")


def _as_float32(values, field_of) -> np.ndarray:
    """float32 array of ``values``; a value beyond float32's range is an error naming it, not inf."""
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float32)
    if np.isinf(out).any():
        where = tuple(int(i) for i in np.argwhere(np.isinf(out))[0])
        raise RequestError(f"{field_of(where)}: beyond the float32 range the models read (|x| <= 3.4e38)",
                           field=field_of(where))
    return out


def _feature_row(features, names: list[str], warnings: list[str]) -> np.ndarray:
    width = len(names)
    if isinstance(features, list):
        if len(features) != width:
            raise RequestError(f"features has {len(features)} values; the models read {width} (in schema order, see GET /v1/models)", field="features")
        return _as_float32([np.nan if v is None else v for v in features], lambda w: f"features[{w[0]}]")
    index = {n: i for i, n in enumerate(names)}
    unknown = [k for k in features if k not in index]
    if unknown:
        raise RequestError(f"unknown features {unknown[:5]}; the models read {width} features (GET /v1/models lists them)",
                           field=f"features.{unknown[0]}")
    row = np.full(width, np.nan)
    for k, v in features.items():
        if v is not None:
            row[index[k]] = v
    row = _as_float32(row, lambda w: f"features.{names[w[0]]}")
    missing = [names[i] for i in np.flatnonzero(~np.isfinite(row))]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.append(f"{len(missing)} of {width} features missing, treated as missing values by LightGBM: {shown}")
    return row


def sequence_values(request: PredictRequest) -> np.ndarray:
    """A sequence of value rows (not of {name: value} rows) as float64 [rows, cols], converted once
    per request: the models read it, and so does the prediction log's digest (the conversion of
    2,400 Python floats is most of either's cost)."""
    if request._sequence64 is None:
        request._sequence64 = np.asarray(request.sequence, dtype=np.float64)
    return request._sequence64


def _sequence_matrix(request: PredictRequest, names: list[str], needed: int) -> np.ndarray | None:
    sequence = request.sequence
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
        seq = _as_float32([[row[n] for n in names] for row in sequence], lambda w: f"sequence[{w[0]}].{names[w[1]]}")
    else:
        if len(sequence[0]) != width:
            raise RequestError(f"sequence rows have {len(sequence[0])} values; the models read {width}", field="sequence[0]")
        seq = _as_float32(sequence_values(request), lambda w: f"sequence[{w[0]}][{w[1]}]")
    if len(seq) < needed:
        raise RequestError(f"sequence has {len(seq)} rows; the models need {needed} (the last {needed} are used when more are sent)",
                           field="sequence")
    return seq
