"""A table of hostile and unlucky prediction requests (issue 15), each sent through the server
and through the CLI: always the documented error JSON, a 4xx from the server, exit 2 and one
JSON object from `trademl predict`, never a traceback or a 5xx; the server answers a good
request exactly as before after each one, and its memory stays flat over the table.

How the CLI is covered: every case through ``predict_stdio`` in-process (what `trademl
predict` runs, stdin to stdout, prediction log on), and the cases marked ``cli`` (a
representative ~25, one per kind of attack) through a real `trademl predict` subprocess
each (exit code, stdout, stderr as a user sees them).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from malformed_requests import GUIDE_EXAMPLE
from trademl.serve.app import build_app

TRADEML = str(Path(sys.executable).parent / "trademl")
MAX_BODY = 1_000_000  # the [serve] max_body_bytes default


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _guide(**changes) -> bytes:
    return _json({**GUIDE_EXAMPLE, **changes})


def _raw_guide(old: str, new: str) -> bytes:
    """The guide's example with one piece of its JSON text replaced (for what json.dumps cannot write)."""
    text = _guide().decode()
    assert old in text, old
    return text.replace(old, new, 1).encode()


def _bar(i: int = 0, **changes) -> dict:
    price = 16500.0 + i
    return {"timestamp": f"2024-01-02T14:{30 + i:02d}:00Z", "open": price, "high": price + 1.0, "low": price - 1.0,
            "close": price + 0.5, "volume": 10, **changes}


def _bars(*bars: dict, **changes) -> bytes:
    return _json({"symbol": "NQZ5", "bars": list(bars), **changes})


def _nested(depth: int, inner: str = "1") -> bytes:
    return ('{"features": ' + "[" * depth + inner + "]" * depth + "}").encode()


def _batch(*requests) -> bytes:
    return _json({"requests": list(requests)})


