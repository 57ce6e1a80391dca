"""The HTTP service: the ensemble predictor behind FastAPI.

    POST /v1/predict         one snapshot (the guide's JSON or raw bars) -> the guide's prediction
    POST /v1/predict/batch   {"requests": [...]} -> {"predictions": [...]}
    GET  /healthz            200 when at least one model is loaded, 503 otherwise
    GET  /v1/models          loaded versions, weights, feature names, what failed to load
    GET  /metrics            Prometheus text (prometheus_client): predictions by recommendation,
                             latency histogram, errors by kind, loaded model versions

Every failure is JSON ``{"error": {"message", "field", "kind"}}`` (plus pydantic's
``detail`` list on 422): 401 without the bearer token when one is set, 413 over the body
limit, 422 for a malformed request, 503 when no model can answer. The predictor swaps in
newly trained models itself (see ensemble.py), so the server never restarts for them.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trademl.errors import ModelStoreError, TradeMLError
from trademl.predict.ensemble import EnsemblePredictor
from trademl.predict.request import RequestError
from trademl.predict.schema import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    describe_validation_error,
)

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
_ERROR_STATUS = {"validation": 422, "not_json": 422, "insufficient_input": 422, "too_large": 413, "no_model": 503, "model_store": 503,
                 "unauthorized": 401, "internal": 500}


class _LoadedModels(Collector):
    """The predictor's loaded models, read at scrape time (hot reload changes them between scrapes)."""

    def __init__(self, predictor: EnsemblePredictor):
        self.predictor = predictor

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("trademl_model_loaded", "1 for the model version being served, per kind.",
                                  labels=["kind", "version"]),
                GaugeMetricFamily("trademl_model_weight", "Ensemble weight of each loaded model.", labels=["kind"]))

    def describe(self):
        return list(self._families())

    def collect(self):
        loaded, weight = self._families()
        models = self.predictor.models
        for kind, version in models.versions.items():
            loaded.add_metric([kind, str(version)], 1)
            weight.add_metric([kind], models.weights.get(kind, 0.0))
        yield loaded
        yield weight


