"""The prediction log: every prediction (and every failed request) in one SQLite file.

Written from the request path of the predictor and the server, so ``append`` is one short
INSERT in autocommit mode (well under a millisecond) and this module imports neither
pandas nor numpy until a reader asks for a DataFrame.

Concurrency and durability, decided:

- WAL journal: readers never block the writer and the writer never blocks readers; writers
  from several processes queue on SQLite's lock, waited out by ``busy_timeout``, so
  concurrent appends lose nothing.
- ``synchronous=NORMAL`` (default): in WAL mode a commit is a write() of the row's page
  into the WAL, without fsync. A killed process (SIGKILL, OOM, a crash mid-append) loses
  only the row it had not committed, since committed pages are in the OS cache already. A
  power cut may lose the last commits before the next checkpoint, but never corrupts the
  file. ``synchronous="FULL"`` fsyncs the WAL on each commit (survives power loss) at a
  cost of milliseconds per prediction on most disks, too slow for the request path; pass it
  where that trade is wanted.
- One connection per process and thread (opened lazily; a forked child opens its own),
  since an SQLite connection must not be shared across a fork.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trademl.errors import TradeMLError

SCHEMA_VERSION = 2  # 2 added `side`
BUSY_TIMEOUT_MS = 30_000

_COLUMNS = (
    "id INTEGER PRIMARY KEY AUTOINCREMENT",
    "ts_utc TEXT NOT NULL",  # the market data's time (the request's or the last bar's)
    "logged_at TEXT NOT NULL",  # wall clock when the prediction was made
    "symbol TEXT",
    "request_digest TEXT",
    "recommendation TEXT",  # BUY / SELL / HOLD; NULL for a failed request
    "confidence REAL",
    "output_json TEXT",  # the full response
    "model_versions_json TEXT",
    "latency_ms REAL",
    "error_kind TEXT",  # NULL for a prediction
    "error_message TEXT",
    "features_json TEXT",  # name -> value the models saw for the decision bar (NaN as null)
    "decision_bar TEXT",  # open time of the last bar the models saw, when the request sent bars
    "side TEXT",  # long / short: the trade win_5m_prob and win_30m_prob are about
)

_DDL = (
    f"CREATE TABLE IF NOT EXISTS predictions ({', '.join(_COLUMNS)})",
    "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts_utc)",
    "CREATE INDEX IF NOT EXISTS predictions_symbol_ts ON predictions (symbol, ts_utc)",
)

_INSERT = (
    "INSERT INTO predictions (ts_utc, logged_at, symbol, request_digest, recommendation, confidence, "
    "output_json, model_versions_json, latency_ms, error_kind, error_message, features_json, decision_bar, side) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Keys ``append`` understands; anything else is a caller's typo and is refused.
RECORD_KEYS = frozenset({
    "timestamp", "logged_at", "symbol", "request_digest", "recommendation", "confidence", "output",
    "model_versions", "latency_ms", "features", "decision_bar", "side",
})

JSON_COLUMNS = {"output_json": "output", "model_versions_json": "model_versions", "features_json": "features"}


def _as_utc(value, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TradeMLError(f"{value!r} is not an ISO 8601 time", where=f"record.{field}") from None
    if not isinstance(value, datetime):  # pandas.Timestamp is a datetime
        raise TradeMLError(f"expected an ISO time or datetime, got {type(value).__name__}", where=f"record.{field}")
    if value.tzinfo is None:
        raise TradeMLError(f"{value.isoformat()} has no time zone; send UTC ('Z')", where=f"record.{field}")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # year 1 at +05:00, year 9999 at -05:00
        raise TradeMLError(f"{value.isoformat()} has no UTC time", where=f"record.{field}") from None


def utc_text(value, field: str = "timestamp") -> str:
    """A stamp as fixed-width ISO UTC text (microseconds, 'Z'), so text order is time order."""
    return _as_utc(value, field).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# What a stored stamp may be: pandas' nanosecond times (what the monitor reads) end in 2262.
STORED_YEARS = (1970, 2199)


def stored_utc_text(value, field: str = "timestamp") -> str:
    """``utc_text`` for a stamp written into the log: within STORED_YEARS, or refused, so
    that no row can hold a time the monitor cannot read."""
    stamp = _as_utc(value, field)
    if not STORED_YEARS[0] <= stamp.year <= STORED_YEARS[1]:
        raise TradeMLError(f"{stamp.isoformat()} is outside the years {STORED_YEARS[0]}..{STORED_YEARS[1]} the log "
                           f"stores", where=f"record.{field}")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(obj):
    # numpy scalars and arrays without importing numpy
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, datetime):
        return utc_text(obj)
    return str(obj)


def _dumps(value) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _features_json(features) -> str | None:
    """name -> float, non-finite values as null so that the text is strict JSON."""
    if features is None:
        return None
    if not isinstance(features, dict):
        raise TradeMLError(f"features must be a dict name -> value, got {type(features).__name__}",
                           where="record.features")
    clean = {}
    for name, v in features.items():
        x = None if v is None else float(v)
        clean[str(name)] = x if x is not None and math.isfinite(x) else None
    return json.dumps(clean, separators=(",", ":"))


class PredictionLog:
    """``PredictionLog("logs/predictions.sqlite")``: append, query, prune, export."""

    def __init__(self, path="logs/predictions.sqlite", *, synchronous: str = "NORMAL",
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise TradeMLError(f"synchronous must be NORMAL or FULL, got {synchronous!r}", where="PredictionLog")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection()  # create the file and table now: a bad path fails here, not mid-request

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000.0, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # Switching to WAL needs a moment alone with the file; it persists, so only the
            # first opener of a new log does it.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._create_schema(conn)
        except sqlite3.DatabaseError as e:
            raise TradeMLError(f"cannot open the prediction log: {e}", where=str(self.path)) from None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}; this trademl reads {SCHEMA_VERSION}")
            if version == 1:
                conn.execute("ALTER TABLE predictions ADD COLUMN side TEXT")
            for statement in _DDL:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this thread's connection (others close when their thread or process ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # -- writing -------------------------------------------------------------------------

    def append(self, record: dict) -> int:
        """One prediction; returns its id. ``record`` keys: see RECORD_KEYS.

        ``recommendation``, ``confidence`` and ``model_versions`` default to the fields of
        ``output`` (the response dict); ``timestamp`` and ``logged_at`` default to now.
        """
        unknown = set(record) - RECORD_KEYS
        if unknown:
            raise TradeMLError(f"unknown keys {sorted(unknown)}; known: {sorted(RECORD_KEYS)}", where="record")
        output = record.get("output") or {}
        if not isinstance(output, dict):
            raise TradeMLError(f"output must be the response dict, got {type(output).__name__}", where="record.output")
        stamp = record.get("timestamp") or output.get("timestamp")
        row = (
            stored_utc_text(stamp) if stamp is not None else _now_text(),
            stored_utc_text(record["logged_at"], "logged_at") if record.get("logged_at") else _now_text(),
            record.get("symbol"),
            record.get("request_digest"),
            record.get("recommendation", output.get("ensemble_recommendation")),
            _float_or_none(record.get("confidence", output.get("confidence_score")), "confidence"),
            _dumps(output) if output else None,
            _dumps(record.get("model_versions", output.get("model_versions"))),
            _float_or_none(record.get("latency_ms"), "latency_ms"),
            None,
            None,
            _features_json(record.get("features")),
            stored_utc_text(record["decision_bar"], "decision_bar") if record.get("decision_bar") else None,
            _side(record.get("side")),
        )
        return self._insert(row)

    def append_error(self, kind: str, message: str, *, timestamp=None, symbol: str | None = None,
                     request_digest: str | None = None, latency_ms: float | None = None,
                     model_versions: dict | None = None) -> int:
        """One failed request (kind as in the error JSON: validation, no_model, ...); returns its id."""
        if not kind:
            raise TradeMLError("an error needs a kind", where="append_error.kind")
        now = _now_text()
        row = (
            stored_utc_text(timestamp) if timestamp is not None else now, now, symbol, request_digest, None, None, None,
            _dumps(model_versions), _float_or_none(latency_ms, "latency_ms"), str(kind), str(message), None, None,
            None,
        )
        return self._insert(row)

    def _insert(self, row: tuple) -> int:
        try:
            return self._connection().execute(_INSERT, row).lastrowid
        except sqlite3.DatabaseError as e:
            raise TradeMLError(f"cannot write the prediction log: {e}", where=str(self.path)) from None

    # -- reading and housekeeping --------------------------------------------------------

    def _select(self, since=None, symbol: str | None = None, until=None) -> tuple[list[str], list[tuple]]:
        clauses, params = [], []
        if since is not None:
            clauses.append("ts_utc >= ?")
            params.append(utc_text(since, "since"))
        if until is not None:
            clauses.append("ts_utc < ?")
            params.append(utc_text(until, "until"))
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            cur = self._connection().execute(f"SELECT * FROM predictions{where} ORDER BY ts_utc, id", params)
            return [d[0] for d in cur.description], cur.fetchall()
        except sqlite3.DatabaseError as e:  # a damaged page, or not a SQLite file at all
            raise TradeMLError(f"cannot read the prediction log: {e}", where=str(self.path),
                               hint="restore it from a copy, or move it away to start a new log") from None

    def count(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def query(self, since=None, symbol: str | None = None, until=None):
        """The log as a DataFrame, oldest first: ts_utc/logged_at/decision_bar as UTC times,
        output/model_versions/features decoded to dicts (None where absent)."""
        import pandas as pd

        columns, rows = self._select(since, symbol, until)
        frame, skipped = _readable(pd.DataFrame.from_records(rows, columns=columns))
        for col, name in JSON_COLUMNS.items():
            frame[name] = [json.loads(t) if isinstance(t, str) else None for t in frame.pop(col)]
        frame.attrs["skipped_rows"] = skipped
        return frame

    def prune(self, before) -> int:
        """Delete rows whose ts_utc is before ``before``; returns how many went."""
        cutoff = utc_text(before, "before")
        conn = self._connection()
        deleted = conn.execute("DELETE FROM predictions WHERE ts_utc < ?", (cutoff,)).rowcount
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # let the WAL shrink back without waiting on readers
        return deleted

    def export_parquet(self, path, since=None, symbol: str | None = None) -> Path:
        """Rows (JSON columns kept as text) to a Parquet file, written whole or not at all."""
        import pandas as pd

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns, rows = self._select(since, symbol)
        frame, _ = _readable(pd.DataFrame.from_records(rows, columns=columns))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


READABLE_YEARS = (1970, 2200)  # rows stamped outside are reported, not read (pandas' ns times end in 2262)


def _readable(frame):
    """(the rows whose stamps and JSON parse, with the stamps as UTC times; [(id, why), ...] of
    the others). A row written by an older or a foreign writer (a year-9999 stamp, broken JSON)
    is reported and left out, so one bad row never stops the monitor."""
    import pandas as pd

    bad: dict[int, str] = {}
    lo, hi = pd.Timestamp(f"{READABLE_YEARS[0]}-01-01", tz="UTC"), pd.Timestamp(f"{READABLE_YEARS[1]}-01-01", tz="UTC")
    for col in ("ts_utc", "logged_at", "decision_bar"):
        parsed = pd.to_datetime(frame[col], utc=True, format="ISO8601", errors="coerce")
        outside = parsed.isna().to_numpy() | (parsed < lo).to_numpy() | (parsed >= hi).to_numpy()
        for i in np.flatnonzero(outside & frame[col].notna().to_numpy()):
            bad.setdefault(int(i), f"{col} {str(frame[col].iloc[i])[:40]!r} is not a time in "
                                   f"{READABLE_YEARS[0]}..{READABLE_YEARS[1] - 1}")
        frame[col] = parsed.mask(pd.Series(outside, index=parsed.index)).dt.as_unit("ns")
    for col in JSON_COLUMNS:
        for i, text in enumerate(frame[col]):
            if isinstance(text, str) and i not in bad:
                try:
                    json.loads(text)
                except ValueError:
                    bad[i] = f"{col} is not valid JSON"
    skipped = [(int(frame["id"].iloc[i]), why) for i, why in sorted(bad.items())]
    return frame.drop(index=frame.index[sorted(bad)]).reset_index(drop=True), skipped


def _side(value) -> str | None:
    if value is None or value in ("long", "short"):
        return value
    raise TradeMLError(f"side must be 'long' or 'short', got {value!r}", where="record.side")


def _float_or_none(value, field: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TradeMLError(f"expected a number, got {value!r}", where=f"record.{field}") from None
