"""The bot's decision log, and its join with the bars the bot could have seen.

A decision log is CSV (header required, ``,`` ``;`` or tab) or JSONL (one object per
line) with fields timestamp, symbol, side (buy/sell/long/short, any case) and optionally
price, pnl (realized P&L in dollars) and quantity. Each decision is joined with the last
bar that had CLOSED at or before it (bar open + bar length <= decision time): the bot
cannot have seen a later bar, so the join never uses one.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from trademl.config import resolve_config
from trademl.data.bars import bar_length_minutes, parse_timestamps
from trademl.data.labels import horizon_bars
from trademl.errors import DataError

SIDES = {"buy": 1, "long": 1, "sell": -1, "short": -1}
_NAT = np.iinfo(np.int64).min
_NS_PER_MINUTE = 60_000_000_000

_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "timestamp_utc", "time", "datetime", "date_time", "ts", "decision_time"),
    "symbol": ("symbol", "contract", "instrument", "ticker"),
    "side": ("side", "action", "direction"),
    "price": ("price", "entry_price", "fill_price"),
    "pnl": ("pnl", "realized_pnl", "realised_pnl", "profit", "pl", "p&l", "net_pnl"),
    "quantity": ("quantity", "qty", "size", "contracts"),
}
_REQUIRED = ("timestamp", "symbol", "side")
_NO_VALUE = {"nan", "null", "none", "na", "n/a", "-"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


# --------------------------------------------------------------------------- loading


def _canonical(names) -> dict[str, str]:
    """Canonical field -> the name used in the file."""
    normal = {re.sub(r"[\s\-]+", "_", str(n).strip().lower()): n for n in names}
    found = {}
    for canonical, aliases in _ALIASES.items():
        hit = next((normal[a] for a in aliases if a in normal), None)
        if hit is not None:
            found[canonical] = hit
    return found


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    records, lines = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON: {e.msg}", where=f"{path}, line {number}") from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", where=f"{path}, line {number}")
            records.append(record)
            lines.append(number)
    frame = pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()
    return frame, np.asarray(lines, dtype=np.int64)


def _read_csv(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    with open(path, encoding="utf-8-sig") as f:
        header_line = next((i for i, line in enumerate(f) if line.strip()), None)
    if header_line is None:
        return pd.DataFrame(), np.zeros(0, dtype=np.int64)
    with open(path, encoding="utf-8-sig") as f:
        header = [line for i, line in enumerate(f) if i == header_line][0]
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    sep = max(counts, key=counts.get)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, skiprows=header_line, skip_blank_lines=False,
                            keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.ParserError as e:
        raise DataError(f"cannot parse: {e}", where=str(path)) from None
    lines = header_line + 2 + np.arange(len(frame), dtype=np.int64)
    blank = (frame.apply(lambda c: c.str.strip()) == "").all(axis=1).to_numpy() if len(frame) else np.zeros(0, bool)
    return frame[~blank].reset_index(drop=True), lines[~blank]


def _field_problems(raw: pd.DataFrame, cols: dict[str, str], tz: str | None) -> tuple[dict, list]:
    """Typed fields and a list of (row, field, problem) for every bad value."""
    problems: list[tuple[int, str, str]] = []

    def text(name):  # every value as stripped text; the usual spellings of "no value" as ""
        values = raw[cols[name]].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
        return values.mask(values.str.lower().isin(_NO_VALUE), "")

    stamp_text = text("timestamp")
    stamps = parse_timestamps(stamp_text.replace("", None), tz=tz, mixed=True)
    for i in np.flatnonzero(stamps == _NAT):
        problems.append((i, "timestamp", f"cannot read timestamp {stamp_text.iloc[i]!r}" if stamp_text.iloc[i] else "missing"))
    symbol = text("symbol")
    for i in np.flatnonzero((symbol == "").to_numpy()):
        problems.append((i, "symbol", "missing"))
    side_text = text("side")
    side = side_text.str.lower().map(SIDES)
    for i in np.flatnonzero(side.isna().to_numpy()):
        problems.append((i, "side", f"{side_text.iloc[i]!r} is not a side (buy, sell, long or short)"))
    typed = {"timestamp": stamps, "symbol": symbol, "side": side.fillna(0).to_numpy(dtype=np.int8)}
    for name, positive in (("price", True), ("pnl", False), ("quantity", True)):
        typed[name] = _optional_number(text(name) if name in cols else None, len(raw), name, positive, problems)
    return typed, problems


def _optional_number(values: pd.Series | None, n: int, name: str, positive: bool, problems: list) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    numbers = pd.to_numeric(values.replace("", None), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    given = (values != "").to_numpy()
    for i in np.flatnonzero(given & ~np.isfinite(numbers)):
        problems.append((i, name, f"{values.iloc[i]!r} is not a finite number"))
    if positive:
        with np.errstate(invalid="ignore"):
            for i in np.flatnonzero(given & (numbers <= 0)):
                problems.append((i, name, f"must be > 0, not {values.iloc[i]}"))
    return numbers


def load_decisions(path, *, tz: str | None = None) -> pd.DataFrame:
    """Read a decision log (CSV or JSONL) into a frame sorted by time.

    Columns: timestamp (UTC), symbol, side (+1 buy/long, -1 sell/short), price, pnl,
    quantity (NaN where not given) and line (where the decision is in the file). Naive
    timestamps are read in ``tz`` (default UTC). A bad value is a ``DataError`` naming the
    line and the field, and counting the other bad rows.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", where=str(path))
    is_jsonl = path.suffix.lower() in _JSONL_SUFFIXES or _starts_with_brace(path)
    raw, lines = _read_jsonl(path) if is_jsonl else _read_csv(path)
    if raw.empty:
        raise DataError("no decisions in the file", where=str(path))
    cols = _canonical(raw.columns)
    missing = [f for f in _REQUIRED if f not in cols]
    if missing:
        raise DataError(f"missing field(s) {', '.join(missing)} (found: {', '.join(map(str, raw.columns))})",
                        where=str(path), hint="a decision needs timestamp, symbol and side")
    typed, problems = _field_problems(raw, cols, tz)
    if problems:
        problems.sort()
        row, name, problem = problems[0]
        others = sorted({lines[r] for r, _, _ in problems[1:] if r != row})
        tail = f"; {len(others)} other row(s) also have problems (lines {', '.join(map(str, others[:8]))}{', ...' if len(others) > 8 else ''})" if others else ""
        raise DataError(f"{problem}{tail}", where=f"{path}, line {lines[row]}, field {name!r}")
    frame = pd.DataFrame({
        "timestamp": pd.DatetimeIndex(typed["timestamp"].view("datetime64[ns]")).tz_localize("UTC"),
        "symbol": pd.array(typed["symbol"].to_numpy(), dtype="str"),
        "side": typed["side"],
        "price": typed["price"],
        "pnl": typed["pnl"],
        "quantity": typed["quantity"],
        "line": lines,
    })
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame.attrs["source"] = str(path)
    return frame