# (id, body builder: feature names -> bytes, endpoint, field the error must name or None, in the CLI subset)
P, B = "/v1/predict", "/v1/predict/batch"
CASES = [
    # -- request timestamps: outside 1970..2199, or no UTC time at all
    ("ts year 9999", lambda n: _guide(timestamp="9999-12-31T23:59:59Z"), P, "timestamp", True),
    ("ts year 1", lambda n: _guide(timestamp="0001-01-01T00:00:00Z"), P, "timestamp", False),
    ("ts year 1 at +05:00", lambda n: _guide(timestamp="0001-01-01T00:00:00+05:00"), P, "timestamp", True),
    ("ts year 9999 at -05:00", lambda n: _guide(timestamp="9999-12-31T23:00:00-05:00"), P, "timestamp", True),
    ("ts year 1677", lambda n: _guide(timestamp="1677-09-21T00:12:43Z"), P, "timestamp", False),
    ("ts year 1600", lambda n: _guide(timestamp="1600-01-01T00:00:00Z"), P, "timestamp", False),
    ("ts 1969", lambda n: _guide(timestamp="1969-12-31T23:59:59Z"), P, "timestamp", False),
    ("ts 2200", lambda n: _guide(timestamp="2200-01-01T00:00:00Z"), P, "timestamp", False),
    ("ts 2263", lambda n: _guide(timestamp="2263-01-01T00:00:00Z"), P, "timestamp", False),
    ("ts 2300", lambda n: _guide(timestamp="2300-06-01T00:00:00Z"), P, "timestamp", False),
    ("ts unix seconds 1e20", lambda n: _guide(timestamp=1e20), P, "timestamp", False),
    ("ts negative seconds", lambda n: _guide(timestamp=-62135596800), P, "timestamp", False),
    ("ts empty string", lambda n: _guide(timestamp=""), P, "timestamp", False),
    ("ts month 13", lambda n: _guide(timestamp="2024-13-01T00:00:00Z"), P, "timestamp", False),
    ("ts Feb 30", lambda n: _guide(timestamp="2024-02-30T00:00:00Z"), P, "timestamp", False),
    ("ts offset +25:00", lambda n: _guide(timestamp="2024-01-01T00:00:00+25:00"), P, "timestamp", False),
    ("ts as object", lambda n: _guide(timestamp={"year": 2024}), P, "timestamp", False),
    ("ts as boolean", lambda n: _guide(timestamp=True), P, "timestamp", False),
    # -- bar timestamps
    ("bar ts 1677", lambda n: _bars(_bar(timestamp="1677-09-22T00:00:00Z")), P, "bars[0].timestamp", True),
    ("bar ts 2263", lambda n: _bars(_bar(timestamp="2263-01-01T00:00:00Z")), P, "bars[0].timestamp", False),
    ("bar ts 9999", lambda n: _bars(_bar(timestamp="9999-12-31T23:59:59Z")), P, "bars[0].timestamp", False),
    ("bar ts year 1 +05:00", lambda n: _bars(_bar(timestamp="0001-01-01T00:00:00+05:00")), P, "bars[0].timestamp", True),
    ("bar ts 9999 -05:00", lambda n: _bars(_bar(timestamp="9999-12-31T23:30:00-05:00")), P, "bars[0].timestamp", False),
    ("bar ts 1969", lambda n: _bars(_bar(timestamp="1969-07-20T20:17:00Z")), P, "bars[0].timestamp", False),
    ("bar ts last one in 2263", lambda n: _bars(_bar(0), _bar(1, timestamp="2263-01-01T00:00:00Z")), P,
     "bars[1].timestamp", False),
    ("bar ts number 1e300", lambda n: _bars(_bar(timestamp=1e300)), P, "bars[0].timestamp", False),
    ("bar ts missing", lambda n: _bars({k: v for k, v in _bar().items() if k != "timestamp"}), P, "bars[0].timestamp", False),
    # -- numbers: non-finite, beyond float32, not numbers
    ("feature 3.4e38+", lambda n: _guide(features={"rsi": 3.5e38}), P, "features.rsi", True),
    ("feature -3.5e38", lambda n: _guide(features={"rsi": -3.5e38}), P, "features.rsi", False),
    ("feature 1e308", lambda n: _guide(features={"rsi": 1e308}), P, "features.rsi", False),
    ("feature 1e309 (inf)", lambda n: _raw_guide('"rsi": 45', '"rsi": 1e309'), P, "features.rsi", True),
    ("feature NaN", lambda n: _raw_guide('"rsi": 45', '"rsi": NaN'), P, "features.rsi", False),
    ("feature -Infinity", lambda n: _raw_guide('"rsi": 45', '"rsi": -Infinity'), P, "features.rsi", False),
    ("feature string", lambda n: _guide(features={"rsi": "45"}), P, "features.rsi", False),
    ("feature boolean", lambda n: _guide(features={"rsi": True}), P, "features.rsi", False),
    ("feature list", lambda n: _guide(features={"rsi": [45]}), P, "features.rsi", False),
    ("feature 400-digit int", lambda n: _raw_guide('"rsi": 45', '"rsi": ' + "9" * 400), P, None, False),
    ("feature 5000-digit int", lambda n: _raw_guide('"rsi": 45', '"rsi": ' + "9" * 5000), P, "body", True),
    ("features array 3.5e38", lambda n: _guide(features=[0.0] * (len(n) - 1) + [3.5e38]), P,
     lambda n: f"features[{len(n) - 1}]", True),
    ("sequence 3.5e38", lambda n: _json({"sequence": [[0.0] * len(n)] * 29 + [[0.0] * (len(n) - 1) + [3.5e38]]}), P,
     lambda n: f"sequence[29][{len(n) - 1}]", True),
    ("sequence dict rows 1e39", lambda n: _json({"sequence": [{k: (1e39 if i == 3 and k == n[0] else 0.0) for k in n}
                                                            for i in range(30)]}), P, lambda n: f"sequence[3].{n[0]}", False),
    ("sequence NaN", lambda n: _json({"sequence": [[0.0] * len(n)] * 29 + [[float("nan")] * len(n)]}).replace(b"NaN", b"NaN"),
     P, "sequence[29][0]", False),
    ("balance 1e39", lambda n: _guide(balance=1e39), P, "balance", True),
    ("balance NaN", lambda n: _raw_guide('"balance": 102000', '"balance": NaN'), P, "balance", False),
    ("balance string", lambda n: _guide(balance="lots"), P, "balance", False),
    ("unrealized_pnl -1e39", lambda n: _guide(unrealized_pnl=-1e39), P, "unrealized_pnl", False),
    ("unrealized_pnl Infinity", lambda n: _raw_guide('"unrealized_pnl": 500', '"unrealized_pnl": Infinity'), P,
     "unrealized_pnl", False),
    ("bar price 3.5e38", lambda n: _bars(_bar(high=3.5e38)), P, "bars[0]", False),
    ("bar volume 1e39", lambda n: _bars(_bar(volume=1e39)), P, "bars[0]", False),
    ("bar volume negative", lambda n: _bars(_bar(volume=-1)), P, "bars[0].volume", False),
    ("bar price zero", lambda n: _bars(_bar(low=0.0)), P, "bars[0].low", False),
    ("bar price NaN", lambda n: _bars(_bar()).replace(b'"close": 16500.5', b'"close": NaN'), P, "bars[0].close", False),
    ("bar extra 1e39", lambda n: _bars(_bar(edge=1e39)), P, "bars[0]", True),
    ("bar extra string", lambda n: _bars(_bar(edge="x")), P, "bars[0]", False),
    ("bar extra nested", lambda n: _bars(_bar(edge={"a": [1]})), P, "bars[0]", False),
    ("bar price string", lambda n: _bars(_bar(open="16500")), P, "bars[0].open", False),
    # -- price ranges that would size the volume profile's histogram
    ("bar 4e9..1e308", lambda n: _bars(_bar(open=4e9, low=4e9, close=4e9, high=1e308)), P, "bars[0]", True),
    ("bar 4e9..3e38", lambda n: _bars(_bar(open=4e9, low=4e9, close=4e9, high=3e38)), P, "bars[0]", True),
    ("bars at 1e30", lambda n: _bars(*[_bar(i, open=1e30, high=1.001e30, low=0.999e30, close=1e30) for i in range(3)]),
     P, "bars[0]", True),
    ("bars 100 then 1e6", lambda n: _bars(_bar(0, open=100, high=101, low=99, close=100),
                                          _bar(1, open=1e6, high=1e6 + 1, low=1e6 - 1, close=1e6)), P, None, False),
    ("bar 1e-300..1e9", lambda n: _bars(_bar(open=1e-300, low=1e-300, close=1e9, high=1e9)), P, "bars[0]", False),
    ("bars far apart, 40 of them", lambda n: _bars(*[_bar(i, open=10.0 ** (i % 9 + 1), high=10.0 ** (i % 9 + 1) * 1.01,
                                                      low=10.0 ** (i % 9 + 1) * 0.99, close=10.0 ** (i % 9 + 1))
                                                     for i in range(40)]), P, None, False),
    # -- nesting
    ("nested 40 lists", lambda n: _nested(40), P, "body", True),
    ("nested 1000 lists", lambda n: _nested(1000), P, "body", False),
    ("nested 100k lists", lambda n: _nested(100_000), P, "body", True),
    ("nested 100k objects", lambda n: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, P, "body", False),
    ("nested 33 in a bar extra", lambda n: _bars(_bar()).replace(b'"volume": 10', b'"volume": 10, "edge": ' + b"[" * 33
                                                                  + b"]" * 33), P, "body", False),
    ("unclosed 100k", lambda n: b"[" * 100_000, P, "body", False),
    # -- bytes that are not UTF-8 (or not JSON text)
    ("invalid byte 0xff", lambda n: b"\xff" + _guide(), P, "body", True),
    ("overlong slash", lambda n: _guide(symbol="NQZ5").replace(b"NQZ5", b"NQ\xc0\xafZ5"), P, "body", False),
    ("UTF-8 surrogate bytes", lambda n: _guide().replace(b"NQZ5", b"NQ\xed\xa0\x80"), P, "body", False),
    ("latin-1 e-acute", lambda n: _guide().replace(b"NQZ5", b"NQ\xe9"), P, "body", True),
    ("truncated multibyte", lambda n: _guide()[:-1] + b"\xe2\x82", P, "body", False),
    ("UTF-16 body", lambda n: _guide().decode().encode("utf-16"), P, "body", True),
    ("UTF-8 BOM", lambda n: b"\xef\xbb\xbf" + _guide(), P, "body", False),
    ("escaped lone surrogate", lambda n: _guide().replace(b"NQZ5", b"\\ud800"), P, "body", True),
    ("escaped lone surrogate key", lambda n: _guide().replace(b'"rsi"', b'"\\udfff"'), P, "body", False),
    ("NUL byte", lambda n: _guide().replace(b"{", b"{\x00", 1), P, "body", False),
    # -- duplicate keys
    ("duplicate top-level key", lambda n: _guide().replace(b'"position": 2', b'"position": 2, "position": -2'), P,
     "body", True),
    ("duplicate feature", lambda n: _raw_guide('"rsi": 45', '"rsi": 45, "rsi": 90'), P, "body", False),
    ("duplicate features key", lambda n: _raw_guide('"position": 2', '"position": 2, "features": {"rsi": 1}'), P,
     "body", False),
    ("duplicate bar key", lambda n: _bars(_bar()).replace(b'"close": 16500.5', b'"close": 16500.5, "close": 1'), P,
     "body", False),
    # -- recent actions
    ("recent_actions [true]", lambda n: _guide(recent_actions=[True]), P, "recent_actions", True),
    ("recent_actions [false]", lambda n: _guide(recent_actions=[0, False]), P, "recent_actions", False),
    ("recent_actions float", lambda n: _guide(recent_actions=[1.0]), P, "recent_actions", True),
    ("recent_actions string", lambda n: _guide(recent_actions=["1"]), P, "recent_actions[0]", False),
    ("recent_actions null", lambda n: _guide(recent_actions=[None]), P, "recent_actions[0]", False),
    ("recent_actions -1", lambda n: _guide(recent_actions=[-1]), P, "recent_actions[0]", False),
    ("recent_actions 11", lambda n: _guide(recent_actions=[0] * 11), P, "recent_actions", False),
    ("recent_actions object", lambda n: _guide(recent_actions={"0": 1}), P, "recent_actions", False),
    # -- shapes and types
    ("body null", lambda n: b"null", P, "body", True),
    ("body number", lambda n: b"1", P, "body", False),
    ("body string", lambda n: b'"predict"', P, "body", False),
    ("body empty", lambda n: b"", P, "body", True),
    ("body whitespace", lambda n: b"   \n ", P, "body", False),
    ("body 2 MB", lambda n: _guide(pad="x" * 2_000_000), P, "body", False),
    ("symbol 10k chars", lambda n: _guide(symbol="N" * 10_000), P, "symbol", False),
    ("symbol control chars", lambda n: _guide(symbol="NQ\u0000\u001b[2J"), P, "symbol", False),
    ("symbol emoji", lambda n: _guide(symbol="\U0001f4c8"), P, "symbol", False),
    ("position 1e30", lambda n: _guide(position=10 ** 30), P, "position", False),
    ("position -1001", lambda n: _guide(position=-1001), P, "position", False),
    ("position true", lambda n: _guide(position=True), P, "position", False),
    ("side LONG", lambda n: _guide(side="LONG"), P, "side", False),
    ("sequence empty", lambda n: _json({"sequence": []}), P, "sequence", False),
    ("sequence [[]]", lambda n: _json({"sequence": [[]]}), P, "sequence[0]", False),
    ("sequence 5001 rows", lambda n: _json({"sequence": [[0]] * 5001}), P, "sequence", False),
    ("bars 5001", lambda n: _bars(*[_bar(0)] * 5001), P, "bars", False),
    ("bars as string", lambda n: _json({"bars": "16500,16501"}), P, "bars", False),
    ("bar high below low", lambda n: _bars(_bar(high=16000.0)), P, "bars[0]", False),
    # -- batches
    ("batch not a list", lambda n: _json({"requests": {"a": GUIDE_EXAMPLE}}), B, "requests", False),
    ("batch empty", lambda n: _batch(), B, "requests", False),
    ("batch of 257", lambda n: _batch(*[GUIDE_EXAMPLE] * 257), B, "requests", False),
    ("batch with year 9999", lambda n: _batch(GUIDE_EXAMPLE, {**GUIDE_EXAMPLE, "timestamp": "9999-12-31T23:59:59Z"}), B,
     "requests[1].timestamp", False),
    ("batch with 4e9..1e308 bar", lambda n: _batch(GUIDE_EXAMPLE, {"symbol": "NQZ5", "bars": [
        _bar(open=4e9, low=4e9, close=4e9, high=3e38)]}), B, "requests[1].bars[0]", False),
    ("batch nested 100k", lambda n: b'{"requests": [' + _nested(100_000) + b"]}", B, "body", False),
    ("batch duplicate key", lambda n: _batch(GUIDE_EXAMPLE).replace(b'"position": 2', b'"position": 2, "position": 1'), B,
     "body", False),
]
# The bar stream reads the same bars: every bar case again on POST /v1/bars, and what only a
# stream can get wrong. A refused push changes no stream's state.
S = "/v1/bars"
CASES += [(f"stream: {c[0]}", c[1], S, c[3], False) for c in list(CASES) if c[0].startswith("bar ")]
CASES += [
    ("stream: no symbol", lambda n: _json({"bars": [_bar()]}), S, "symbol", False),
    ("stream: symbol of 40 characters", lambda n: _bars(_bar(), symbol="N" * 40), S, "symbol", False),
    ("stream: unknown symbol", lambda n: _bars(_bar(), symbol="ZZZZ"), S, "symbol", False),
    ("stream: no bars", lambda n: _json({"symbol": "NQZ5"}), S, "bars", False),
    ("stream: empty bars", lambda n: _bars(), S, "bars", False),
    ("stream: features beside bars", lambda n: _bars(_bar(), features={"rsi": 45}), S, "body", False),
    ("stream: bars out of order", lambda n: _bars(_bar(1), _bar(0)), S, "bars", False),
    ("stream: bars as an object", lambda n: _json({"symbol": "NQZ5", "bars": {"0": _bar()}}), S, "bars", False),
]
IDS = [c[0] for c in CASES]
assert len(CASES) >= 100 and len(set(IDS)) == len(IDS)
CLI_SUBSET = [c[0] for c in CASES if c[4]]