class Metrics:
    """The service's Prometheus metrics (prometheus_client), in a registry this app owns, so two
    apps in one process never share or collide on a counter."""

    def __init__(self, predictor: EnsemblePredictor | None = None):
        # Failures the predictor never sees (422 from parsing, 413, 401) still reach the
        # prediction log, so the monitor's "errors by kind" matches this counter.
        self._recorder = getattr(predictor, "recorder", None)
        self.registry = CollectorRegistry()
        self.predictions = Counter("trademl_predictions", "Predictions served, by ensemble recommendation.",
                                   ["recommendation"], registry=self.registry)
        for name in ("BUY", "SELL", "HOLD"):
            self.predictions.labels(recommendation=name)
        self.latency = Histogram("trademl_prediction_latency_ms", "Time to answer one prediction, milliseconds.",
                                 buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        self.errors = Counter("trademl_errors", "Failed requests, by kind.", ["kind"], registry=self.registry)
        if predictor is not None:
            self.registry.register(_LoadedModels(predictor))
        self.started = time.time()
        uptime = Gauge("trademl_uptime_seconds", "Seconds since the server started.", registry=self.registry)
        uptime.set_function(lambda: time.time() - self.started)

    def observe(self, recommendation: str, latency_ms: float) -> None:
        self.predictions.labels(recommendation=recommendation).inc()
        self.latency.observe(latency_ms)

    def error(self, kind: str, message: str | None = None) -> None:
        """Count a failed request; ``message`` given = the predictor did not log it, log it here."""
        self.errors.labels(kind=kind).inc()
        if message is not None and self._recorder is not None:
            self._recorder.record_error(RequestError(message, kind=kind), None, None)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4, served as CONTENT_TYPE)."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): bearer token, then the body size limit.

    The body is read here, at most ``max_body_bytes`` of it, and replayed to the app; a
    larger one is answered 413 before anything parses it.
    """

    def __init__(self, app, *, expected: bytes | None, max_body_bytes: int, metrics: Metrics, open_paths: set):
        self.app = app
        self.expected = expected
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.expected is not None and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                self.metrics.error("unauthorized", "missing or wrong bearer token")
                return await _error("unauthorized", "missing or wrong bearer token", "authorization")(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        too_large = _error("too_large", f"request is larger than {self.max_body_bytes} bytes", "body")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            self.metrics.error("too_large", f"request is larger than {self.max_body_bytes} bytes")
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                self.metrics.error("too_large", f"request is larger than {self.max_body_bytes} bytes")
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _error(status_kind: str, message: str, field: str | None = None, detail=None) -> JSONResponse:
    body = {"error": {"message": message, "field": field, "kind": status_kind}}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=_ERROR_STATUS.get(status_kind, 400))


def create_app(predictor: EnsemblePredictor | None, *, token: str | None = None, max_body_bytes: int | None = None,
               max_batch: int | None = None) -> FastAPI:
    """The FastAPI app around one predictor; ``token`` (when given) is required as a bearer token.
    ``predictor`` None gives an app good only for its OpenAPI document. ``max_body_bytes`` and
    ``max_batch`` left as None are the [serve] settings."""
    if max_body_bytes is None or max_batch is None:
        from trademl.config import resolve_config

        serve_cfg = resolve_config().serve
        max_body_bytes = serve_cfg.max_body_bytes if max_body_bytes is None else max_body_bytes
        max_batch = serve_cfg.max_batch if max_batch is None else max_batch
    app = FastAPI(title="trademl", version="1", summary="Ensemble trading signals from LightGBM, LSTM and PPO models.")
    metrics = Metrics(predictor)
    app.state.predictor = predictor
    app.state.metrics = metrics
    expected = f"Bearer {token}".encode() if token else None
    open_paths = {"/healthz"}

    app.add_middleware(GuardMiddleware, expected=expected, max_body_bytes=max_body_bytes, metrics=metrics,
                       open_paths=open_paths)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        kind = "not_json" if any(e.get("type") == "json_invalid" for e in errors) else "validation"
        message, field = describe_validation_error(errors)
        if kind == "not_json":  # pydantic points at a character offset; the body is what is wrong
            message, field = f"request is not valid JSON: {errors[0]['msg']}", "body"
        metrics.error(kind, message)
        return _error(kind, message, field, errors)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError):
        metrics.error(exc.kind)
        return _error(exc.kind, str(exc), exc.field, exc.detail and [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.detail])

    @app.exception_handler(TradeMLError)
    async def on_trademl_error(request: Request, exc: TradeMLError):
        kind = "model_store" if isinstance(exc, ModelStoreError) else "validation"
        metrics.error(kind)
        return _error(kind, str(exc), exc.where)

    def answer(request: PredictRequest) -> dict:
        started = time.perf_counter()
        out = predictor.ensemble_predict(request)
        metrics.observe(out["ensemble_recommendation"], (time.perf_counter() - started) * 1000.0)
        return out

    # The predictor builds exactly the response schema (tests check it); returning a JSONResponse
    # skips FastAPI re-validating and re-serialising it on every request. The response_model
    # stays declared for the OpenAPI document and the generated TypeScript types.

    responses = {401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                 503: {"model": ErrorResponse}}

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=responses)
    async def predict(body: PredictRequest) -> dict:
        """One market snapshot (the guide's JSON) or the last raw bars -> one prediction."""
        return JSONResponse(answer(body))

    @app.post("/v1/predict/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=responses)
    async def predict_batch(body: BatchRequest) -> dict:
        """Several snapshots at once; one that cannot be answered fails the batch, naming its position."""
        if len(body.requests) > max_batch:
            raise RequestError(f"a batch holds at most {max_batch} requests, got {len(body.requests)}", field="requests")
        out = []
        for i, r in enumerate(body.requests):
            try:
                out.append(answer(r))
            except RequestError as e:
                raise RequestError(e.message, field=f"requests[{i}].{e.field}", kind=e.kind) from None
        return JSONResponse({"predictions": out})

    @app.get("/healthz")
    async def healthz():
        models = predictor.models
        status = 200 if models.runtimes else 503
        return JSONResponse({"status": "ok" if status == 200 else "no model loaded",
                             "models": models.versions}, status_code=status)

    @app.get("/v1/models")
    async def list_models():
        predictor.maybe_reload()
        return predictor.describe()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return Response(metrics.render(), media_type=Metrics.CONTENT_TYPE)

    return app


def openapi_schema() -> dict:
    """The service's OpenAPI document (no models needed): what the TypeScript types come from."""
    return create_app(None).openapi()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token_env: str, host: str) -> str | None:
    """The bearer token from the environment; refused to serve beyond loopback without one."""
    token = os.environ.get(token_env) or None
    if token is None and not is_loopback(host):
        raise TradeMLError(
            f"refusing to listen on {host} without a bearer token",
            where=f"environment variable {token_env}",
            hint=f"export {token_env}=<secret> (clients send 'Authorization: Bearer <secret>') or bind 127.0.0.1",
        )
    return token


def build_app(config=None, model_root=None, log_dir=None, *, host: str | None = None, record: bool = True) -> FastAPI:
    """The app from a config (what `trademl serve` runs and what tests use)."""
    from trademl.config import resolve_config

    cfg = resolve_config(config)
    token = resolve_token(cfg.serve.token_env, host or cfg.serve.host)
    predictor = EnsemblePredictor(model_root, cfg, record=record, log_dir=log_dir)
    return create_app(predictor, token=token, max_body_bytes=cfg.serve.max_body_bytes, max_batch=cfg.serve.max_batch)


def serve(config=None, model_root=None, host: str | None = None, port: int | None = None, log_dir=None) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    from trademl.config import resolve_config

    cfg = resolve_config(config)
    host = host or cfg.serve.host
    app = build_app(cfg, model_root, log_dir, host=host)
    uvicorn.run(app, host=host, port=port or cfg.serve.port, log_level="warning", access_log=False)
