"""The HTTP service: the ensemble predictor behind FastAPI.

    POST /v1/predict         one snapshot (the guide's JSON or raw bars) -> the guide's prediction
    POST /v1/predict/batch   {"requests": [...]} -> {"predictions": [...]}
    GET  /healthz            200 when at least one model is loaded, 503 otherwise (HEAD too)
    GET  /v1/models          loaded versions, weights, feature names, what failed to load
    GET  /metrics            Prometheus text (prometheus_client): predictions by recommendation,
                             latency histogram, errors by kind, loaded model versions, the
                             prediction log's failed writes

Every failure is JSON ``{"error": {"message", "field", "kind"}}`` (plus pydantic's
``detail`` list on 422): 400 for a Host header a loopback server does not answer to, 401
without the bearer token when one is set, 408 for a body that stops arriving, 413 over the
body limit, 422 for a malformed request (not UTF-8, not JSON, a key twice, nested too deep,
a value out of range), 503 when no model can answer, and 500 only for a fault of the server
itself: counted in /metrics (``trademl_errors_total{kind="internal"}``), its traceback
logged, its message carrying no path. The predictor swaps in newly trained models itself
(see ensemble.py), so the server never restarts for them.

Model work runs off the event loop: a single prediction in the thread pool (a sync
endpoint), a batch in chunks of BATCH_CHUNK requests, each chunk in the pool, so a batch of
256 takes turns with the single requests arriving meanwhile instead of holding them up.
A prediction log that cannot be written never fails a request (see recorder.py); its
failed writes are ``trademl_log_write_failures_total``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import time

from fastapi import FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trademl.errors import ModelStoreError, TradeMLError
from trademl.predict.ensemble import EnsemblePredictor
from trademl.predict.expiry import is_expired, model_ages_hours
from trademl.predict.json_body import parse_json_body
from trademl.predict.request import RequestError
from trademl.predict.schema import (
    BarsPush,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    describe_validation_error,
)

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
_ERROR_STATUS = {"validation": 422, "not_json": 422, "insufficient_input": 422, "stream_conflict": 409, "too_large": 413, "no_model": 503, "model_store": 503,
                 "unauthorized": 401, "bad_host": 400, "timeout": 408, "internal": 500}
BATCH_CHUNK = 8  # batch requests per turn in the thread pool; between turns single requests get theirs
BODY_TIMEOUT_S = 10.0  # a body that stops arriving for this long (a short Content-Length) is answered 408
HEADER_TIMEOUT_S = 10.0  # a connection that has not finished sending its request line and headers is closed
KEEP_ALIVE_TIMEOUT_S = 5.0  # an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 64 * 1024  # h11's limit on a request line + headers
MIN_TOKEN_LENGTH = 16  # shortest bearer token accepted for a bind beyond loopback
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

log = logging.getLogger("trademl.serve")
# An absolute path: two or more /segments (a message must not show where the server keeps its files).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"(),;:]+){2,}[/\\]?")


def scrub_paths(text, roots=()) -> str | None:
    """``text`` with the model store's root dropped and any other absolute path cut to its last part."""
    if text is None:
        return None
    text = str(text)
    for root in roots:
        text = text.replace(root.rstrip("/") + "/", "").replace(root, "model store")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)


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


class _BarStreams(Collector):
    """The bar stream's state, read at scrape time: how many symbols keep one and the bars each has
    taken (at most [serve] max_streams series: the label's values are bounded)."""

    def __init__(self, predictor: EnsemblePredictor):
        self.predictor = predictor

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("trademl_streams", "Symbols whose bar stream (POST /v1/bars) keeps state."),
                GaugeMetricFamily("trademl_stream_bars", "Bars a symbol's stream has taken since it started.",
                                  labels=["symbol"]))

    def describe(self):
        return list(self._families())

    def collect(self):
        count, bars = self._families()
        symbols = self.predictor.streams.symbols()
        count.add_metric([], len(symbols))
        for symbol, seen in symbols.items():
            bars.add_metric([symbol], seen)
        yield count
        yield bars