def _case(name: str):
    return next(c for c in CASES if c[0] == name)


def _expected_field(field, names):
    return field(names) if callable(field) else field


@pytest.fixture(scope="module")
def names(trained_store) -> list[str]:
    manifest = json.loads(next((trained_store.root / "lgb_5m").glob("*/manifest.json")).read_text())
    return manifest["feature_schema"]["names"]


@pytest.fixture(scope="module")
def server(trained_store, tmp_path_factory):
    """A server with the prediction log on, faults not re-raised into the test (a 5xx must show as one)."""
    app = build_app(trained_store.config, trained_store.root, tmp_path_factory.mktemp("hostile-logs"))
    with TestClient(app, raise_server_exceptions=False) as c:
        baseline = c.post("/v1/predict", json=GUIDE_EXAMPLE)
        assert baseline.status_code == 200
        c.baseline = baseline.json()
        yield c


def _check_error_json(body: dict, name: str) -> dict:
    assert set(body) <= {"error", "detail"}, (name, body)
    err = body["error"]
    assert set(err) == {"message", "field", "kind"} and err["message"] and err["kind"], (name, err)
    assert len(err["message"]) < 2000, name
    return err


def _send(client, name: str, names):
    _name, build, path, _field, _cli = _case(name)
    return client.post(path, content=build(names), headers={"content-type": "application/json"})


