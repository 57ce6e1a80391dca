"""One table of malformed prediction requests, shared by the CLI and the server tests.

Each case: (id, body bytes, field the error must name, HTTP status the server must give).
Bodies are bytes so that what is not JSON, or NaN, or 10 MB, can be sent as it is.
"""

from __future__ import annotations

import json

GUIDE_EXAMPLE = {
    "symbol": "NQZ5",
    "timestamp": "2024-01-01T12:00:00Z",
    "features": {"close": 16500, "volume": 1000, "rsi": 45, "dist_to_poc_ticks": 4},
    "position": 2,
    "balance": 102000,
    "unrealized_pnl": 500,
}


def _with(**changes) -> bytes:
    body = dict(GUIDE_EXAMPLE)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


_DROP = object()
_BAR = {"timestamp": "2024-01-02T14:30:00Z", "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 10}


def malformed_cases(feature_count: int) -> list[tuple[str, bytes, str, int]]:
    """The table; ``feature_count`` = how many features the trained models read."""
    row = [0.1] * feature_count
    return [
        ("no model input", _with(features=_DROP), "body", 422),
        ("empty object", b"{}", "body", 422),
        ("not JSON", b"{'symbol': NQZ5", "body", 422),
        ("JSON array, not object", b"[1, 2, 3]", "body", 422),
        ("NaN feature", _with().replace(b'"rsi": 45', b'"rsi": NaN'), "features.rsi", 422),
        ("infinite balance", _with().replace(b'"balance": 102000', b'"balance": Infinity'), "balance", 422),
        ("feature as string", _with(features={"rsi": "45"}), "features.rsi", 422),
        ("features not object/array", _with(features="rsi=45"), "features", 422),
        ("unknown feature name", _with(features={"rsi": 45, "rsi_typo": 1}), "features.rsi_typo", 422),
        ("features array wrong length", _with(features=[1.0, 2.0, 3.0]), "features", 422),
        ("sequence too short", _with(sequence=[row] * 3), "sequence", 422),
        ("sequence ragged rows", _with(sequence=[row, row[:-1]]), "sequence", 422),
        ("sequence with null", _with(sequence=[row[:-1] + [None]] * 2), "sequence[0][%d]" % (feature_count - 1), 422),
        ("unknown symbol", _with(symbol="ZZZZ9"), "symbol", 422),
        ("shell in symbol", _with(symbol="'; rm -rf ~ #"), "symbol", 422),
        ("position not integer", _with(position=1.5), "position", 422),
        ("position as string", _with(position="2"), "position", 422),
        ("position beyond max", _with(position=9), "position", 422),
        ("recent action code 3", _with(recent_actions=[0, 1, 3]), "recent_actions[2]", 422),
        ("11 recent actions", _with(recent_actions=[0] * 11), "recent_actions", 422),
        ("unknown top-level field", _with(featurez={"rsi": 1}), "featurez", 422),
        ("bad timestamp", _with(timestamp="yesterday"), "timestamp", 422),
        ("side not long/short", _with(side="up"), "side", 422),
        ("bars and features", _with(bars=[_BAR]), "body", 422),
        ("empty bars", _with(features=_DROP, bars=[]), "bars", 422),
        ("bar high below close", _with(features=_DROP, bars=[dict(_BAR, high=100.2)]), "bars[0]", 422),
        ("bars not increasing", _with(features=_DROP, bars=[_BAR, _BAR]), "bars", 422),
        ("negative price", _with(features=_DROP, bars=[dict(_BAR, low=-1.0)]), "bars[0].low", 422),
        ("10 MB body", b'{"features": {"rsi": 1}, "pad": "' + b"x" * 10_000_000 + b'"}', "body", 413),
    ]