class _ModelAges(Collector):
    """Each served model's age (its manifest's created_at) and whether it is past [retrain]
    expiration_hours, read at scrape time (``trademl.predict.expiry``)."""

    def __init__(self, predictor: EnsemblePredictor):
        self.predictor = predictor

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("trademl_model_age_hours", "Hours since the served model was trained, per kind.",
                                  labels=["kind"]),
                GaugeMetricFamily("trademl_model_expired", "1 when the served model is older than [retrain] "
                                  "expiration_hours, per kind.", labels=["kind"]))

    def describe(self):
        return list(self._families())

    def collect(self):
        age, expired = self._families()
        config = getattr(self.predictor, "config", None)
        limit = config.retrain.expiration_hours if config is not None else 0.0
        for kind, hours in model_ages_hours(getattr(self.predictor.models, "created", {})).items():
            if hours is not None:
                age.add_metric([kind], hours)
            expired.add_metric([kind], 1.0 if is_expired(hours, limit) else 0.0)
        yield age
        yield expired


class _LogWriteFailures(Collector):
    """The prediction log's failed writes (the recorder counts them; read at scrape time)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def describe(self):
        return [CounterMetricFamily("trademl_log_write_failures", "Prediction log writes that failed (the predictions "
                                    "were still answered).")]

    def collect(self):
        family = CounterMetricFamily("trademl_log_write_failures", "Prediction log writes that failed (the "
                                     "predictions were still answered).")
        family.add_metric([], getattr(self.recorder, "write_failures", 0))
        yield family


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
        self.novel = Counter("trademl_novel_inputs", "Predictions whose features were unlike the training inputs "
                             "(novelty score above the model's threshold).", registry=self.registry)
        if predictor is not None:
            self.registry.register(_LoadedModels(predictor))
            self.registry.register(_ModelAges(predictor))
            self.registry.register(_BarStreams(predictor))
        self.registry.register(_LogWriteFailures(self._recorder))
        self.started = time.time()
        uptime = Gauge("trademl_uptime_seconds", "Seconds since the server started.", registry=self.registry)
        uptime.set_function(lambda: time.time() - self.started)

    def observe(self, recommendation: str, latency_ms: float, novel: bool = False) -> None:
        self.predictions.labels(recommendation=recommendation).inc()
        self.latency.observe(latency_ms)
        if novel:
            self.novel.inc()

    def error(self, kind: str, message: str | None = None) -> None:
        """Count a failed request; ``message`` given = the predictor did not log it, log it here
        (the recorder never raises: a log that cannot be written is counted there)."""
        self.errors.labels(kind=kind).inc()
        if message is not None and self._recorder is not None:
            self._recorder.record_error(RequestError(message, kind=kind), None, None)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4, served as CONTENT_TYPE)."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): the Host header, the bearer token, then the
    body size limit and the body read timeout, all before anything is parsed or logged.

    The body is read here, at most ``max_body_bytes`` of it, and replayed to the app; a
    larger one is answered 413 before anything parses it, one that stops arriving for
    ``body_timeout_s`` 408. A request without the token is counted in /metrics and never
    reaches the prediction log.
    """

    def __init__(self, app, *, token: bytes | None, max_body_bytes: int, metrics: Metrics, open_paths: set,
                 allowed_hosts: frozenset | None = None, body_timeout_s: float = BODY_TIMEOUT_S):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.open_paths = open_paths
        self.allowed_hosts = allowed_hosts
        self.body_timeout_s = body_timeout_s

    def _authorized(self, headers: dict) -> bool:
        scheme, _, credential = headers.get(b"authorization", b"").strip().partition(b" ")
        # compare_digest on the token whatever the scheme, so the time taken says nothing
        right_token = hmac.compare_digest(credential.strip(), self.token)
        return right_token and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.allowed_hosts is not None and _host_name(headers.get(b"host", b"")) not in self.allowed_hosts:
            self.metrics.error("bad_host")
            return await _error("bad_host", "this server answers to its loopback names only (Host header)",
                                "host")(scope, receive, send)
        if self.token is not None and scope["path"] not in self.open_paths and not self._authorized(headers):
            self.metrics.error("unauthorized")  # counted, never logged: no row for an anonymous client
            return await _error("unauthorized", "missing or wrong bearer token", "authorization")(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        too_large = _error("too_large", f"request is larger than {self.max_body_bytes} bytes", "body")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            self.metrics.error("too_large", f"request is larger than {self.max_body_bytes} bytes")
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                message = f"the request body stopped arriving ({size} bytes in {self.body_timeout_s:g} s)"
                self.metrics.error("timeout", message)
                return await _error("timeout", message, "body")(scope, receive, send)
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


def _host_name(value: bytes) -> str:
    """b'127.0.0.1:8000' -> '127.0.0.1', b'[::1]:80' -> '::1', lower case."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class ServerFault(Exception):
    """An unexpected exception in the model work: answered 500 with no detail, logged, counted."""


class _StrictJSONRoute(APIRoute):
    """Routes whose JSON body is decoded by ``parse_json_body`` (strict UTF-8, no key twice,
    bounded nesting) before FastAPI reads it: what it would answer with a bare
    ``{"detail": ...}`` 400 becomes the documented error JSON (422, kind not_json)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            body = await request.body()
            if body and request.method == "POST":
                # Starlette's Request.json() returns this cached value; the guard already
                # bounded the size, so the limit here is only the decoder's argument.
                request._json = parse_json_body(body, len(body))
            return await handler(request)

        return strict_handler


def _error(status_kind: str, message: str, field: str | None = None, detail=None, roots=(),
           status: int | None = None) -> JSONResponse:
    body = {"error": {"message": scrub_paths(message, roots), "field": scrub_paths(field, roots), "kind": status_kind}}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status or _ERROR_STATUS.get(status_kind, 400))


