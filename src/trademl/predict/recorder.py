"""Every answered prediction to the guide's ``logs/predictions.log`` line and to the SQLite
prediction log (``trademl.predict.log``), which ``trademl monitor`` reads; failed requests
are logged there too, by kind, so the monitor can count errors.

The log never stops a prediction: a write that fails (a full disk, a locked or corrupt
database, a log file that cannot be opened) is counted in ``write_failures`` (the server
exports it as ``trademl_log_write_failures_total``), warned about at most once per
``warn_interval_s``, and the answer goes back all the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trademl.errors import ModelStoreError, TradeMLError
from trademl.predict.request import iso_utc, sequence_values
from trademl.predict.schema import PredictRequest


def request_digest(request: PredictRequest) -> str:
    """sha256 of a validated request's canonical form: the same request, the same digest.

    The scalar fields as sorted JSON, then each array field (features, sequence, bars) as its
    names (sorted JSON) and its values as little-endian float64 bytes. Hashing the numbers'
    bytes instead of their JSON text keeps this ~50 us for a 60 x 40 sequence, not ~1.5 ms.
    """
    h = hashlib.sha256()
    scalars = request.model_dump(mode="json", exclude={"features", "sequence", "bars"}, exclude_none=True)
    h.update(json.dumps(scalars, sort_keys=True, separators=(",", ":")).encode())
    for name, (keys, values) in _array_fields(request):
        h.update(json.dumps([name, keys]).encode())
        h.update(np.asarray(values, dtype="<f8").tobytes())
    return h.hexdigest()


def _array_fields(request: PredictRequest):
    """(field, (column names or None, values [rows, cols] with NaN for null)) of each array field sent."""
    f = request.features
    if isinstance(f, dict):
        keys = sorted(f)
        yield "features", (keys, [np.nan if f[k] is None else f[k] for k in keys])
    elif f is not None:
        yield "features", (None, [np.nan if v is None else v for v in f])
    s = request.sequence
    if s and isinstance(s[0], dict):
        keys = sorted(s[0])
        yield "sequence", (keys, [[row[k] for k in keys] for row in s])
    elif s is not None:
        yield "sequence", (None, sequence_values(request))
    if request.bars is not None:
        extras = sorted({k for b in request.bars for k in (b.model_extra or {})})
        cols = ["timestamp", "open", "high", "low", "close", "volume", *extras]
        yield "bars", (cols, [[b.timestamp.timestamp(), b.open, b.high, b.low, b.close,
                               np.nan if b.volume is None else b.volume,
                               *((b.model_extra or {}).get(k, np.nan) for k in extras)] for b in request.bars])


def json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


logger = logging.getLogger("trademl.predict.recorder")


class PredictionRecorder:
    """Every prediction to the guide's logs/predictions.log line and to the SQLite prediction log."""

    def __init__(self, log_dir, *, warn_interval_s: float = 60.0):
        self.log_dir = Path(log_dir)
        self.warn_interval_s = float(warn_interval_s)
        self.write_failures = 0  # writes that failed (line or row), since this recorder started
        self._lock = threading.Lock()
        self._last_warning = float("-inf")
        self._sqlite = None
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._failed(e)
        self._line = _guide_logger(self.log_dir / "predictions.log", self._failed)
        self._prediction_log()  # open it now (retried on each write while it cannot be opened)

    def close(self) -> None:
        """Close this thread's connection to the SQLite prediction log (reopened by the next write).
        A one-shot caller that is done closes it, so its WAL is checkpointed into the file then,
        not left to the interpreter's exit (which `trademl predict` skips, see trademl.cli)."""
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    def _prediction_log(self):
        if self._sqlite is None:
            try:
                self._sqlite = _open_prediction_log(self.log_dir / "predictions.sqlite")
            except Exception as e:  # noqa: BLE001 - no fault of the log may reach a request
                self._failed(e)
        return self._sqlite

    def _failed(self, error: BaseException | None) -> None:
        """Count one failed write; warn (on the trademl logger, not the prediction log) once per interval."""
        with self._lock:
            self.write_failures += 1
            now = time.monotonic()
            warn = now - self._last_warning >= self.warn_interval_s
            if warn:
                self._last_warning = now
            count = self.write_failures
        if warn:
            logger.warning("cannot write the prediction log (%d failed writes so far; predictions are still "
                           "answered): %s: %s", count, type(error).__name__, error)

    def record(self, request: PredictRequest, output: dict, latency_ms: float,
               feature_names: list[str] | None = None) -> None:
        try:
            self._line.info("Prediction: %s, Confidence: %.2f%%", output["ensemble_recommendation"],
                            100.0 * output["confidence_score"])
        except Exception as e:  # noqa: BLE001 - the handler counts its own failures; this is a last guard
            self._failed(e)
        log = self._prediction_log()
        if log is None:
            return
        try:
            log.append({
                "timestamp": output["timestamp"],
                "logged_at": iso_utc(datetime.now(timezone.utc)),
                "symbol": request.symbol,
                "request_digest": request_digest(request),
                "recommendation": output["ensemble_recommendation"],
                "confidence": output["confidence_score"],
                "output": output,
                "model_versions": output["model_versions"],
                "latency_ms": latency_ms,
                "features": _logged_features(request, feature_names),
                "decision_bar": iso_utc(request.bars[-1].timestamp) if request.bars else None,
                "side": request.side,
            })
        except Exception as e:  # noqa: BLE001 - the answer goes back whatever the log does
            self._failed(e)

    def record_error(self, error: TradeMLError, market_data, latency_ms: float | None) -> None:
        log = self._prediction_log()
        if log is None:
            return
        kind = getattr(error, "kind", None) or ("model_store" if isinstance(error, ModelStoreError) else "error")
        symbol = market_data.get("symbol") if isinstance(market_data, dict) else getattr(market_data, "symbol", None)
        try:
            log.append_error(kind, str(error)[:2000], symbol=symbol[:64] if isinstance(symbol, str) else None,
                             latency_ms=latency_ms)
        except Exception as e:  # noqa: BLE001
            self._failed(e)


