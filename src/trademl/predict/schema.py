"""The prediction request and response: the guide's JSON, validated field by field.

A request carries either the guide's snapshot (``features`` as a dict or an array in
schema order, ``sequence`` of feature rows, position, balance, unrealized_pnl,
recent_actions, symbol, timestamp) or ``bars``: the last raw bars, from which the
predictor computes every model's input with the training code. Anything malformed is a
validation error naming the field: never a silent HOLD.

The response has exactly the guide's fields plus ``warnings`` and ``model_versions``;
the fields of a model that did not run are left out (``exclude_none``).
"""

# No `from __future__ import annotations` here: pydantic would compile every field's annotation
# string when the models are built, a cost each cold `trademl predict` pays (issue 17).

import math
from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, StrictInt, field_validator, model_validator

RECENT_ACTIONS = 10  # the guide's TradingState: the last 10 actions
MAX_BARS = 5_000
MAX_SEQUENCE_ROWS = 5_000
MAX_BATCH = 256
# Stamps the whole chain can hold: pandas' nanosecond times end in 2262, and a logged stamp
# outside them would stop `trademl monitor`; nothing before the Unix epoch is market data here.
MIN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TIME = datetime(2200, 1, 1, tzinfo=timezone.utc)
# The models read float32: a larger magnitude would silently become inf ("missing").
FLOAT32_MAX = 3.4028234663852886e38

# JSON numbers only (strict: no strings, no booleans) and finite: NaN/inf would poison every
# model. Validated by pydantic-core natively: a 60 x 40 sequence costs ~30 us, not ~2 ms.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
OptionalNumber = Union[Number, None]


def utc_in_range(v: datetime) -> datetime:
    """A stamp as UTC (no offset = UTC, like the bar loader), within [MIN_TIME, MAX_TIME)."""
    if v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    try:
        v = v.astimezone(timezone.utc)
    except OverflowError:  # year 1 at +05:00, year 9999 at -05:00: no such UTC time
        raise ValueError(f"time {v.isoformat()} is outside the supported range "
                         f"{MIN_TIME.year}..{MAX_TIME.year - 1} (UTC)") from None
    if not MIN_TIME <= v < MAX_TIME:
        raise ValueError(f"time {v.isoformat()} is outside the supported range {MIN_TIME.year}..{MAX_TIME.year - 1} (UTC)")
    return v


def _localized(stamps: list[datetime], zone: str | None) -> list[datetime]:
    """Naive stamps in ``zone`` (None: UTC) -> UTC datetimes, through the bar loader's rule."""
    import numpy as np
    import pandas as pd

    from trademl.data.bars import parse_timestamps

    ns = parse_timestamps(pd.Series(pd.DatetimeIndex(stamps)), tz=zone)
    bad = np.flatnonzero(ns == np.iinfo(np.int64).min)
    if len(bad):
        raise ValueError(f"bar timestamp {stamps[bad[0]].isoformat()} is not a valid local time in {zone}")
    return [utc_in_range(t.to_pydatetime()) for t in pd.DatetimeIndex(ns, tz="UTC")]


