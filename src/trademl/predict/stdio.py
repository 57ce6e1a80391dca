"""``trademl predict`` and scripts/predict_advanced.py: one JSON request on stdin, one JSON
object on stdout, an exit code that says what happened."""

from __future__ import annotations

import json
import logging
import sys

from trademl.errors import ModelStoreError, TradeMLError
from trademl.predict.ensemble import EnsemblePredictor
from trademl.predict.recorder import json_default
from trademl.predict.json_body import parse_json_body
from trademl.predict.request import RequestError, parse_request

EXIT_BAD_REQUEST = 2
EXIT_NO_MODEL = 3
EXIT_INTERNAL = 1


def predict_stdio(stdin, stdout, *, model_root=None, config=None, record: bool = True) -> int:
    """Read one JSON request from ``stdin`` and write one JSON object to ``stdout``.

    Exit codes: 0 a prediction; 2 a bad request (error JSON names the field); 3 no usable
    model; 1 a fault of trademl itself (error JSON of kind "internal"). Logs go to stderr
    only, so stdout is exactly one JSON object. A prediction log that cannot be written
    never changes the answer (see recorder.py).
    """
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code, predictor = 0, None
    try:
        from trademl.config import resolve_config

        cfg = resolve_config(config)
        buffer = getattr(stdin, "buffer", stdin)
        body = parse_json_body(buffer.read(cfg.serve.max_body_bytes + 1), cfg.serve.max_body_bytes)
        parse_request(body)  # a malformed request fails before any model is loaded
        predictor = EnsemblePredictor(model_root, cfg, record=record)
        result = predictor.ensemble_predict(body)
    except RequestError as e:
        result, code = e.to_json(), EXIT_NO_MODEL if e.kind == "no_model" else EXIT_BAD_REQUEST
    except TradeMLError as e:
        kind = "model_store" if isinstance(e, ModelStoreError) else "error"
        result = {"error": {"message": str(e), "field": e.where, "kind": kind}}
        code = EXIT_NO_MODEL if kind == "model_store" else EXIT_BAD_REQUEST
    except Exception as e:  # noqa: BLE001 - a fault of trademl's: still one JSON object, and exit 1
        logging.getLogger("trademl.predict").debug("internal error", exc_info=True)
        result = {"error": {"message": f"internal error ({type(e).__name__}: {str(e)[:300]})", "field": None,
                            "kind": "internal"}}
        code = EXIT_INTERNAL
    if code:
        print(f"error: {result['error']['message']}", file=sys.stderr)
    try:
        # ASCII-escaped: a lone surrogate or control character from the request cannot break the line
        stdout.write(json.dumps(result, default=json_default, ensure_ascii=True) + "\n")
        stdout.flush()
    finally:
        if predictor is not None and predictor.recorder is not None:
            predictor.recorder.close()  # after the answer: the log's checkpoint never delays it
    return code
