"""The HTTP service: predictions, the malformed-request table (4xx, and it keeps serving),
auth, body limit, /metrics, /v1/models, the OpenAPI file the TypeScript types come from,
and the TypeScript client's own tests against a live `trademl serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from malformed_requests import GUIDE_EXAMPLE, malformed_cases
from trademl.errors import TradeMLError
from trademl.predict.schema import PredictResponse
from trademl.serve.app import build_app, openapi_schema, resolve_token

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "typescript"


@pytest.fixture(scope="module")
def client(trained_store, tmp_path_factory):
    app = build_app(trained_store.config, trained_store.root, tmp_path_factory.mktemp("logs"))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def feature_count(client) -> int:
    return len(client.get("/v1/models").json()["feature_names"])


def test_predict_the_guide_example(client):
    r = client.post("/v1/predict", json=GUIDE_EXAMPLE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["models_used"] == ["lgb_5m", "lgb_30m"]
    assert out["ensemble_recommendation"] in ("BUY", "SELL", "HOLD")
    assert "lstm_buy_prob" not in out  # absent, not null
    assert set(out["model_versions"]) == {"lgb_5m", "lgb_30m"}
    assert PredictResponse.model_validate(out).model_dump(exclude_none=True) == out  # exactly the schema, no nulls


def test_a_full_prediction_matches_the_response_schema(client, feature_count):
    seq = [[0.0] * feature_count] * 30
    out = client.post("/v1/predict", json={"symbol": "NQ", "sequence": seq, "position": -1}).json()
    assert out["models_used"] == ["lgb_5m", "lgb_30m", "lstm", "ppo"]
    assert PredictResponse.model_validate(out).model_dump(exclude_none=True) == out


def test_malformed_table_each_gets_a_4xx_and_the_server_keeps_serving(client, feature_count):
    cases = malformed_cases(feature_count)
    assert len(cases) >= 15
    for name, body, field, status in cases:
        r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["field"] == field, (name, err)
        assert err["message"], name
        ok = client.post("/v1/predict", json=GUIDE_EXAMPLE)
        assert ok.status_code == 200, (name, ok.text[:300])
    assert client.get("/healthz").status_code == 200


def test_batch_equals_single_predictions_and_names_the_bad_one(client, feature_count):
    reqs = [dict(GUIDE_EXAMPLE, position=p) for p in (-1, 0, 2)]
    r = client.post("/v1/predict/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    singles = [client.post("/v1/predict", json=q).json() for q in reqs]
    assert r.json()["predictions"] == singles
    bad = client.post("/v1/predict/batch", json={"requests": [GUIDE_EXAMPLE, dict(GUIDE_EXAMPLE, symbol="ZZZZ9")]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "requests[1].symbol"


def test_models_and_metrics(client, trained_store):
    models = client.get("/v1/models").json()
    assert set(models["models"]) == {"lgb_5m", "lgb_30m", "lstm", "ppo"}
    assert models["sequence_length"] == trained_store.config.lstm.SEQUENCE_LENGTH
    assert models["history"] == {"lgb_5m": 1, "lgb_30m": 1, "lstm": trained_store.config.lstm.SEQUENCE_LENGTH,
                                 "ppo": trained_store.config.ppo.window}
    before = client.get("/metrics").text
    client.post("/v1/predict", json=GUIDE_EXAMPLE)
    client.post("/v1/predict", content=b"not json", headers={"content-type": "application/json"})
    text = client.get("/metrics").text

    def value(line_start: str, page: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(line_start))

    assert value("trademl_predictions_total{", text) == value("trademl_predictions_total{", before) + 1
    assert value('trademl_errors_total{kind="not_json"}', text) == value('trademl_errors_total{kind="not_json"}', before) + 1
    assert value('trademl_prediction_latency_ms_bucket{le="+Inf"}', text) == value("trademl_prediction_latency_ms_count", text)
    for kind, info in models["models"].items():
        assert f'trademl_model_loaded{{kind="{kind}",version="{info["version"]}"}} 1' in text
    assert "# TYPE trademl_prediction_latency_ms histogram" in text


def test_bearer_token_when_set(trained_store, tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEML_TOKEN", "s3cret")
    with TestClient(build_app(trained_store.config, trained_store.root, tmp_path, record=False)) as c:
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 401
        wrong = c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["kind"] == "unauthorized"
        right = c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness stays open for probes
        assert c.get("/metrics").status_code == 401


def test_refuses_to_listen_beyond_loopback_without_a_token(monkeypatch):
    monkeypatch.delenv("TRADEML_TOKEN", raising=False)
    with pytest.raises(TradeMLError, match="without a bearer token"):
        resolve_token("TRADEML_TOKEN", "0.0.0.0")
    assert resolve_token("TRADEML_TOKEN", "127.0.0.1") is None
    monkeypatch.setenv("TRADEML_TOKEN", "x")
    with pytest.raises(TradeMLError, match="1-character bearer token; at least 16"):
        resolve_token("TRADEML_TOKEN", "0.0.0.0")
    assert resolve_token("TRADEML_TOKEN", "127.0.0.1") == "x"  # loopback: any token is better than none
    monkeypatch.setenv("TRADEML_TOKEN", "k" * 16)
    assert resolve_token("TRADEML_TOKEN", "0.0.0.0") == "k" * 16


def test_serve_refuses_a_short_token_and_a_bad_port_with_one_clear_line(monkeypatch, tmp_path):
    env = dict(os.environ, TRADEML_TOKEN="x")
    trademl = str(Path(sys.executable).parent / "trademl")
    short = subprocess.run([trademl, "serve", "--host", "0.0.0.0", "--model-root", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 16" in short.stderr and "Traceback" not in short.stderr
    port = subprocess.run([trademl, "serve", "--port", "99999", "--model-root", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert port.returncode == 2 and "65535" in port.stderr and "Traceback" not in port.stderr


def test_bearer_scheme_is_case_insensitive_and_unauthorized_requests_are_not_logged(trained_store, tmp_path,
                                                                                      monkeypatch):
    from trademl.predict.log import PredictionLog

    monkeypatch.setenv("TRADEML_TOKEN", "s3cret")
    with TestClient(build_app(trained_store.config, trained_store.root, tmp_path)) as c:
        for _ in range(20):
            assert c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"authorization": "Bearer wrong"}).status_code == 401
        for scheme in ("bearer", "BEARER", "Bearer"):
            r = c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"authorization": f"{scheme} s3cret"})
            assert r.status_code == 200, (scheme, r.text)
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"authorization": "Basic s3cret"}).status_code == 401
        metrics = c.get("/metrics", headers={"authorization": "bearer s3cret"}).text
    assert 'trademl_errors_total{kind="unauthorized"} 21.0' in metrics
    rows = PredictionLog(tmp_path / "predictions.sqlite").query()
    assert len(rows) == 3 and rows["error_kind"].isna().all()  # the three answered, no row for the 21 refused


def test_host_header_is_checked_when_bound_to_loopback(trained_store, tmp_path):
    app = build_app(trained_store.config, trained_store.root, tmp_path, record=False, host="127.0.0.1", check_host=True)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200
        assert c.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "[::1]:8000"}).status_code == 200
        evil = c.post("/v1/predict", json=GUIDE_EXAMPLE, headers={"host": "evil.example:8000"})
        assert evil.status_code == 400 and evil.json()["error"]["kind"] == "bad_host"


def test_unknown_paths_and_methods_get_the_error_json(client):
    for r, status, kind in ((client.get("/v1/nope"), 404, "not_found"), (client.post("/healthz"), 405, "method_not_allowed"),
                            (client.get("/v1/predict"), 405, "method_not_allowed")):
        assert r.status_code == status and r.json() == {"error": {"message": r.json()["error"]["message"],
                                                                  "field": "path", "kind": kind}}, r.text


def test_head_healthz_and_models_show_no_paths(client, trained_store):
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    text = client.get("/v1/models").text
    assert "model_root" not in json.loads(text)
    assert str(trained_store.root) not in text and str(trained_store.root.parent) not in text


def test_a_body_shorter_than_its_content_length_gets_408_not_a_hang(trained_store, tmp_path):
    """Against a live uvicorn: the guard's read timeout answers a body that stops arriving, and
    the header deadline closes a connection whose request line and headers do not arrive."""
    import socket

    from trademl.serve import app as app_module

    app = build_app(trained_store.config, trained_store.root, tmp_path, record=False, body_timeout_s=0.5)
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=app_module._timed_h11_protocol(header_timeout_s=0.5)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 500\r\n\r\n{\"features\": ")
            reply = b""
            while b'"kind"' not in reply and (part := conn.recv(4096)):
                reply += part
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b'"kind":"timeout"' in reply
        # Headers that stop half way, or nothing at all: the connection is closed, not kept forever.
        for opening in (b"", b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(opening)
                started = time.perf_counter()
                assert conn.recv(4096) == b""  # closed by the server
                assert time.perf_counter() - started < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # and it still answers
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(10)


def test_no_model_is_503_and_unhealthy(trained_store, tmp_path):
    with TestClient(build_app(trained_store.config, tmp_path / "empty", tmp_path, record=False)) as c:
        assert c.get("/healthz").status_code == 503
        r = c.post("/v1/predict", json=GUIDE_EXAMPLE)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "model_store"
        assert str(tmp_path) not in r.text and str(tmp_path) not in c.get("/v1/models").text


def test_a_fault_of_the_server_is_a_bare_counted_logged_500(trained_store, tmp_path, caplog):
    app = build_app(trained_store.config, trained_store.root, tmp_path, record=False)

    def broken(request):
        raise RuntimeError(f"cannot read {tmp_path}/models/secret/weights.bin")

    app.state.predictor.ensemble_predict = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", json=GUIDE_EXAMPLE)
        assert r.status_code == 500
        assert r.json() == {"error": {"message": "internal server error (logged on the server)", "field": None,
                                      "kind": "internal"}}
        assert 'trademl_errors_total{kind="internal"} 1.0' in c.get("/metrics").text
        batch = c.post("/v1/predict/batch", json={"requests": [GUIDE_EXAMPLE]})
        assert batch.status_code == 500 and str(tmp_path) not in batch.text
    assert any("internal error answering a prediction" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_openapi_file_is_current():
    """clients/typescript/openapi.json is what the service publishes (regenerate: see its script)."""
    committed = json.loads((CLIENT / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_schema())), (
        "stale: run .venv/bin/python clients/typescript/scripts/dump_openapi.py && (cd clients/typescript && npm run generate)"
    )


def _npm_ready() -> str | None:
    """None when node + npm and the client's node_modules are there; else why the node tests skip."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed"
    if not (CLIENT / "node_modules" / ".bin" / "tsc").exists():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return f"npm ci failed (no registry?): {r.stderr.strip()[-300:]}"
    return None