def check_float32(value, name: str) -> None:
    """A finite number the models can read as float32, or ValueError naming it."""
    if value is not None and not -FLOAT32_MAX <= value <= FLOAT32_MAX:
        raise ValueError(f"{name + ' ' if name else ''}{value!r} is beyond the float32 range the models read (|x| <= 3.4e38)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Bar(BaseModel):
    """One raw bar. Extra numeric fields are exogenous feature columns (e.g. ``edge``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    timestamp: datetime
    _naive: bool = PrivateAttr(default=False)  # sent without an offset (read in the request's timezone)
    open: PositiveNumber
    high: PositiveNumber
    low: PositiveNumber
    close: PositiveNumber
    volume: NonNegativeNumber | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        # a naive stamp stays naive here: the request's `timezone` says what it is (PredictRequest)
        return v if v.tzinfo is None else utc_in_range(v)

    @model_validator(mode="after")
    def _consistent(self) -> "Bar":
        for name in ("open", "high", "low", "close", "volume"):
            check_float32(getattr(self, name), name)  # a bar-level error: name the price
        if self.high < max(self.open, self.close) or self.low > min(self.open, self.close):
            raise ValueError(
                f"high {self.high} / low {self.low} are inconsistent with open {self.open} and close {self.close}"
            )
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"extra bar field {name!r} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"extra bar field {name!r} must be a finite number")
            check_float32(value, f"extra bar field {name!r}")
        return self


class AccountSnapshot(_Strict):
    """The prop-firm account the bot trades (trademl.risk): the response gains a ``risk`` block."""

    rules: str = Field(description="account rules preset: topstep-50k, topstep-100k or topstep-150k")
    balance: PositiveNumber = Field(description="account balance now, realized P&L included, dollars")
    start_of_day_balance: PositiveNumber | None = Field(default=None, description="balance at the start of the "
                                                        "trading day (17:00 CT); default: balance")
    peak_eod_balance: PositiveNumber | None = Field(default=None, description="highest end-of-day balance so far "
                                                    "(what the trailing threshold follows); default: the day's start")
    open_contracts: StrictInt = Field(default=0, ge=-1000, le=1000, description="contracts open now, + long / - short")

    @field_validator("rules")
    @classmethod
    def _known(cls, v: str) -> str:
        from trademl.risk.rules import PRESETS

        if v.lower() not in PRESETS:
            raise ValueError(f"unknown account rules {v[:40]!r}; presets are {', '.join(PRESETS)}")
        return v.lower()

    @field_validator("balance", "start_of_day_balance", "peak_eod_balance")
    @classmethod
    def _float32(cls, v):
        check_float32(v, "")
        return v


class PredictRequest(_Strict):
    symbol: str | None = Field(default=None, min_length=1, max_length=16, description="e.g. NQZ5; default: the models' symbol")
    timestamp: datetime | None = Field(default=None, description="echoed in the output; default: the last bar's or now")
    features: dict[str, OptionalNumber] | list[OptionalNumber] | None = Field(
        default=None, description="features of the last bar: {name: value} or an array in schema order; null = missing"
    )
    sequence: list[list[Number]] | list[dict[str, Number]] | None = Field(
        default=None,
        description="feature rows, oldest first, the last one being the current bar (LSTM and PPO input)",
    )
    # before `bars`: the bars' validator reads it
    timezone: str | None = Field(default=None, min_length=1, max_length=64, description=(
        "zone of bar timestamps without an offset, e.g. America/New_York (as `--tz`); default: UTC, with a warning"))
    bars: list[Bar] | None = Field(
        default=None, min_length=1, max_length=MAX_BARS,
        description="the last raw bars, oldest first: features are computed from them with the training code",
    )
    context_bars: list[Bar] | None = Field(
        default=None, min_length=1, max_length=MAX_BARS,
        description="another instrument's last raw bars (models built with --context): its aligned returns, "
                    "relative strength, correlation and beta are computed from them as in training",
    )
    position: StrictInt = Field(default=0, ge=-1000, le=1000, description="contracts held, + long / - short")
    balance: Number | None = Field(default=None, description="account balance; default: [account] initial_balance")
    unrealized_pnl: Number = 0.0
    recent_actions: list[Literal[0, 1, 2]] = Field(
        default_factory=list, max_length=RECENT_ACTIONS,
        description="the last actions (0 hold, 1 buy, 2 sell), oldest first; fewer than 10 are padded with holds",
    )
    side: Literal["long", "short"] = Field(default="long", description="the side win_5m_prob / win_30m_prob are about")
    account: AccountSnapshot | None = Field(default=None, description="the prop-firm account: adds `risk` to the answer")
    _naive_as_utc: bool = PrivateAttr(default=False)  # bars had naive stamps and no timezone: warned
    _sequence64: object = PrivateAttr(default=None)  # trademl.predict.request.sequence_values, converted once

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else utc_in_range(v)

    @field_validator("recent_actions", mode="before")
    @classmethod
    def _codes_not_booleans(cls, v):
        # JSON true and 1.0 both equal 1 to a Literal[0, 1, 2]; an action code is an integer.
        if isinstance(v, list):
            for i, code in enumerate(v):
                if isinstance(code, (bool, float)):  # true, or 1.0: a code is an integer
                    shown = str(code).lower() if isinstance(code, bool) else repr(code)
                    raise ValueError(f"item {i} is {shown}; action codes are the integers 0, 1, 2")
        return v

    @field_validator("balance", "unrealized_pnl")
    @classmethod
    def _float32(cls, v, info):
        check_float32(v, "")
        return v

    @field_validator("sequence")
    @classmethod
    def _rectangular(cls, v):
        if v is None or not v:
            if v is not None:
                raise ValueError("sequence is empty")
            return v
        if len(v) > MAX_SEQUENCE_ROWS:
            raise ValueError(f"sequence has {len(v)} rows; at most {MAX_SEQUENCE_ROWS} are accepted")
        widths = {len(row) for row in v}
        if len(widths) > 1:
            raise ValueError(f"sequence rows have different lengths {sorted(widths)}")
        if isinstance(v[0], dict) and len({tuple(row) for row in v}) > 1:
            raise ValueError("sequence rows name different features")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        from trademl.data.bars import check_tz
        from trademl.errors import TradeMLError

        try:
            check_tz(v)
        except TradeMLError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return v

    @field_validator("bars", "context_bars")
    @classmethod
    def _bars_in_utc(cls, v, info):
        """Naive bar stamps read in ``timezone`` (the bar loader's rule: DST gap refused, repeated
        hour by order), else as UTC; then the bars must be in time order."""
        if v is None or "timezone" not in info.data:  # a bad timezone is its own error
            return v
        naive = [i for i, b in enumerate(v) if b.timestamp.tzinfo is None]
        if naive:  # pandas' parsing costs milliseconds: only for stamps that need it
            for i, stamp in zip(naive, _localized([v[i].timestamp for i in naive], info.data["timezone"])):
                v[i].timestamp, v[i]._naive = stamp, True
        for i in range(1, len(v)):
            if v[i].timestamp <= v[i - 1].timestamp:
                raise ValueError(f"bar {i} timestamp {v[i].timestamp.isoformat()} is not after bar {i - 1}'s")
        return v

    @model_validator(mode="after")
    def _naive_warned(self) -> "PredictRequest":
        self._naive_as_utc = self.timezone is None and any(b._naive for b in (self.bars or []) + (self.context_bars or []))
        return self

    @model_validator(mode="after")
    def _one_source(self) -> "PredictRequest":
        if self.bars is not None and (self.features is not None or self.sequence is not None):
            raise ValueError("give either `bars` or `features`/`sequence`, not both")
        if self.context_bars is not None and self.bars is None:
            raise ValueError("`context_bars` go with `bars`: the cross-market features are computed from both")
        if self.bars is None and self.features is None and self.sequence is None:
            raise ValueError("no model input: give `bars` or `features` (and `sequence` for the LSTM and PPO)")
        return self


class BarsPush(PredictRequest):
    """The bar stream's call (POST /v1/bars): the symbol's newest closed bar(s), oldest first, and
    the account as in /v1/predict. The first call may carry history to warm the state up; bars the
    stream already took may be sent again and change nothing."""

    symbol: str = Field(min_length=1, max_length=16, description="the stream's instrument, e.g. ESZ5")
    bars: list[Bar] = Field(min_length=1, max_length=MAX_BARS, description=(
        "closed bars, oldest first: the first call may carry history, later ones the newest bar"))


class BatchRequest(_Strict):
    requests: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Response(BaseModel):
    """What the service answers: these models validate nothing on the predict path (the predictor
    builds plain dicts), they describe it to OpenAPI and the tests. Their validators are built on
    first use, not at import: a cold `trademl predict` never needs them (issue 17)."""

    model_config = ConfigDict(defer_build=True)


class RiskResponse(_Response):
    """What the account's rules allow for this trade (trademl.risk.advice)."""

    model_config = ConfigDict(extra="forbid")

    rules: str
    max_contracts_allowed: int
    suggested_contracts: int
    stop_price: float | None = None
    target_price: float | None = None
    loss_to_breach: dict[str, float | None]
    var_95: float | None = None
    var_source: str | None = None  # "lstm_risk_head" or "atr"
    blocked: bool
    reason: str | None = None


class NoveltyResponse(_Response):
    """How unlike the training inputs this request's features are (trademl.models.novelty)."""

    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=0.0, description="Dissimilarity Index: nearest training row's distance / their mean distance.")
    threshold: float = Field(gt=0.0, description="The score of the 99th percentile of held-out training rows.")
    off_tick_grid: bool = Field(False, description=(
        "The close is not a whole number of the training instrument's ticks: another instrument's price."))
    novel: bool = Field(description=(
        "score > threshold or off_tick_grid: the models extrapolate (see [serve] novelty_action)."))


