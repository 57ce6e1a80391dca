"""EnsemblePredictor: one request -> every loaded model -> the decision -> the guide's JSON.

The models run through their torch-free, lightgbm-free runtimes (ONNX Runtime + numpy),
loaded from the model store (``trademl.predict.loader``). Each one predicts on the same
``ModelInputs`` (``trademl.predict.request``); a model that is missing, failed to load, or
lacks an input of this request is skipped and ``warnings`` says why, the others still vote.
The stacker (``trademl.models.stacker``), when the store has one fitted on the loaded
versions, turns their votes into calibrated win probabilities and the decision; else their
votes go through ``trademl.predict.decision.decide``. Both are what the walk-forward backtest
calls too. A request nobody can answer, or a malformed one, raises ``RequestError``
naming the field: never a silent HOLD.
"""

from __future__ import annotations

import re
import time

import numpy as np

from trademl.errors import ModelStoreError, TradeMLError
from trademl.market.actions import ACTION_NAMES
from trademl.models.base import ModelInputs, Votes
from trademl.models.stacker import NO_EDGE
from trademl.predict.decision import decide
from trademl.predict.expiry import expiry_warnings
from trademl.predict.loader import LoadedModels, ModelLoader
from trademl.predict.request import RequestError, parse_request, request_inputs
from trademl.predict.schema import PredictRequest