def test_generated_typescript_types_are_current(tmp_path):
    reason = _npm_ready()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "api.ts"
    subprocess.run([str(CLIENT / "node_modules" / ".bin" / "openapi-typescript"), "openapi.json",
                    "--default-non-nullable", "false", "--output", str(out)], cwd=CLIENT, check=True,
                   capture_output=True, timeout=120)
    assert out.read_text() == (CLIENT / "src" / "generated" / "api.ts").read_text(), "run `npm run generate` in clients/typescript"


def test_typescript_client_against_a_live_server(trained_store):
    reason = _npm_ready()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, TRADEML_MODEL_ROOT=str(trained_store.root), TRADEML_BIN=str(Path(sys.executable).parent / "trademl"),
               OMP_NUM_THREADS="1")
    r = subprocess.run(["npm", "test", "--silent"], cwd=CLIENT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# skipped 0" in r.stdout


def test_failures_before_the_predictor_reach_the_prediction_log(trained_store, tmp_path):
    from trademl.predict.log import PredictionLog

    with TestClient(build_app(trained_store.config, trained_store.root, tmp_path)) as c:
        c.post("/v1/predict", content=b"{oops", headers={"content-type": "application/json"})
        c.post("/v1/predict", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        c.post("/v1/predict", json=dict(GUIDE_EXAMPLE, symbol="ZZZZ9"))  # reaches the predictor
        c.post("/v1/predict", json=GUIDE_EXAMPLE)
    rows = PredictionLog(tmp_path / "predictions.sqlite").query()
    assert sorted(rows["error_kind"].dropna()) == ["not_json", "too_large", "validation"]
    assert rows["recommendation"].notna().sum() == 1


def test_body_limit_also_holds_without_content_length(client):
    """A chunked upload declares no size: the guard counts the bytes as they arrive."""
    def chunks():
        yield b'{"features": {"rsi": 1}, "pad": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}'

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["kind"] == "too_large"
    assert client.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200


def _metric(page: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(name))


def test_a_full_disk_under_the_prediction_log_never_stops_predictions(trained_store, mount_tmpfs, capfd):
    logs = mount_tmpfs("1m", "logs")
    from trademl.predict.log import PredictionLog

    with TestClient(build_app(trained_store.config, trained_store.root, logs)) as c:
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200  # written while there is room
        try:  # now fill the disk to the last byte
            with open(logs / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        assert os.statvfs(logs).f_bavail == 0
        answers = [c.post("/v1/predict", json=dict(GUIDE_EXAMPLE, position=p % 3 - 1)) for p in range(60)]
        assert [r.status_code for r in answers] == [200] * 60, answers[0].text[:300]
        assert all(r.json()["ensemble_recommendation"] in ("BUY", "SELL", "HOLD") for r in answers)
        bad = c.post("/v1/predict", content=b"{oops", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"  # the client's fault, as before
        failures = _metric(c.get("/metrics").text, "trademl_log_write_failures_total")
        assert failures >= 1
        (logs / "filler").unlink()  # room again: the log picks up where it stopped
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200
    rows = PredictionLog(logs / "predictions.sqlite").query()
    assert rows["recommendation"].notna().sum() >= 2  # the first one and the one after the space came back
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count("cannot write the prediction log") <= 1  # warned once per interval, not per request


def test_a_corrupt_locked_or_unwritable_log_is_counted_and_predictions_go_on(trained_store, tmp_path, capfd):
    import sqlite3

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "predictions.sqlite").write_bytes(b"this is not a database" * 200)
    (corrupt / "predictions.log").mkdir()  # the guide's log line cannot be opened: a logging handler error
    with TestClient(build_app(trained_store.config, trained_store.root, corrupt)) as c:
        assert [c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code for _ in range(5)] == [200] * 5
        assert _metric(c.get("/metrics").text, "trademl_log_write_failures_total") >= 5
    locked = tmp_path / "locked"
    with TestClient(build_app(trained_store.config, trained_store.root, locked)) as c:
        assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200
        holder = sqlite3.connect(locked / "predictions.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            r = c.post("/v1/predict", json=GUIDE_EXAMPLE)
            assert r.status_code == 200, r.text[:300]
            assert _metric(c.get("/metrics").text, "trademl_log_write_failures_total") == 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err


def test_a_batch_of_256_does_not_hold_up_single_requests(trained_store, tmp_path):
    """The batch runs in chunks through the thread pool: a single request sent meanwhile is
    answered long before the batch finishes (the p99 figure is bench/bench_predict.py's)."""
    import threading

    with TestClient(build_app(trained_store.config, trained_store.root, tmp_path, record=False)) as c:
        batch = {"requests": [dict(GUIDE_EXAMPLE, position=i % 3 - 1) for i in range(256)]}
        done = {}

        def send_batch():
            t = time.perf_counter()
            r = c.post("/v1/predict/batch", json=batch)
            done["batch"] = (time.perf_counter() - t, r.status_code, len(r.json()["predictions"]))

        thread = threading.Thread(target=send_batch)
        thread.start()
        time.sleep(0.05)
        singles = []
        while thread.is_alive() and len(singles) < 200:
            t = time.perf_counter()
            assert c.post("/v1/predict", json=GUIDE_EXAMPLE).status_code == 200
            singles.append(time.perf_counter() - t)
        thread.join(60)
    batch_s, status, count = done["batch"]
    assert (status, count) == (200, 256)
    assert singles, "the batch finished before a single request could be sent"
    assert max(singles) < batch_s, (max(singles), batch_s)  # none waited for the whole batch


def test_an_internal_fault_in_the_predictor_is_in_the_prediction_log(trained_store, tmp_path, monkeypatch):
    from trademl.predict import ensemble
    from trademl.predict.log import PredictionLog

    def broken(models, request, config):
        raise IndexError("a bug")

    monkeypatch.setattr(ensemble, "predict_with", broken)
    with TestClient(build_app(trained_store.config, trained_store.root, tmp_path), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", json=GUIDE_EXAMPLE)
        assert r.status_code == 500 and r.json()["error"]["kind"] == "internal"
    rows = PredictionLog(tmp_path / "predictions.sqlite").query()
    assert list(rows["error_kind"]) == ["internal"] and "IndexError" in rows["error_message"][0]
