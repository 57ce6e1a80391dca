"""The decision log: every promotion or keep of a retraining round, one JSON line each, appended.

``<model_root>/retrain/decisions.jsonl`` beside the models it is about, so a copied store keeps
its history. A line is written with one ``write`` on a descriptor opened for appending, then
fsynced: a reader sees a whole record or none, and two rounds never interleave inside a line.
A line that is not a record (a torn write, an edit) makes the log unreadable, and a round
refuses to append to it before training anything: a history with a hole is not trusted silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trademl.errors import TradeMLError

LOG_FOLDER = "retrain"
LOG_NAME = "decisions.jsonl"
OUTCOMES = ("promoted", "kept")
REQUIRED = ("time", "kind", "outcome", "reason")


class DecisionLog:
    """The append-only log of one model store's retraining decisions."""

    def __init__(self, model_root):
        self.path = Path(model_root) / LOG_FOLDER / LOG_NAME

    def read(self) -> list[dict]:
        """Every record, oldest first ([] when there is none yet); a line that is not a whole record
        is a TradeMLError naming the file and the line."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TradeMLError(f"the decision log cannot be read: {e}", where=str(self.path)) from None
        if text and not text.endswith("\n"):
            raise TradeMLError("the decision log's last line is cut short (a write was interrupted)",
                               where=f"{self.path}, line {text.count(chr(10)) + 1}", hint=_REPAIR_HINT)
        return [_record(line, f"{self.path}, line {number}") for number, line in enumerate(text.splitlines(), 1)]

    def append(self, record: dict) -> None:
        """Append one record as one line (see the module doc)."""
        _record(json.dumps(record), "the new record")  # the record must read back as one
        line = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise TradeMLError(f"only {written} of {len(line)} bytes of a decision were written",
                                   where=str(self.path), hint=_REPAIR_HINT)
            os.fsync(fd)
        finally:
            os.close(fd)


_REPAIR_HINT = "remove or fix the named line (each line is one JSON decision), or move the file away to start anew"


def _record(line: str, where: str) -> dict:
    """One line as a decision record, else a TradeMLError naming ``where``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TradeMLError(f"not a JSON decision record: {e.msg}", where=where, hint=_REPAIR_HINT) from None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED) or record["outcome"] not in OUTCOMES:
        raise TradeMLError(f"not a decision record: it needs {', '.join(REQUIRED)} and an outcome of "
                           f"{' or '.join(OUTCOMES)}", where=where, hint=_REPAIR_HINT)
    return record