class EnsemblePredictor:
    """The guide's ``EnsemblePredictor().ensemble_predict(market_data)``.

    ``recorder`` receives every answered and failed request (``PredictionRecorder`` by
    default, writing into [paths] log_dir; ``record=False`` for none).
    """

    def __init__(self, model_root=None, config=None, *, record: bool = True, log_dir=None,
                 reload_interval_s: float | None = None, recorder=None):
        from trademl.config import resolve_config
        from trademl.models.store import ModelStore

        self.config = resolve_config(config)
        self.store = ModelStore(model_root or self.config.paths.model_root)
        interval = self.config.serve.reload_interval_s if reload_interval_s is None else reload_interval_s
        self.loader = ModelLoader(self.store, self.config, interval)
        if recorder is None and record:
            from trademl.predict.recorder import PredictionRecorder

            recorder = PredictionRecorder(log_dir or self.config.paths.log_dir)
        self.recorder = recorder
        from trademl.predict.stream import BarStreams

        self.streams = BarStreams(self.config.serve.max_streams)  # the bar stream's per-symbol state (push_bars)

    @property
    def models(self) -> LoadedModels:
        return self.loader.models

    def maybe_reload(self, force: bool = False, wait: bool = False) -> bool:
        return self.loader.maybe_reload(force, wait)

    def describe(self) -> dict:
        m = self.models
        return {
            "models": {k: {"version": v, "weight": m.weights.get(k)} for k, v in m.versions.items()},
            "not_loaded": dict(m.load_errors),
            "weights_note": m.weight_warning,
            "stacker": ({"version": m.stacker.version, "kinds": m.stacker.kinds, "horizon": m.stacker.horizon,
                         "threshold_auto": m.stacker.threshold_auto, "fitted_on": m.stacker.base_versions}
                        if m.stacker is not None else None),
            "stacker_note": m.stacker_note,
            "feature_names": m.feature_names,
            "sequence_length": m.history,  # rows a `sequence` must carry for every model to run
            "history": {k: rt.history for k, rt in m.runtimes.items()},
            "bars_needed": m.bars_needed(),
            "symbol": m.symbol,
            "streams": self.streams.symbols(),  # bars seen per streamed symbol: {} after a restart
            "model_root": str(self.store.root),
        }

    def ensemble_predict(self, market_data) -> dict:
        """The guide's call: market snapshot (dict) -> the guide's prediction (dict)."""
        return self._recorded(market_data, self._predict)

    def push_bars(self, market_data) -> dict:
        """The bar stream (POST /v1/bars): ``{"symbol", "bars", ...the predict request's other
        fields}``; the symbol's state takes the bars it has not seen (``trademl.predict.stream``)
        and the answer is the prediction for its newest bar, as /v1/predict would give it with
        the whole history."""
        return self._recorded(market_data, self._push)

    def warm_stream(self, symbol: str, bars) -> int:
        """Rebuild a symbol's stream from a bars frame (``load_bars``; after a restart, before the bot's
        next call): its last ``bars_needed`` bars are taken as a first push would take them. The
        number of bars the stream has seen; a bad frame is a RequestError naming the bar."""
        from trademl.predict.request import parse_push

        models = self.models
        if not models.runtimes:
            raise ModelStoreError("no model is loaded: nothing to warm a stream for", where="model store")
        tail = bars.iloc[-(models.bars_needed() or models.history):]
        columns = [c for c in ("open", "high", "low", "close", "volume") if c in tail.columns]
        columns += [c for c in models.feature_names if c in tail.columns and c not in columns]  # extra columns
        rows = [{"timestamp": ts.isoformat(), **dict(zip(columns, map(float, values)))}
                for ts, values in zip(tail.index, tail[columns].itertuples(index=False))]
        return self._take(parse_push({"symbol": symbol, "bars": rows}), models, [])[1]

    def drop_stream(self, symbol: str) -> bool:
        """Forget a symbol's stream state (DELETE /v1/bars/{symbol}); whether there was one."""
        return self.streams.drop(symbol.upper())

    def _predict(self, market_data):
        request = parse_request(market_data)
        self.maybe_reload()
        models = self.models
        return request, predict_with(models, request, self.config), models

    def _push(self, market_data):
        from trademl.predict.request import parse_push

        request = parse_push(market_data)
        self.maybe_reload()
        models = self.models
        if not models.runtimes:
            return request, predict_with(models, request, self.config), models  # its clear error
        notes: list[str] = []
        streamed = self._take(request, models, notes)
        output = predict_with(models, request, self.config, streamed=streamed)
        output["warnings"] = notes + output["warnings"]
        return request, output, models

    def _take(self, request, models, notes: list[str]):
        """The symbol's stream takes the push's new bars: (its OnlineFeatures, bars seen)."""
        from trademl.predict.request import check_price_range, request_spec
        from trademl.predict.stream import stream_key

        spec = request_spec(request.symbol, models.contract, self.config)
        check_price_range(request.bars, spec.tick_size)  # before the stream takes any of them
        symbol = request.symbol.upper()
        with self.streams.lock(symbol):
            stream = self.streams.stream(symbol, stream_key(models, spec, self.config), notes)
            stream.take(request.bars, request.context_bars)
            return stream.online(), stream.features.bars_seen

    def _recorded(self, market_data, answer) -> dict:
        """``answer(market_data)`` -> (request, output, models), with the request recorded either way."""
        started = time.perf_counter()
        try:
            request, output, models = answer(market_data)
        except TradeMLError as e:
            if self.recorder is not None:  # failed requests count in the monitor's errors by kind
                self.recorder.record_error(e, market_data, (time.perf_counter() - started) * 1000.0)
            raise
        except Exception as e:
            # A fault of ours (the server answers it 500): in the log as kind "internal", then raised
            # as it is. The recorder never raises, so it cannot hide this error behind its own.
            if self.recorder is not None:
                fault = RequestError(f"internal error: {type(e).__name__}", kind="internal")
                self.recorder.record_error(fault, market_data, (time.perf_counter() - started) * 1000.0)
            raise
        if self.recorder is not None:
            self.recorder.record(request, output, (time.perf_counter() - started) * 1000.0, models.feature_names)
        return output

    def predict_batch(self, requests: list) -> list[dict]:
        """Several snapshots; the first malformed one raises, naming its position."""
        parsed = []
        for i, r in enumerate(requests):
            try:
                parsed.append(parse_request(r))
            except RequestError as e:
                raise RequestError(e.message, field=f"requests[{i}].{e.field}", detail=e.detail) from None
        return [self.ensemble_predict(p) for p in parsed]


def _risk(request: PredictRequest, given, ran: dict, models: LoadedModels, recommendation: str, config,
          p_long: float | None = None, p_short: float | None = None) -> dict:
    """The ``risk`` block: the account's limits, a stop and target at ATR multiples, the size, and
    the VaR from the LSTM's risk head when it ran (else from the ATR). The size's win probability
    is the stacker's (``p_long`` / ``p_short``) when it decided, else the shortest LightGBM's."""
    names = models.feature_names
    from trademl.market.contracts import contract_spec
    from trademl.market.execution import ExecutionModel
    from trademl.risk.advice import advise

    spec = given.spec or contract_spec(given.symbol)  # the models' own spec for their instrument
    row = given.inputs.current_rows()
    value = (lambda name: float(row[-1][names.index(name)]) if row is not None and name in names
             and np.isfinite(row[-1][names.index(name)]) else None)
    atr_ticks = value("atr_ticks_14")
    p_win, horizon = None, 5
    side = 0 if recommendation == "BUY" else 1  # (long, short) pair order of the win fields
    wins = sorted((int(m.group(1)), v.outputs[key[side]][-1]) for v in ran.values() for field, key in v.fields.items()
                  if isinstance(key, tuple) and (m := re.fullmatch(r"win_(\d+)m_prob", field)))
    if p_long is not None and recommendation != "HOLD":
        horizon, p_win = models.stacker.horizon, (p_long, p_short)[side]
    elif wins and recommendation != "HOLD":
        horizon, p_win = wins[0][0], float(wins[0][1])  # the shortest horizon's calibrated probability
    cost = ExecutionModel.from_config(spec, config.costs, config.account.max_position_size).cost_per_contract
    lstm = ran.get("lstm")
    risk_head = None
    if lstm is not None and "risk" in lstm.outputs and np.isfinite(lstm.outputs["risk"][-1]):
        risk_head = (float(lstm.outputs["risk"][-1]), int(models.runtimes["lstm"].horizon))
    return advise(request.account, recommendation=recommendation, p_win=p_win, close=value("close"),
                  atr=None if atr_ticks is None else atr_ticks * spec.tick_size, unrealized_pnl=request.unrealized_pnl,
                  spec=spec, cost_per_contract=cost, horizon=horizon, risk_config=config.risk, risk_head=risk_head)