@pytest.mark.parametrize("name", IDS)
def test_server_answers_4xx_and_keeps_answering(server, names, trained_store, name):
    r = _send(server, name, names)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
    err = _check_error_json(r.json(), name)
    want = _expected_field(_case(name)[3], names)
    if want is not None:
        assert err["field"] == want, (name, err)
    assert str(trained_store.root) not in r.text, name
    good = server.post("/v1/predict", json=GUIDE_EXAMPLE)
    assert good.status_code == 200 and good.json() == server.baseline, name


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc: no psutil needed)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def test_the_table_leaves_no_5xx_and_memory_flat(server, names):
    def one_pass():
        for name in IDS:
            assert _send(server, name, names).status_code < 500, name

    one_pass()  # warm: caches, pools and the allocator's arenas settle
    before = _rss_bytes()
    for _ in range(2):
        one_pass()
    after = _rss_bytes()
    assert after <= before * 1.10, f"RSS grew {before / 2**20:.0f} -> {after / 2**20:.0f} MiB over two passes"
    metrics = server.get("/metrics").text
    assert 'trademl_errors_total{kind="internal"}' not in metrics or \
        'trademl_errors_total{kind="internal"} 0.0' in metrics
    good = server.post("/v1/predict", json=GUIDE_EXAMPLE)
    assert good.status_code == 200 and good.json() == server.baseline