class ModelVote(_Response):
    """One model's vote over (hold, buy, sell)."""

    hold: Probability
    buy: Probability
    sell: Probability


class PredictResponse(_Response):
    """Exactly the guide's fields, plus warnings and model_versions. Absent = that model did not run."""

    model_config = ConfigDict(extra="forbid")

    timestamp: str
    models_used: list[str]
    win_5m_prob: Probability | None = None
    win_30m_prob: Probability | None = None
    lstm_buy_prob: Probability | None = None
    lstm_sell_prob: Probability | None = None
    lstm_hold_prob: Probability | None = None
    lstm_expected_movement: float | None = None
    lstm_risk_score: Probability | None = None
    ppo_buy_prob: Probability | None = None
    ppo_sell_prob: Probability | None = None
    ppo_hold_prob: Probability | None = None
    ppo_state_value: float | None = None
    ensemble_recommendation: Literal["BUY", "SELL", "HOLD"]
    confidence_score: Probability = Field(description=(
        "With the stacker: the calibrated probability that the recommended trade (entered at the next open, "
        "closed [ensemble] horizon bars later) wins after costs; for HOLD, that neither side would have. "
        "Without it (see warnings): the models' weighted vote, not a probability."))
    p_win_long: Probability | None = Field(None, description="Calibrated probability that a long wins after costs.")
    p_win_short: Probability | None = Field(None, description="Calibrated probability that a short wins after costs.")
    expected_pnl: float | None = Field(None, description=(
        "Expected P&L of the recommended trade, dollars per contract after costs (0 for HOLD)."))
    suggested_contracts: int | None = Field(None, ge=0, description=(
        "Bet size: Lopez de Prado's 2*Phi(z)-1 of the probability times max_position_size (0 for HOLD); with "
        "an account, never above the risk block's size."))
    threshold: Probability | None = Field(None, description=(
        "The win probability a BUY or SELL had to clear (confidence_threshold, or the stacker's auto one)."))
    votes: dict[str, ModelVote] = Field(default_factory=dict, description="What each model that ran said.")
    warnings: list[str] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(default_factory=dict)
    risk: RiskResponse | None = None
    novelty: NoveltyResponse | None = None


class BatchResponse(_Response):
    predictions: list[PredictResponse]


class ErrorDetail(_Response):
    message: str
    field: str | None = None
    kind: str = "validation"


class ErrorResponse(_Response):
    """What every failed request gets: one message naming the field, plus pydantic's list when there is one."""

    error: ErrorDetail
    detail: list[dict] | None = None


def field_path(loc) -> str:
    """pydantic's ('features', 'rsi') -> 'features.rsi'; list positions -> [3]; union branch names dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[...]", "dict[...]") or "[" in str(part) or part in ("function-after", "int", "float"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


# Errors a union branch raises only because the value has the other branch's shape.
_BRANCH_MISMATCH = {"dict_type", "list_type", "none_required", "model_type", "is_instance_of"}


def describe_validation_error(errors: list[dict]) -> tuple[str, str]:
    """(message, field) of the most telling problem, readable by a person."""
    telling = [e for e in errors if e.get("type") not in _BRANCH_MISMATCH] or errors
    first = telling[0]
    field = field_path([p for p in first.get("loc", ()) if p != "body"])
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    others = len({field_path(e.get("loc", ())) for e in telling}) - 1
    more = f" (and {others} more problems)" if others > 0 else ""
    return f"{field}: {msg}{more}", field
