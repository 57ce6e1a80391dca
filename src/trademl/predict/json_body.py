"""Decoding a request body: strict JSON, fast where it can be.

``parse_json_body`` is what the HTTP service and ``trademl predict`` read a body with: UTF-8,
no key twice in one object, containers at most MAX_JSON_DEPTH deep, each refusal a
RequestError that says which rule the body broke.
"""

from __future__ import annotations

import json
import re

import numpy as np
from pydantic_core import from_json

from trademl.predict.request import RequestError

MAX_JSON_DEPTH = 32  # the deepest valid request is 4 levels (batch -> requests -> sequence -> row)
_COLON = re.compile(rb"[ \t\r\n]*:")
_UNSURE = object()
# Below this the standard library is as fast (the guide's example, 200 bytes: 15 us strict, 40 us
# fast); a 49 KB snapshot takes 0.6 ms fast against 1.3-2.0 ms strict.
FAST_JSON_BYTES = 2048
# More quotes and brackets than this (a snapshot has ~200; a batch of 256 one-bar requests
# ~6,700) and the Python pass over them would cost more than the strict path.
FAST_JSON_MARKS = 4096


def parse_json_body(data: bytes | str, max_bytes: int):
    """Bytes of one request -> the decoded JSON value, or RequestError (too large, not JSON).

    Strict: the bytes must be UTF-8, an object must not name a key twice, and containers
    nest at most MAX_JSON_DEPTH deep. NaN and Infinity are decoded (as FastAPI does) so that
    validation rejects them naming the field they are in, rather than as an anonymous
    syntax error. Bodies of FAST_JSON_BYTES or more take the fast path (``_fast_json``); the
    rest, and any the fast path is not sure of, the standard library's decoder with the
    checks below, which also words every error.
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise RequestError(f"request is larger than {max_bytes} bytes", field="body", kind="too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"request is not valid UTF-8 (byte {e.start})", field="body", kind="not_json") from None
    fast = _fast_json(raw) if len(raw) >= FAST_JSON_BYTES else _UNSURE
    return fast if fast is not _UNSURE else _strict_json(raw, text)


def _fast_json(raw: bytes):
    """``raw`` decoded by pydantic-core's parser, or _UNSURE where the strict path must decide.

    A guide-size snapshot is ~49 KB, mostly numbers: ``json.loads`` with the checks takes
    1.3-2.0 ms of it, on the server's event loop, and pydantic-core's parser ~0.3 ms. That
    parser keeps the last of two equal keys and nests deeper than MAX_JSON_DEPTH, so a pass
    over the raw bytes' quotes and brackets checks both. The strict path takes any body with
    a backslash (an escape can spell one key two ways, or a lone surrogate), any with more than
    FAST_JSON_MARKS quotes and brackets (a body of strings and objects, where that pass would
    cost more than it saves), and any the parser refuses. What the fast path accepts, the
    strict path decodes to the same value (tests/test_hostile_inputs.py checks every body of
    its table).
    """
    if b"\\" in raw:
        return _UNSURE
    b = np.frombuffer(raw, np.uint8)
    marks = np.flatnonzero((b == 0x22) | (b == 0x5B) | (b == 0x5D) | (b == 0x7B) | (b == 0x7D))
    if len(marks) > FAST_JSON_MARKS:
        return _UNSURE
    try:
        value = from_json(raw, allow_inf_nan=True)
    except ValueError:
        return _UNSURE
    return value if _keys_unique_and_shallow(raw, marks.tolist()) else _UNSURE


def _keys_unique_and_shallow(raw: bytes, marks: list[int]) -> bool:
    """Whether no object of ``raw`` (valid JSON without escapes) names a key twice and nothing
    nests beyond MAX_JSON_DEPTH, read from the positions of its quotes and brackets (``marks``,
    found by numpy: a snapshot has ~200 beside ~2,400 numbers a Python loop would step over)."""
    objects: list = []  # a set of keys per open object, None per open list
    string_start = -1  # where the open string began; -1 outside strings
    for i in marks:
        c = raw[i]
        if string_start >= 0:
            if c == 0x22:  # the string closes: a key when a colon follows
                if objects and objects[-1] is not None and _COLON.match(raw, i + 1):
                    key = raw[string_start:i]
                    if key in objects[-1]:
                        return False
                    objects[-1].add(key)
                string_start = -1
        elif c == 0x22:
            string_start = i + 1
        elif c in (0x5B, 0x7B):  # [ {
            objects.append(None if c == 0x5B else set())
            if len(objects) > MAX_JSON_DEPTH:
                return False
        else:  # ] }
            objects.pop()
    return True


def _strict_json(raw: bytes, text: str):
    """The standard library's decoder, with a key twice, nesting beyond MAX_JSON_DEPTH and lone
    surrogates refused by name."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise RequestError(f"request is not valid JSON: key {e.key!r} appears twice in one object", field="body",
                           kind="not_json") from None
    except RecursionError:
        raise RequestError(f"request is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels", field="body",
                           kind="not_json") from None
    except ValueError as e:
        raise RequestError(f"request is not valid JSON: {str(e)[:200]}", field="body", kind="not_json") from None
    if _too_deep(value):
        raise RequestError(f"request is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels", field="body",
                           kind="not_json")
    if b"\\u" in raw and _has_lone_surrogate(value):  # only an escape can spell one in UTF-8 text
        raise RequestError("request is not valid JSON: a \\u escape names a lone surrogate (not a character)",
                           field="body", kind="not_json")
    return value


def _has_lone_surrogate(value) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key[:100]


def _unique_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _too_deep(value) -> bool:
    """Whether containers nest deeper than MAX_JSON_DEPTH (an explicit stack: no recursion)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False