def _beside_flat_account(rt, inputs: ModelInputs):
    """(the kind's Votes on the request's account, its vote from a flat account): an agent that
    observes the account votes for the stacker from a flat one, as the stacker was fitted. One
    batch of both when the account has no room to its limits (the flat one has none either),
    else two calls."""
    import dataclasses

    from trademl.market.broker import AccountState

    flat = dataclasses.replace(inputs, account=None)
    account, n = inputs.account, len(inputs)
    if account.room is not None:
        return rt.predict(inputs), rt.predict(flat).vote
    fresh = AccountState.flat(n, rt.spec.initial_balance)  # what the agent reads when given no account
    both = dataclasses.replace(inputs, at=np.r_[inputs.at, inputs.at],
                               rows=None if inputs.rows is None else np.vstack([inputs.rows, inputs.rows]),
                               account=AccountState(*(np.concatenate([a, b]) for a, b in zip(
                                   (account.position, account.balance, account.unrealized_pnl, account.recent_actions),
                                   (fresh.position, fresh.balance, fresh.unrealized_pnl, fresh.recent_actions)))))
    v = rt.predict(both)
    mine = Votes(v.kind, v.vote[:n], {k: o[:n] for k, o in v.outputs.items()}, v.fields, v.reason)
    return mine, v.vote[n:]


def _stacked(out: dict, models: LoadedModels, given, votes: dict, config, warnings: list) -> float:
    """The stacker's decision (``trademl.models.stacker``) into ``out``: what the walk-forward
    trades too. ``votes`` holds the agents that observe an account as read from a flat one.
    Returns HOLD's confidence (the probability that neither side wins), for a blocked trade."""
    threshold = config.backtest.confidence_threshold
    d = models.stacker.decide({k: v[-1:] for k, v in votes.items()}, _last_row(given.inputs),
                              models.feature_names, threshold=None if threshold == "auto" else float(threshold),
                              max_contracts=config.account.max_position_size)
    out["ensemble_recommendation"] = ACTION_NAMES[int(d.action[0])]
    out["confidence_score"] = float(d.confidence[0])
    out["p_win_long"], out["p_win_short"] = float(d.p_long[0]), float(d.p_short[0])
    out["expected_pnl"] = float(d.expected_pnl[0])
    out["suggested_contracts"] = int(d.contracts[0])
    out["threshold"] = float(d.threshold)
    if threshold == "auto" and d.threshold >= NO_EDGE:
        warnings.append("the stacker's decisions beat chance at no threshold on its validation rows: at the auto "
                        "threshold it recommends HOLD (set [backtest] confidence_threshold to trade anyway)")
    return float(np.clip(1.0 - d.p_long[0] - d.p_short[0], 0.0, 1.0))


def _last_row(inputs) -> np.ndarray | None:
    rows = inputs.current_rows()
    return None if rows is None else rows[-1:]


def _voted(out: dict, models: LoadedModels, votes: dict, warnings: list) -> float:
    """The weighted vote (``trademl.predict.decision.decide``) into ``out``, without a stacker to
    decide. Returns HOLD's confidence (the vote's share for HOLD), for a blocked trade."""
    if models.stacker_note:
        warnings.append(models.stacker_note)
    if models.weight_warning:
        warnings.append(models.weight_warning)
    decision = decide(votes, models.weights)
    if decision.reweighted[0]:
        # Every model that could run here has weight 0: a vote among them beats no answer,
        # and the caller is told the weights were overridden.
        warnings.append(f"the models that ran ({', '.join(votes)}) all have weight 0; equal weights among them")
    out["ensemble_recommendation"] = ACTION_NAMES[int(decision.action[0])]
    out["confidence_score"] = float(decision.confidence[0])
    return float(decision.probabilities[0][0])