def create_app(predictor: EnsemblePredictor | None, *, token: str | None = None, max_body_bytes: int | None = None,
               max_batch: int | None = None, allowed_hosts=None, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The FastAPI app around one predictor; ``token`` (when given) is required as a bearer token.
    ``predictor`` None gives an app good only for its OpenAPI document. ``max_body_bytes`` and
    ``max_batch`` left as None are the [serve] settings. ``allowed_hosts`` (host names) = the
    only Host headers answered (``serve`` sets the loopback names when bound to loopback)."""
    if max_body_bytes is None or max_batch is None:
        from trademl.config import resolve_config

        serve_cfg = resolve_config().serve
        max_body_bytes = serve_cfg.max_body_bytes if max_body_bytes is None else max_body_bytes
        max_batch = serve_cfg.max_batch if max_batch is None else max_batch
    app = FastAPI(title="trademl", version="1", summary="Ensemble trading signals from LightGBM, LSTM and PPO models.")
    app.router.route_class = _StrictJSONRoute
    metrics = Metrics(predictor)
    app.state.predictor = predictor
    app.state.metrics = metrics
    open_paths = {"/healthz"}
    roots = _store_roots(predictor)

    app.add_middleware(GuardMiddleware, token=token.encode() if token else None, max_body_bytes=max_body_bytes,
                       metrics=metrics, open_paths=open_paths, body_timeout_s=body_timeout_s,
                       allowed_hosts=None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts))

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
        # Raised before the predictor (the body's decoding, the batch's size): log it here.
        metrics.error(exc.kind, None if exc.predictor_logged else str(exc))
        return _error(exc.kind, str(exc), exc.field, exc.detail and [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.detail], roots)

    @app.exception_handler(TradeMLError)
    async def on_trademl_error(request: Request, exc: TradeMLError):
        kind = "model_store" if isinstance(exc, ModelStoreError) else "validation"
        metrics.error(kind)
        return _error(kind, str(exc), exc.where, roots=roots)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        # Starlette's own answers (an unknown path 404, a wrong method 405) in the same error JSON.
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        metrics.error(kind)
        answer = _error(kind, str(exc.detail), "path" if exc.status_code in (404, 405) else None, status=exc.status_code)
        for name, value in (exc.headers or {}).items():
            answer.headers[name] = value
        return answer

    @app.exception_handler(ServerFault)
    async def on_server_fault(request: Request, exc: ServerFault):
        metrics.error("internal")
        return _error("internal", "internal server error (logged on the server)", None)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        # Outside the model work (Starlette re-raises it after this answer, and uvicorn logs it).
        metrics.error("internal")
        return _error("internal", "internal server error (logged on the server)", None)

    def answer(request: PredictRequest, call=None) -> dict:
        started = time.perf_counter()
        try:
            out = (call or predictor.ensemble_predict)(request)
        except RequestError as e:
            e.predictor_logged = True
            raise
        except TradeMLError:
            raise
        except Exception as e:  # noqa: BLE001 - a fault of ours: logged with its traceback, a bare 500 out
            log.exception("internal error answering a prediction")
            raise ServerFault() from e
        metrics.observe(out["ensemble_recommendation"], (time.perf_counter() - started) * 1000.0,
                        novel=bool((out.get("novelty") or {}).get("novel")))
        return out

    # The predictor builds exactly the response schema (tests check it); returning a JSONResponse
    # skips FastAPI re-validating and re-serialising it on every request. The response_model
    # stays declared for the OpenAPI document and the generated TypeScript types.

    responses = {401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                 503: {"model": ErrorResponse}}

    # A sync endpoint: FastAPI runs it in its thread pool, off the event loop.
    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=responses)
    def predict(body: PredictRequest) -> dict:
        """One market snapshot (the guide's JSON) or the last raw bars -> one prediction."""
        return JSONResponse(answer(body))

    def answer_chunk(chunk: list, first: int) -> list[dict]:
        out = []
        for i, r in enumerate(chunk, first):
            try:
                out.append(answer(r))
            except RequestError as e:
                moved = RequestError(e.message, field=f"requests[{i}].{e.field}", kind=e.kind)
                moved.predictor_logged = True
                raise moved from None
        return out

    @app.post("/v1/predict/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=responses)
    async def predict_batch(body: BatchRequest) -> dict:
        """Several snapshots at once; one that cannot be answered fails the batch, naming its position."""
        if len(body.requests) > max_batch:
            raise RequestError(f"a batch holds at most {max_batch} requests, got {len(body.requests)}", field="requests")
        out = []
        for first in range(0, len(body.requests), BATCH_CHUNK):
            out.extend(await run_in_threadpool(answer_chunk, body.requests[first:first + BATCH_CHUNK], first))
        return JSONResponse({"predictions": out})

    stream_responses = {**responses, 409: {"model": ErrorResponse}}

    @app.post("/v1/bars", response_model=PredictResponse, response_model_exclude_none=True, responses=stream_responses)
    def push_bars(body: BarsPush) -> dict:
        """The bar stream: the symbol's newest closed bar(s) (the first call may carry history) ->
        the prediction for its newest bar, from the state the server keeps per symbol. A bar older
        than the last one, or the last one changed, is 409; the same bar again changes nothing."""
        return JSONResponse(answer(body, predictor.push_bars))

    @app.delete("/v1/bars/{symbol}")
    def drop_stream(symbol: str = FastAPIPath(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9._-]+$")) -> dict:
        """Forget a symbol's stream state (the next call starts it again from its bars)."""
        return {"symbol": symbol, "dropped": predictor.drop_stream(symbol)}

    def health() -> JSONResponse:
        models = predictor.models
        status = 200 if models.runtimes else 503
        return JSONResponse({"status": "ok" if status == 200 else "no model loaded",
                             "models": models.versions}, status_code=status)

    @app.get("/healthz")
    async def healthz():
        return health()

    @app.head("/healthz", include_in_schema=False)
    async def healthz_head():
        out = health()
        return Response(status_code=out.status_code, headers={"content-type": "application/json"})

    @app.get("/v1/models")
    def list_models():
        predictor.maybe_reload()
        described = predictor.describe()
        described.pop("model_root", None)  # where the server keeps its files is nobody's business
        described["not_loaded"] = {k: scrub_paths(v, roots) for k, v in described.get("not_loaded", {}).items()}
        described["weights_note"] = scrub_paths(described.get("weights_note"), roots)
        described["stacker_note"] = scrub_paths(described.get("stacker_note"), roots)
        return described

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return Response(metrics.render(), media_type=Metrics.CONTENT_TYPE)

    return app


def _store_roots(predictor) -> tuple[str, ...]:
    """The model store's root as given and resolved (scrubbed from messages), longest first."""
    root = getattr(getattr(predictor, "store", None), "root", None)
    if root is None:
        return ()
    forms = {str(root), str(os.path.abspath(root)), str(os.path.realpath(root))}
    return tuple(sorted((f for f in forms if len(f) > 1), key=len, reverse=True))


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
    """The bearer token from the environment; refused to serve beyond loopback without one, or
    with one shorter than MIN_TOKEN_LENGTH characters (or holding whitespace)."""
    token = os.environ.get(token_env) or None
    if token is None and not is_loopback(host):
        raise TradeMLError(
            f"refusing to listen on {host} without a bearer token",
            where=f"environment variable {token_env}",
            hint=f"export {token_env}=<secret> (clients send 'Authorization: Bearer <secret>') or bind 127.0.0.1",
        )
    if token is not None and any(c.isspace() for c in token):
        raise TradeMLError("the bearer token must not hold spaces or newlines", where=f"environment variable {token_env}")
    if token is not None and not is_loopback(host) and len(token) < MIN_TOKEN_LENGTH:
        raise TradeMLError(
            f"refusing to listen on {host} with a {len(token)}-character bearer token; at least "
            f"{MIN_TOKEN_LENGTH} are needed beyond loopback",
            where=f"environment variable {token_env}",
            hint=f"export {token_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return token


def check_port(port: int) -> int:
    """A TCP port, 1..65535, or a clear error."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise TradeMLError(f"port {port!r} is not a TCP port (1..65535)", where="--port / [serve] port")
    return port


def build_app(config=None, model_root=None, log_dir=None, *, host: str | None = None, record: bool = True,
              check_host: bool = False, body_timeout_s: float = BODY_TIMEOUT_S, stream_bars=()) -> FastAPI:
    """The app from a config (what `trademl serve` runs and what tests use). ``check_host``:
    bound to loopback, answer only Host headers naming loopback (what ``serve`` does).
    ``stream_bars``: (symbol, bars file) pairs whose bar streams start warm (``warm_streams``)."""
    from trademl.config import resolve_config

    cfg = resolve_config(config)
    host = host or cfg.serve.host
    token = resolve_token(cfg.serve.token_env, host)
    predictor = EnsemblePredictor(model_root, cfg, record=record, log_dir=log_dir)
    warm_streams(predictor, stream_bars, cfg)
    allowed = (LOOPBACK_NAMES | {host.lower()}) if check_host and is_loopback(host) else None
    return create_app(predictor, token=token, max_body_bytes=cfg.serve.max_body_bytes, max_batch=cfg.serve.max_batch,
                      allowed_hosts=allowed, body_timeout_s=body_timeout_s)


def warm_streams(predictor: EnsemblePredictor, stream_bars, config) -> None:
    """Start each (symbol, bars file)'s bar stream from the file (after a restart, so the bot's next
    one-bar push is answered from full state). A file that cannot be read or fits no model is
    logged and skipped: the service starts anyway, and that stream warms up from the next call's
    history instead."""
    from trademl.data.bars import load_bars

    for symbol, path in stream_bars:
        try:
            seen = predictor.warm_stream(symbol, load_bars(path, symbol=symbol, tz=config.data.timezone))
            log.info("bar stream %s warmed from %s (%d bars)", symbol, path, seen)
        except TradeMLError as e:
            log.warning("bar stream %s not warmed from %s: %s", symbol, path, e)


def _timed_h11_protocol(header_timeout_s: float = HEADER_TIMEOUT_S):
    """uvicorn's h11 protocol with a deadline for the request line and headers: uvicorn's own
    keep-alive timeout starts only after a first response, so a connection that sends nothing,
    or half a header, would otherwise stay open forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _header_deadline = None

        def _arm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no request of this connection is being answered
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


def serve(config=None, model_root=None, host: str | None = None, port: int | None = None, log_dir=None,
          stream_bars=()) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    from trademl.config import resolve_config

    cfg = resolve_config(config)
    host = host or cfg.serve.host
    port = check_port(cfg.serve.port if port is None else port)
    app = build_app(cfg, model_root, log_dir, host=host, check_host=True, stream_bars=stream_bars)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=_timed_h11_protocol(),
                timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