@pytest.mark.parametrize("name", IDS)
def test_predict_stdio_in_process_gives_exit_2_and_one_error_object(trained_store, names, name, tmp_path,
                                                                    monkeypatch, capsys):
    from trademl.predict.stdio import predict_stdio

    monkeypatch.chdir(tmp_path)  # the prediction log (on) goes to ./logs
    stdout = io.StringIO()
    code = predict_stdio(io.BytesIO(_case(name)[1](names)), stdout, model_root=trained_store.root,
                         config=trained_store.config)
    text = stdout.getvalue()
    assert code == 2, (name, text[:300])
    assert text.count("\n") == 1 and text.endswith("\n"), (name, text[:300])
    err = _check_error_json(json.loads(text), name)
    if _case(name)[2] == P and (want := _expected_field(_case(name)[3], names)) is not None:
        assert err["field"] == want, (name, err)
    assert "Traceback" not in capsys.readouterr().err, name


@pytest.mark.parametrize("name", CLI_SUBSET)
def test_trademl_predict_subprocess_subset(trained_store, names, name, tmp_path):
    body = _case(name)[1](names)
    r = subprocess.run([TRADEML, "predict", "--model-root", str(trained_store.root)], input=body, capture_output=True,
                       cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert r.returncode == 2, (name, r.stdout[:300], r.stderr[:300])
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, (name, r.stdout[:300])
    _check_error_json(json.loads(lines[0]), name)
    assert b"Traceback" not in r.stderr and r.stderr.decode().startswith("error: "), (name, r.stderr[-500:])


def test_the_cli_subset_covers_every_category():
    assert len(CLI_SUBSET) >= 25
    subset = " ".join(CLI_SUBSET)
    for word in ("ts", "bar ts", "3.4e38", "1e309", "4e9", "nested", "UTF", "surrogate", "duplicate", "true", "body"):
        assert word in subset, word


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00", "1677-09-21T00:12:43Z",
                                   "2263-01-01T00:00:00Z", "1969-12-31T23:59:59Z"])