def _logged_features(request: PredictRequest, names: list[str] | None) -> dict | None:
    """The decision bar's features as sent, name -> value, for the monitor's drift check.

    None for a request that sent bars: the features are computed inside the predictor, and
    the monitor recomputes them from the bars file with the same (causal) code.
    """
    row = request.features
    if row is None and request.sequence:
        row = request.sequence[-1]
    if isinstance(row, dict):
        return dict(row)
    if row is not None and names and len(row) == len(names):
        return dict(zip(names, row))
    return None


class _CountingFileHandler(logging.FileHandler):
    """A FileHandler whose failed writes (a full disk, a folder that cannot be written) are
    handed to ``on_error`` instead of printing logging's "--- Logging error ---" traceback."""

    def __init__(self, path: Path, on_error):
        super().__init__(path, encoding="utf-8", delay=True)  # opened at the first line: errors reach on_error
        self.on_error = on_error

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)  # opening the file (delay=True) happens outside logging's own try
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.on_error(sys.exc_info()[1])
        stream, self.stream = self.stream, None  # reopened at the next line (the disk may have room again)
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _guide_logger(path: Path, on_error) -> logging.Logger:
    """The guide's format, '%(asctime)s - %(message)s', in its own logger (one handler per file;
    a later recorder of the same file takes over its failure count)."""
    log = logging.getLogger(f"trademl.predictions.{path.resolve()}")
    if not log.handlers:
        handler = _CountingFileHandler(path, on_error)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    else:
        for handler in log.handlers:
            if isinstance(handler, _CountingFileHandler):
                handler.on_error = on_error
    return log


def _open_prediction_log(path: Path):
    from trademl.predict.log import PredictionLog

    # A locked log waits 2 s at most, not the reader-friendly 30 s: the request is waiting.
    return PredictionLog(path, busy_timeout_ms=2_000)