def _check_novelty(out: dict, models: LoadedModels, given, warnings: list, hold_confidence: float, config) -> None:
    """The request's novelty score (``trademl.models.novelty``) in ``out``; beyond the threshold a
    warning, and with [serve] novelty_action = "hold" a HOLD: the models would extrapolate."""
    reference = models.novelty
    current = given.inputs.current_rows()
    row = None if current is None else current[-1]
    if reference is None or row is None or len(row) != len(reference.center):
        return
    out["novelty"] = reference.describe(row)
    if not out["novelty"]["novel"]:
        return
    if out["novelty"]["off_tick_grid"]:
        warnings.append(f"the close is not a whole number of the training instrument's ticks ({reference.tick_size:g}): "
                        "another instrument's price, the models extrapolate")
    else:
        warnings.append(f"the features are unlike the training inputs (novelty {out['novelty']['score']:.2f} > "
                        f"{out['novelty']['threshold']:.2f}): the models extrapolate")
    if config.serve.novelty_action == "hold" and out["ensemble_recommendation"] != "HOLD":
        warnings.append(f"{out['ensemble_recommendation']} turned to HOLD ([serve] novelty_action = \"hold\")")
        out["ensemble_recommendation"] = "HOLD"
        out["confidence_score"] = hold_confidence
        if "suggested_contracts" in out:
            out["suggested_contracts"], out["expected_pnl"] = 0, 0.0


def predict_with(models: LoadedModels, request: PredictRequest, config, streamed=None) -> dict:
    """One validated request through one loaded set: the response dict. ``streamed``: the bar
    stream's (OnlineFeatures, bars seen), used instead of the features of ``request.bars``."""
    if not models.runtimes:
        raise ModelStoreError("no model is loaded: " + "; ".join(models.load_errors.values()), where="model store",
                              hint="train models with `trademl train` or point --model-root at a store")
    given = request_inputs(request, models.feature_names, config, model_symbol=models.symbol,
                           min_history=models.history, model_contract=models.contract, streamed=streamed)
    warnings = list(given.warnings)
    out: dict = {"timestamp": given.timestamp, "models_used": []}
    votes, ran, from_flat = {}, {}, {}
    for kind in models.seen:
        rt = models.runtimes.get(kind)
        if rt is None:
            warnings.append(f"{kind} skipped: {models.load_errors.get(kind, 'not loaded')}")
            continue
        if rt.needs_account and models.stacker is not None and given.inputs.account is not None:
            v, from_flat[kind] = _beside_flat_account(rt, given.inputs)
        else:
            v = rt.predict(given.inputs)
        if not v.ran[-1]:
            warnings.append(f"{kind} skipped: {v.reason}")
            continue
        votes[kind], ran[kind] = v.vote, v
        out.update(v.response_fields(-1, given.side))
        out["models_used"].append(kind)
    if not votes:
        raise RequestError("no model could run on this request: " + "; ".join(warnings), field="body",
                           kind="insufficient_input")
    out["votes"] = {k: dict(zip(("hold", "buy", "sell"), (float(x) for x in v.vote[-1]))) for k, v in ran.items()}
    if models.stacker is not None:
        hold_confidence = _stacked(out, models, given, {**votes, **{k: from_flat[k] for k in votes if k in from_flat}},
                                   config, warnings)
    else:
        hold_confidence = _voted(out, models, votes, warnings)
    if request.account is not None:
        out["risk"] = _risk(request, given, ran, models, out["ensemble_recommendation"], config, out.get("p_win_long"),
                            out.get("p_win_short"))
        if out["risk"]["blocked"]:
            warnings.append(f"{out['ensemble_recommendation']} blocked by the account's rules: {out['risk']['reason']}")
            out["ensemble_recommendation"] = "HOLD"
            out["confidence_score"] = hold_confidence
            if "suggested_contracts" in out:
                out["suggested_contracts"], out["expected_pnl"] = 0, 0.0
        elif out.get("suggested_contracts"):
            # the account's room and the Kelly size of the risk block cap the probability's size
            out["suggested_contracts"] = int(min(out["suggested_contracts"], out["risk"]["suggested_contracts"]))
    _check_novelty(out, models, given, warnings, hold_confidence, config)
    warnings += expiry_warnings({k: models.created.get(k) for k in out["models_used"]}, config.retrain.expiration_hours)
    out["warnings"] = warnings
    out["model_versions"] = {k: models.versions[k] for k in out["models_used"]}
    if models.stacker is not None:
        out["model_versions"]["stacker"] = models.stacker.version
    return out