def test_the_prediction_log_refuses_a_stamp_the_monitor_cannot_read(tmp_path, stamp):
    """Behind the request's own check: no row written through the library holds such a time."""
    from trademl.errors import TradeMLError
    from trademl.predict.log import PredictionLog

    log = PredictionLog(tmp_path / "p.sqlite")
    output = {"ensemble_recommendation": "HOLD", "confidence_score": 0.5}
    with pytest.raises(TradeMLError, match="record.timestamp"):
        log.append({"timestamp": stamp, "output": output})
    with pytest.raises(TradeMLError, match="record.timestamp"):
        log.append_error("validation", "x", timestamp=stamp)
    assert log.count() == 0
    log.append({"timestamp": "2199-12-31T23:59:59Z", "output": output})
    assert len(log.query()) == 1  # the last year stored still reads back


def _strict_or_error(raw: bytes):
    from trademl.predict.json_body import _strict_json
    from trademl.predict.request import RequestError

    try:
        return _strict_json(raw, raw.decode("utf-8"))
    except (RequestError, UnicodeDecodeError) as e:
        return e


@pytest.mark.parametrize("name", IDS)
def test_the_fast_json_path_accepts_only_what_the_strict_one_decodes_alike(names, name):
    """Every body of the table: the fast decoder either hands it to the strict one, or gives the
    value the strict one gives (JSON's NaN is compared as NaN)."""
    from trademl.predict.json_body import _UNSURE, _fast_json

    raw = _case(name)[1](names)
    fast = _fast_json(raw)
    if fast is not _UNSURE:
        strict = _strict_or_error(raw)
        assert not isinstance(strict, Exception), (name, strict)
        assert json.dumps(fast, sort_keys=True) == json.dumps(strict, sort_keys=True), name