def _starts_with_brace(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        first = next((line for line in f if line.strip()), "")
    return first.lstrip().startswith("{")


# --------------------------------------------------------------------------- joining


class JoinReport(dict):
    """Decisions that could not be joined with a closed bar, and why. Printable.

    A plain dict underneath (joined, unmatched: [line, timestamp, reason] each), so that
    the frame carrying it in ``attrs`` can still be saved to Parquet.
    """

    def __init__(self, joined: int = 0, unmatched=()):
        super().__init__(joined=int(joined), unmatched=[tuple(u) for u in unmatched])

    joined = property(lambda self: self["joined"])
    unmatched = property(lambda self: self["unmatched"], doc="(line, timestamp, reason) of each left out")

    def __str__(self, limit: int = 10) -> str:
        head = f"joined {self.joined} decision(s) with a closed bar"
        if not self.unmatched:
            return head + "; none left out"
        rows = [f"  line {line} ({stamp}): {reason}" for line, stamp, reason in self.unmatched[:limit]]
        more = [f"  ... and {len(self.unmatched) - limit} more"] if len(self.unmatched) > limit else []
        return "\n".join([f"{head}; {len(self.unmatched)} left out:", *rows, *more])


def _horizons(labels: pd.DataFrame | None) -> list[int]:
    if labels is None:
        return []
    found = {int(m.group(1)) for c in labels.columns if (m := re.fullmatch(r"win_long_(\d+)", str(c)))}
    return sorted(h for h in found if f"win_short_{h}" in labels.columns)


def _same_root(a: str, b: str) -> bool:
    from trademl.market.contracts import root_of

    return root_of(a) == root_of(b) or a.upper().startswith(b.upper()) or b.upper().startswith(a.upper())


def join_decisions(decisions: pd.DataFrame, bars: pd.DataFrame, segments: np.ndarray,
                   labels: pd.DataFrame | None = None, *, horizon: int | None = None,
                   bar_minutes: float | None = None, max_stale_minutes: float | None = None,
                   check_symbol: bool = True) -> pd.DataFrame:
    """Join each decision with the last bar closed at or before it, and label it.

    A bar opened at ``o`` closes at ``o + bar_minutes`` (default: ``bars.attrs["bar_minutes"]``
    or the median spacing). The label ``win`` is the realized outcome (pnl > 0) where the
    log gives a pnl, else the bars' ``win_long_h`` / ``win_short_h`` of that bar for the
    decision's side at ``horizon`` (None: the first of [data] horizons); ``label_source``
    says which ("outcome", "bars", or "none" where the bar label is undefined, e.g. its
    window crosses a gap). ``win_{h}``
    holds the bar label at every horizon found in ``labels``.

    Decisions before the first bar closed, more than ``max_stale_minutes`` after the last
    closed bar (default: the gap threshold, ``bars.attrs["max_gap_minutes"]`` or [data]
    max_gap_minutes, or one bar length if longer), or for another symbol are left out and
    listed in ``attrs["join_report"]`` (a warning says how many).
    """
    n_bars = len(bars)
    if len(segments) != n_bars or (labels is not None and len(labels) != n_bars):
        raise DataError(f"bars ({n_bars}), segments ({len(segments)}) and labels "
                        f"({'none' if labels is None else len(labels)}) must have one row per bar", where="join_decisions")
    minutes = bar_minutes or bar_length_minutes(bars)
    if horizon is None:
        horizon = horizon_bars(resolve_config().data.horizons[:1], minutes)[0]
    stale = max_stale_minutes
    if stale is None:
        gap = bars.attrs.get("max_gap_minutes")
        gap = resolve_config().data.max_gap_minutes if gap is None else gap
        # a decision inside a long bar is up to one bar length after the last close: not stale
        stale = max(gap, minutes)
    closes = bars.index.as_unit("ns").asi8 + int(round(minutes * _NS_PER_MINUTE))
    stamps = pd.DatetimeIndex(decisions["timestamp"])
    if stamps.tz is None:
        raise DataError("decision timestamps must be tz-aware (load_decisions gives UTC)", where="join_decisions")
    t = stamps.tz_convert("UTC").as_unit("ns").asi8
    pos = np.searchsorted(closes, t, side="right") - 1  # last close <= t: never a later bar
    reasons = _unmatched_reasons(decisions, bars, closes, t, pos, stale, check_symbol)
    matched = np.array([r is None for r in reasons], dtype=bool)
    report = JoinReport(int(matched.sum()), [
        (int(decisions["line"].iloc[i]) if "line" in decisions else i + 1, str(decisions["timestamp"].iloc[i]), reasons[i])
        for i in np.flatnonzero(~matched)])
    out = decisions[matched].reset_index(drop=True)
    bar = pos[matched]
    out["bar_index"] = bar
    out["bar_open"] = bars.index[bar]
    out["bar_close"] = pd.DatetimeIndex(closes[bar].view("datetime64[ns]")).tz_localize("UTC")
    out["segment"] = np.asarray(segments)[bar]
    _add_labels(out, labels, bar, horizon)
    out.attrs = {"source": decisions.attrs.get("source"), "join_report": report}
    if report.unmatched:
        warnings.warn(str(report), stacklevel=2)
    return out


def _unmatched_reasons(decisions, bars, closes, t, pos, stale_minutes, check_symbol) -> list[str | None]:
    reasons: list[str | None] = [None] * len(t)
    bars_symbol = bars.attrs.get("symbol")
    symbols = decisions["symbol"].astype(str).to_numpy()
    for i in range(len(t)):
        if check_symbol and bars_symbol and not _same_root(symbols[i], str(bars_symbol)):
            reasons[i] = f"symbol {symbols[i]} is not the bars' {bars_symbol}"
        elif pos[i] < 0:
            reasons[i] = "no bar had closed yet (before the bars start)"
        elif (t[i] - closes[pos[i]]) > stale_minutes * _NS_PER_MINUTE:
            age = (t[i] - closes[pos[i]]) / _NS_PER_MINUTE
            where = "after the bars end" if pos[i] == len(closes) - 1 else "in a gap in the bars"
            reasons[i] = f"{where}: the last closed bar closed {age:.0f} min earlier"
    return reasons


def _add_labels(out: pd.DataFrame, labels: pd.DataFrame | None, bar: np.ndarray, horizon: int) -> None:
    side = out["side"].to_numpy()
    for h in _horizons(labels):
        long_ = labels[f"win_long_{h}"].to_numpy(dtype=float)[bar]
        short = labels[f"win_short_{h}"].to_numpy(dtype=float)[bar]
        out[f"win_{h}"] = np.where(side > 0, long_, short)
    if labels is not None and f"win_{horizon}" not in out:
        raise DataError(f"labels have no win_long_{horizon}/win_short_{horizon} columns "
                        f"(horizons found: {_horizons(labels) or 'none'})", where="join_decisions")
    from_bars = out[f"win_{horizon}"].to_numpy() if labels is not None else np.full(len(out), np.nan)
    pnl = out["pnl"].to_numpy(dtype=float)
    has_outcome = np.isfinite(pnl)
    out["win"] = np.where(has_outcome, (pnl > 0).astype(float), from_bars)
    out["label_source"] = np.where(has_outcome, "outcome", np.where(np.isfinite(from_bars), "bars", "none"))