@pytest.mark.parametrize("body, why", [
    (b'{"a": 1, "b": {"c": 2, "c": 3}}', "a key twice in a nested object"),
    (b'{"a/b": 1, "a\\/b": 2}', "one key spelled two ways"),
    (b'{"r\\u0073i": 1, "rsi": 2}', "a unicode escape"),
    (b'{"s": "a\\"b", "t": 1}', "any escape"),
    (b"[" + b"[], " * 3000 + b"[]]", "more quotes and brackets than FAST_JSON_MARKS"),
    (b"[" * 33 + b"]" * 33, "nesting beyond 32"),
    (b'{"a": [1, 2', "not JSON"),
])
def test_the_fast_json_path_hands_doubtful_bodies_to_the_strict_one(body, why):
    """Each goes to the strict path, which answers it: its error, or its value."""
    from trademl.predict.json_body import _UNSURE, _fast_json, parse_json_body

    assert _fast_json(body) is _UNSURE, why
    strict = _strict_or_error(body)
    if isinstance(strict, Exception):
        with pytest.raises(type(strict), match="not valid JSON"):
            parse_json_body(body, MAX_BODY)
    else:
        assert parse_json_body(body, MAX_BODY) == strict, why


def test_the_fast_json_path_reads_strings_that_look_like_structure():
    """Colons and brackets inside strings are not structure; equal keys in different objects are
    not duplicates; a bigger-than-int64 integer, NaN and UTF-8 text come through as the stdlib's."""
    from trademl.predict.json_body import _UNSURE, _fast_json

    raw = (b'{"s": "a:[{b", "t": {"s": 1, "u": "]} : {"}, "x": [{"s": 2}, {"s": 3}], '
           b'"big": 123456789012345678901234567890, "n": NaN, "e": "\xe2\x82\xac"}')
    fast = _fast_json(raw)
    assert fast is not _UNSURE
    strict = _strict_or_error(raw)
    assert json.dumps(fast, sort_keys=True) == json.dumps(strict, sort_keys=True)
    assert fast["s"] == "a:[{b" and fast["t"]["u"] == "]} : {" and fast["big"] == 123456789012345678901234567890
