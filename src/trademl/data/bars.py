"""Bars in: read, validate, repair and resample minute bars.

The result is the bars frame every later step takes: indexed by a tz-aware UTC
``DatetimeIndex`` named ``timestamp`` holding the bar-OPEN time (nanosecond unit, which
``trademl.segments`` relies on), float64 columns open, high, low, close and volume
(volume absent when the file has none), an optional string column ``contract``, and any
extra numeric columns of the file as float64. ``attrs`` carries ``symbol`` and ``source``.

Accepted shapes: CSV/TXT with or without a header, ``,`` ``;`` tab or ``|`` separated,
gzip/bz2/xz by extension, and Parquet. Timestamps may be ISO strings with or without an
offset, ``YYYYMMDD HHMMSS``, ``YYYYMMDD HH:MM:SS``, ``MM/DD/YYYY HH:MM``, separate date and
time columns, or unix seconds / milliseconds / microseconds / nanoseconds (told apart by
magnitude). Naive stamps are read in ``tz`` (default UTC) and converted to UTC.

Every row is checked; a bad row is an error naming the file, its 1-based line (row for
Parquet) and the problem, unless ``repair=True``, which drops it and says so in a
``RepairReport``. Stamps must lie in ``STAMP_RANGE`` (1678 .. 2261: what nanosecond stamps
hold, with a margin) and numbers below float32's largest value; NaN and inf prices are bad
rows. Decimal commas (``1234,50``) are read with ``;``, tab or ``|`` separators or when
quoted; in an unquoted ``,``-separated file they are refused by line, never read as two
integers. A line over 1,000,000 characters in the first lines is refused at once, and no
message quotes more than about 200 characters of a bad value.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import gzip
import lzma
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd

from trademl.config import resolve_config
from trademl.data.bad_prints import BadPrintRule, find_bad_prints
from trademl.segments import segment_ids
from trademl.errors import DataError
from trademl.segments import segment_start_mask

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = (*PRICE_COLUMNS, "volume")
_NAT = np.iinfo(np.int64).min
_NS_PER_MINUTE = 60_000_000_000
# Stamps outside this span are refused by name: pandas' nanosecond stamps end in 1677 and
# 2262, and a margin keeps bar arithmetic (a bucket end, a horizon) from overflowing.
_MIN_NS = int(pd.Timestamp("1678-01-01").value)
_MAX_NS = int(pd.Timestamp("2262-01-01").value)
_OUT_OF_RANGE = np.iinfo(np.int64).max  # internal marker: a readable stamp outside the span
STAMP_RANGE = "1678-01-01 .. 2261-12-31"
# float32 is what the models take: a value it cannot hold is refused, not silently made missing
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_RESAMPLE_MINUTES = 7 * 24 * 60  # a week of minutes
_MAX_LINE_CHARS = 1_000_000  # a longer line in the sniffed head: not a bars file
_ECHO_CHARS = 200  # at most this much of a bad value is quoted in a message
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d+,\d+\s*")
_DECIMAL_COMMA_ONE = r"^([+-]?\d+),(\d+)$"

# Header names are normalised (lower case, '<>' and quotes stripped, spaces and dashes
# to '_') and then looked up here. The first alias found wins.
_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "timestamp_utc", "datetime", "datetime_utc", "date_time", "time_utc",
                  "ts", "dt", "bar_time", "open_time", "time_stamp"),
    "date": ("date", "day", "trade_date"),
    "time": ("time", "time_of_day", "bar_time_of_day"),
    "open": ("open", "o", "open_price", "first", "opening_price"),
    "high": ("high", "h", "high_price", "max"),
    "low": ("low", "l", "low_price", "min"),
    "close": ("close", "c", "close_price", "last", "closing_price"),
    "volume": ("volume", "vol", "v", "tick_volume", "tickvol", "qty", "quantity", "size"),
    "contract": ("contract", "contract_yyyymm", "contract_month", "expiry", "symbol", "ticker", "instrument"),
}

_TEXT_SUFFIXES = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_SNIFF_LINES = 200


# --------------------------------------------------------------------------- reports


class DroppedRow(NamedTuple):
    """One row that repair removed: where it was, its stamp as written, and why."""

    line: int
    stamp: str | None
    reason: str


class ClippedRow(NamedTuple):
    """One bad print that repair mended in place (``[data] bad_print_repair = "clip"``)."""

    line: int
    stamp: str | None
    reason: str


class RepairReport(dict):
    """What ``repair=True`` dropped from a file, and the bad prints it clipped. ``print(report)`` shows it.

    A plain dict underneath (source, rows_read, unit, dropped, clipped), because it travels in
    ``bars.attrs`` and pandas writes attrs as JSON when the frame is saved to Parquet.
    """

    def __init__(self, source, rows_read: int = 0, dropped=(), unit: str = "line", clipped=()):
        # unit: "line" for text files, "row" for Parquet, where there are no lines
        super().__init__(source=str(source), rows_read=int(rows_read), unit=unit,
                         dropped=[DroppedRow(*d) for d in dropped], clipped=[ClippedRow(*c) for c in clipped])

    source = property(lambda self: self["source"])
    unit = property(lambda self: self["unit"])
    dropped = property(lambda self: self["dropped"], doc="list of DroppedRow, in file order")
    clipped = property(lambda self: self["clipped"], doc="list of ClippedRow (bad prints mended), in file order")

    @property
    def rows_read(self) -> int:
        return self["rows_read"]

    @rows_read.setter
    def rows_read(self, value: int) -> None:
        self["rows_read"] = int(value)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - len(self.dropped)

    def reasons(self) -> Counter:
        """How many rows were dropped per kind of problem (the reason without its details)."""
        return Counter(re.match(r"[^\d'\"(:]*", d.reason).group().strip() for d in self.dropped)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.dropped, columns=list(DroppedRow._fields))

    def extend(self, other: RepairReport) -> None:
        """Fold the report of a later chunk of the same file into this one."""
        self.rows_read += other.rows_read
        self.dropped.extend(other.dropped)
        self.clipped.extend(other.clipped)

    def __str__(self, limit: int = 20) -> str:
        head = f"{self.source}: read {self.rows_read} rows, dropped {len(self.dropped)}"
        if self.clipped:
            head += f", clipped {len(self.clipped)} bad print(s)"
        if not self.dropped and not self.clipped:
            return head + " (nothing to repair)"
        kinds = ", ".join(f"{n} {k}" for k, n in self.reasons().most_common())
        lines = [f"{head}: {kinds}" if kinds else head, *self._listed(self.dropped, "", limit),
                 *self._listed(self.clipped, "clipped ", limit)]
        return "\n".join(lines)

    def _listed(self, rows, verb: str, limit: int) -> list[str]:
        shown = [f"  {verb}{self.unit} {d.line}: {d.reason}" + (f" [{d.stamp}]" if d.stamp else "") for d in rows[:limit]]
        return shown + ([f"  ... and {len(rows) - limit} more"] if len(rows) > limit else [])


# --------------------------------------------------------------------------- timestamps

# Fixed-format stamps: (regex the text must match, strptime format).
_STAMP_FORMATS = (
    (r"\d{14}", "%Y%m%d%H%M%S"),
    (r"\d{12}", "%Y%m%d%H%M"),
    (r"\d{8}", "%Y%m%d"),
    (r"\d{8} \d{6}", "%Y%m%d %H%M%S"),
    (r"\d{8}T\d{6}", "%Y%m%dT%H%M%S"),
    (r"\d{8} \d{4}", "%Y%m%d %H%M"),
    (r"\d{8} \d{1,2}:\d{2}:\d{2}", "%Y%m%d %H:%M:%S"),
    (r"\d{8} \d{1,2}:\d{2}", "%Y%m%d %H:%M"),
    (r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2}", "%m/%d/%Y %H:%M:%S"),
    (r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}", "%m/%d/%Y %H:%M"),
    (r"\d{1,2}/\d{1,2}/\d{4}", "%m/%d/%Y"),
)
_ISO_RE = r"\d{4}-\d{2}-\d{2}([ T].*)?"
_OFFSET_RE = r".*(Z|[+-]\d{2}:?\d{2})"
_EPOCH_RE = r"\d+(\.\d*)?"


def _share(sample: pd.Series, regex: str) -> float:
    """Share of the sample that matches: one garbage line must not change how a file is read."""
    return float(sample.str.fullmatch(regex).mean()) if len(sample) else 0.0


def _majority(sample: pd.Series, regex: str) -> bool:
    return _share(sample, regex) > 0.5


def _epoch_to_ns(text: pd.Series) -> np.ndarray:
    """Unix stamps; the unit (s, ms, us, ns) is told by the magnitude of the median."""
    numbers = pd.to_numeric(text, errors="coerce")
    median = np.nanmedian(np.abs(numbers.to_numpy(dtype=float))) if numbers.notna().any() else 0.0
    factor = next(f for limit, f in ((1e11, 10**9), (1e14, 10**6), (1e17, 10**3), (np.inf, 1)) if median < limit)
    values = numbers.to_numpy(dtype=float)
    out = np.full(len(values), _NAT, dtype=np.int64)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values * factor
        ok = finite & (scaled >= _MIN_NS) & (scaled < _MAX_NS)
    out[finite & ~ok] = _OUT_OF_RANGE  # would overflow the int64 nanoseconds
    if numbers.dtype.kind in "iu":  # exact for ns-scale integers, which float64 would round
        out[ok] = numbers.to_numpy()[ok].astype(np.int64) * factor
    else:
        out[ok] = np.round(values[ok] * factor).astype(np.int64)
    return out


def _index_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """int64 ns of any-unit stamps; NaT stays NaT, a stamp outside the span is marked, not raised."""
    unit = np.datetime_data(index.dtype.base if hasattr(index.dtype, "base") else index.dtype)[0]
    per = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}.get(unit)
    if per is None:
        return index.as_unit("ns").asi8
    raw = index.asi8
    out = np.full(len(raw), _NAT, dtype=np.int64)
    present = ~np.asarray(index.isna())
    inside = present & (raw >= -(-_MIN_NS // per)) & (raw < _MAX_NS // per)
    out[present & ~inside] = _OUT_OF_RANGE
    out[inside] = raw[inside] * per
    return out


def _localize(naive: pd.DatetimeIndex, tz: str | None) -> pd.DatetimeIndex:
    """Naive local stamps -> UTC. A local time of the spring gap does not exist: NaT (the row is then
    refused by line). One of the autumn's repeated hour is told by order (:func:`_first_copy`)."""
    if tz in (None, "UTC", "utc"):
        return naive.tz_localize("UTC")
    far = _index_ns(naive) == _OUT_OF_RANGE
    if far.any():  # pandas cannot localize year 9999 in a zone: stand in a year-1000 stamp, still out of range
        unit = np.datetime_data(naive.dtype)[0]
        naive = pd.DatetimeIndex(np.where(far, np.datetime64("1000-01-01", unit), naive.to_numpy()))
    return naive.tz_localize(tz, ambiguous=_first_copy(naive, tz), nonexistent="NaT").tz_convert("UTC")


def _first_copy(naive: pd.DatetimeIndex, tz: str) -> np.ndarray:
    """For each stamp, True when it is read in daylight time: what ``tz_localize(ambiguous=)`` takes.

    In the repeated hour of an autumn night a naive 01:30 is two instants. Bars come in time
    order, so a stamp of that hour is the first (daylight) copy unless an earlier row of the
    same hour already reached or passed it: the clock went back, and it and every later stamp of
    that hour are the second (standard) copy. A lone copy with no earlier one is read as the first.
    """
    flags = np.ones(len(naive), dtype=bool)
    ambiguous = pd.isna(naive.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")) & ~pd.isna(naive)
    if not ambiguous.any():
        return flags
    idx = np.flatnonzero(ambiguous)
    values = naive[idx].asi8
    days = naive[idx].normalize().asi8
    for day in np.unique(days):
        rows = days == day
        v = values[rows]
        seen = np.maximum.accumulate(v)
        went_back = np.concatenate([[False], seen[:-1] >= v[1:]])
        flags[idx[rows]] = ~np.logical_or.accumulate(went_back)
    return flags


def parse_timestamps(values, *, tz: str | None = None, mixed: bool = False) -> np.ndarray:
    """Timestamps in any accepted shape -> int64 ns since epoch, UTC; unreadable -> NaT.

    The shape is the one most of the values have; ``mixed=True`` (for hand-written logs)
    then reads the values left over with the next best shape, and so on. ``tz`` is the
    zone of naive stamps (default UTC); stamps with an offset keep theirs. A stamp outside
    ``STAMP_RANGE`` (year 1600, 2300, an overflowing unix number) is NaT too.
    """
    return _public(_parse_stamps(values, tz=tz, mixed=mixed))


def _public(ns: np.ndarray) -> np.ndarray:
    return np.where(ns == _OUT_OF_RANGE, _NAT, ns)


def _parse_stamps(values, *, tz: str | None = None, mixed: bool = False) -> np.ndarray:
    """:func:`parse_timestamps`, with stamps outside the span marked ``_OUT_OF_RANGE``."""
    s = pd.Series(values).reset_index(drop=True)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return _index_ns(pd.DatetimeIndex(s).tz_convert("UTC"))
    if s.dtype.kind == "M":
        return _index_ns(_localize(pd.DatetimeIndex(s), tz))
    if s.dtype.kind in "iuf":
        # integers that are really YYYYMMDD[HHMM[SS]] stamps go through the text path
        as_int = s.dropna()
        if len(as_int) and (as_int % 1 == 0).all() and as_int.astype("int64").astype(str).str.len().isin([8, 12, 14]).all():
            s = s.astype("Int64").astype("string")
        else:
            return _epoch_to_ns(s)
    text = s.astype("string").str.strip()
    out = np.full(len(text), _NAT, dtype=np.int64)
    todo = np.ones(len(text), dtype=bool)
    for _ in range(len(_STAMP_FORMATS) + 2 if mixed else 1):
        sample = text[todo].dropna()
        sample = sample[sample != ""].head(_SNIFF_LINES)
        reader = _best_reader(sample, tz)
        if reader is None:
            break
        idx = np.flatnonzero(todo)
        out[idx] = reader(text[todo].reset_index(drop=True))
        todo[idx[out[idx] != _NAT]] = False  # out of range counts as read: its shape was right
        if not todo.any():
            break
    return out


def _best_reader(sample: pd.Series, tz: str | None):
    """The reader of the stamp shape most of the sample has (ISO first on a tie)."""
    candidates = [(_ISO_RE, lambda t: _parse_iso(t, sample, tz))]
    candidates += [(regex, lambda t, f=fmt: _parse_fixed(t, f, tz)) for regex, fmt in _STAMP_FORMATS]
    candidates += [(_EPOCH_RE, _epoch_to_ns)]
    shares = [_share(sample, regex) for regex, _ in candidates]
    best = int(np.argmax(shares)) if shares else 0
    return candidates[best][1] if shares and shares[best] > 0 else None


def _parse_fixed(text: pd.Series, fmt: str, tz: str | None) -> np.ndarray:
    parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    if fmt.startswith("%m/%d") and parsed.isna().sum() > text.isna().sum():
        day_first = pd.to_datetime(text, format=fmt.replace("%m/%d", "%d/%m"), errors="coerce")
        if day_first.isna().sum() < parsed.isna().sum():  # 25/01/2024 is day-first
            parsed = day_first
    return _index_ns(_localize(pd.DatetimeIndex(parsed), tz))


def _parse_iso(text: pd.Series, sample: pd.Series, tz: str | None) -> np.ndarray:
    has_offset = _majority(sample, _OFFSET_RE)
    try:
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=has_offset)
    except (ValueError, TypeError):  # a mix of offsets and naive stamps
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    index = pd.DatetimeIndex(parsed)
    index = index.tz_convert("UTC") if index.tz is not None else _localize(index, tz)
    return _index_ns(index)


# --------------------------------------------------------------------------- layout


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().strip("\"'<>").strip().lower())


def _map_columns(names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Canonical column -> position, plus the other columns (name -> position)."""
    normal = [_normalise_name(n) for n in names]
    found: dict[str, int] = {}
    for canonical, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in normal and normal.index(alias) not in found.values():
                found[canonical] = normal.index(alias)
                break
    if "timestamp" not in found and "date" not in found and "time" in found:
        found["timestamp"] = found.pop("time")  # a lone 'time' column holds the whole stamp
    extras = {normal[i]: i for i in range(len(names)) if i not in found.values() and normal[i]}
    return found, extras


@dataclass(frozen=True)
class _Layout:
    """How a text file is read, decided once from its first lines."""

    delimiter: str
    skiprows: int  # lines before the first data line (blank lines + header)
    n_fields: int
    columns: dict[str, int]
    extras: dict[str, int]
    stamps_at_close: bool  # NinjaTrader (headerless ';', YYYYMMDD HHMMSS) labels bars at their close
    quoted: bool
    preamble: tuple[int, ...] = ()  # 1-based lines before the first well-formed one: reported as bad
    decimal: str = "."  # "," for files that write 1234,50 (with ';', tab or '|' separators, or quoted)
    utc_header: bool = False  # the stamp column's name says UTC (timestamp_utc): naive stamps are UTC by name


def _open_text(path: Path):
    opener = _TEXT_SUFFIXES.get(path.suffix.lower())
    return opener(path, "rt", encoding="utf-8-sig", newline="") if opener else open(path, encoding="utf-8-sig", newline="")


def _read_head(path: Path) -> list[str]:
    """The first lines, each read with a bound: a huge line (or a file with no newline) is refused fast."""
    try:
        lines: list[str] = []
        with _open_text(path) as f:
            while len(lines) < _SNIFF_LINES + 50:
                line = f.readline(_MAX_LINE_CHARS + 1)
                if not line:
                    break
                if len(line) > _MAX_LINE_CHARS:
                    raise DataError(f"line longer than {_MAX_LINE_CHARS:,} characters (not a bars file?): "
                                    f"{line[:80]!r}...", where=f"{path}, line {len(lines) + 1}")
                lines.append(line)
        return lines
    except FileNotFoundError:
        raise DataError("file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"cannot read as text: {e}", where=str(path)) from None


def _is_number(token: str) -> bool:
    try:
        float(token.strip().strip("\"'"))
        return True
    except ValueError:
        return False


def _split(line: str, delimiter: str) -> list[str]:
    """A line's fields; a quoted field ("1234,5") is one field, quotes kept off."""
    if '"' not in line:
        return line.split(delimiter)
    try:
        return next(csv.reader([line], delimiter=delimiter), [""])
    except csv.Error:
        return line.split(delimiter)


def _field_count(line: str, delimiter: str) -> int:
    """Fields on a line, not counting empty ones at its end (some tools end lines with a separator)."""
    if '"' in line:
        fields = _split(line.rstrip(), delimiter)
        while len(fields) > 1 and not fields[-1].strip():
            fields.pop()
        return len(fields)
    return line.rstrip().rstrip(delimiter).count(delimiter) + 1


def _decimal_mark(lines: list[str], delimiter: str, columns: dict[str, int]) -> str:
    """',' when the sampled price fields write decimals as 1234,50 (and none as 1234.50), else '.'."""
    hits = dots = 0
    for line in lines:
        if not line.strip():
            continue
        fields = _split(line, delimiter)
        cells = [fields[columns[c]].strip().strip('"') for c in PRICE_COLUMNS if columns.get(c, len(fields)) < len(fields)]
        hits += sum(_DECIMAL_COMMA.fullmatch(c) is not None for c in cells)
        dots += sum("." in c for c in cells)
    # some tools write whole prices bare (4003) and only the others with a comma (4002,75)
    return "," if hits and not dots else "."


def _refuse_split_decimals(path: Path, lines: list[str], first: int, columns: dict[str, int]) -> None:
    """A headerless ','-separated file whose prices only make sense as pairs (1234,50 split in
    two): most rows fail as open, high, low, close, and nearly all pass read as decimals."""
    start = columns.get("open")
    rows = [ln.rstrip("\r\n").split(",") for ln in lines if ln.strip()][:_SNIFF_LINES]
    if start is None or not rows:
        return

    def valid(o, h, lo, c):
        return lo > 0 and h >= max(o, c) and lo <= min(o, c)

    bad_as_is = good_as_pairs = 0
    for f in rows:
        try:
            as_is = [float(f[start + k]) for k in range(4)]
        except (ValueError, IndexError):
            continue
        bad_as_is += not valid(*as_is)
        parts = f[start:start + 8]
        if len(parts) == 8 and all(re.fullmatch(r"\s*[+-]?\d+\s*", x) for x in parts):
            good_as_pairs += valid(*(float(f"{parts[2 * k].strip()}.{parts[2 * k + 1].strip()}") for k in range(4)))
    if bad_as_is > len(rows) / 2 and good_as_pairs > 0.9 * len(rows):
        raise DataError(
            "the prices read as open, high, low, close fail on most lines but make valid bars read in pairs: "
            f"decimals written with commas (1234,50) in a ','-separated file cannot be read: {_clip(lines[0].strip(), 120)!r}",
            where=f"{path}, line {first + 1}", hint="export with '.' decimals, or with ';' separators")


def _refuse_comma_decimals(path: Path, head: list[str], nonblank: list[int], first: int, n_fields: int) -> None:
    """A ','-separated file whose header names the bar columns but whose rows have more fields:
    decimals written with commas (1234,50) split every price in two. Refused, never read as
    integers."""
    for i in nonblank:
        if i >= first:
            return
        fields = head[i].split(",")
        columns, _ = _map_columns(fields)
        if all(c in columns for c in PRICE_COLUMNS) and len(fields) < n_fields:
            raise DataError(
                f"the header (line {i + 1}) names {len(fields)} columns but the rows have {n_fields} fields: "
                f"decimals written with commas (1234,50) in a ','-separated file cannot be read: "
                f"{_clip(head[first], 120)!r}", where=f"{path}, line {first + 1}",
                hint="export with '.' decimals, or with ';' separators")


def _sniff_delimiter(lines: list[str]) -> tuple[str, int]:
    """The separator most sample lines agree on, and the field count they agree on.

    Voting over many lines, not trusting the first, keeps a garbage line at the top from
    deciding how the whole file is read.
    """
    best, best_votes, best_fields = "", 0, 0
    for d in (",", ";", "\t", "|"):
        counts = Counter(_field_count(line, d) - 1 for line in lines)
        n, votes = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        # too few fields for a bar is reported later, by name; on a tie the separator that
        # makes more fields wins (2024-01-02;1234,50;... is ';'-separated, not ',')
        if n >= 1 and (votes, n + 1) > (best_votes, best_fields):
            best, best_votes, best_fields = d, votes, n + 1
    return best, best_fields


def _sniff_layout(path: Path) -> _Layout:
    head = [line.rstrip("\r\n") for line in _read_head(path)]
    nonblank = [i for i, line in enumerate(head) if line.strip()]
    if not nonblank:
        raise DataError("the file is empty: no bars", where=str(path))
    delimiter, n_fields = _sniff_delimiter([head[i] for i in nonblank])
    if not delimiter:
        raise DataError("cannot tell the column separator (expected ',', ';', tab or '|')",
                        where=f"{path}, line {nonblank[0] + 1}")
    first = next(i for i in nonblank if _field_count(head[i], delimiter) == n_fields)
    if delimiter == ",":
        _refuse_comma_decimals(path, head, nonblank, first, n_fields)
    preamble = tuple(i + 1 for i in nonblank if i < first)
    line = head[first]
    fields = _split(line, delimiter)
    quoted = any('"' in head[i] for i in nonblank)
    # a data line has at least 4 prices (1234,50 is a price too, in a file with decimal commas)
    has_header = sum(_is_number(f) or _DECIMAL_COMMA.fullmatch(f.strip().strip('"')) is not None for f in fields) < 4
    if has_header:
        columns, extras = _map_columns(fields)
        skiprows = first + 1
    else:
        columns, extras = _headerless_columns(path, fields, first)
        skiprows = first
    _check_required(columns, fields if has_header else None, path)
    extras = _numeric_extras(head[skiprows:], delimiter, extras, path)
    stamps_at_close = (not has_header and delimiter == ";"
                   and re.fullmatch(r"\d{8} \d{6}", fields[0].strip()) is not None)
    decimal = _decimal_mark(head[skiprows:], delimiter, columns)
    if delimiter == "," and not has_header and not quoted:
        _refuse_split_decimals(path, head[skiprows:], skiprows, columns)
    stamp_col = columns.get("timestamp", columns.get("date"))
    utc_header = has_header and stamp_col is not None and "utc" in _normalise_name(fields[stamp_col])
    return _Layout(delimiter, skiprows, len(fields), columns, extras, stamps_at_close, quoted, preamble, decimal,
                   utc_header)


def _headerless_columns(path: Path, fields: list[str], first: int) -> tuple[dict[str, int], dict[str, int]]:
    """Positional layout: stamp (or date, time), open, high, low, close[, volume[, more]]."""
    split_time = (len(fields) >= 6
                  and re.fullmatch(r"\d{8}|\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{4}", fields[0].strip()) is not None
                  and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?|\d{4}|\d{6}", fields[1].strip()) is not None)
    start = 2 if split_time else 1
    if len(fields) < start + 4:
        raise DataError(
            f"{len(fields)} fields and no header; a headerless bars file needs "
            "timestamp, open, high, low, close[, volume]", where=f"{path}, line {first + 1}")
    columns = {"date": 0, "time": 1} if split_time else {"timestamp": 0}
    columns |= {name: start + k for k, name in enumerate(BAR_COLUMNS) if start + k < len(fields)}
    extras = {f"column_{i + 1}": i for i in range(start + 5, len(fields))}
    return columns, extras


def _check_required(columns: dict[str, int], header: list[str] | None, path: Path) -> None:
    has_stamp = "timestamp" in columns or "date" in columns
    missing = [c for c in PRICE_COLUMNS if c not in columns] + ([] if has_stamp else ["timestamp"])
    if missing:
        found = f" (columns found: {_clip(', '.join(h.strip() for h in header))})" if header else ""
        raise DataError(f"missing required column(s) {', '.join(missing)}{found}", where=str(path),
                        hint="a bars file needs timestamp, open, high, low, close and ideally volume")


def _numeric_extras(lines: list[str], delimiter: str, extras: dict[str, int], path: Path) -> dict[str, int]:
    """Keep the extra columns that hold numbers (exogenous signals); say which are ignored."""
    rows = [ln.rstrip("\r\n").split(delimiter) for ln in lines if ln.strip()]
    kept = {}
    for name, pos in extras.items():
        values = [r[pos].strip().strip('"') for r in rows if pos < len(r) and r[pos].strip()]
        if values and sum(_is_number(v) for v in values) > 0.9 * len(values):
            kept[name] = pos
        elif values:
            warnings.warn(f"{path}: ignoring non-numeric column {name!r}", stacklevel=4)
    return kept


# --------------------------------------------------------------------------- raw chunks


@dataclass
class _Raw:
    """A chunk as read: canonical columns (not yet typed), line numbers, shape problems."""

    frame: pd.DataFrame
    lines: np.ndarray
    shape_problems: np.ndarray  # object array: None or a reason found while reading
    blank: np.ndarray  # blank lines carry no data and are skipped, not reported


def _csv_chunks(path: Path, layout: _Layout, chunk_rows: int | None) -> Iterator[_Raw]:
    done = 0
    try:
        for raw in _csv_chunks_with(path, layout, chunk_rows, engine="c"):
            done += 1
            yield _with_preamble(raw, layout) if done == 1 else raw
    except pd.errors.ParserError:
        # a line with many more fields than the others stops the fast parser; the python
        # parser cuts such lines down so they are reported (or dropped) like any bad row.
        # It cuts the same rows into the same chunks, so the ones already given are skipped.
        for k, raw in enumerate(_csv_chunks_with(path, layout, chunk_rows, engine="python")):
            if k >= done:
                yield _with_preamble(raw, layout) if k == 0 else raw


def _with_preamble(raw: _Raw, layout: _Layout) -> _Raw:
    """Put the malformed lines above the first good line in front of the first chunk, as bad rows."""
    if not layout.preamble:
        return raw
    n = len(layout.preamble)
    filler = raw.frame.iloc[:0].reindex(range(n))  # all missing, same column types
    frame = pd.concat([filler, raw.frame], ignore_index=True)
    reason = f"does not look like a header or a bar (not {layout.n_fields} fields separated by {layout.delimiter!r})"
    problems = np.concatenate([np.full(n, reason, dtype=object), raw.shape_problems])
    return _Raw(frame, np.r_[np.asarray(layout.preamble, dtype=np.int64), raw.lines],
                problems, np.r_[np.zeros(n, dtype=bool), raw.blank])


def _csv_chunks_with(path: Path, layout: _Layout, chunk_rows: int | None, engine: str) -> Iterator[_Raw]:
    # Spare names give room for lines with too many fields, so they are reported with
    # their line number instead of stopping the parser; blank lines are kept as rows so
    # that row i is always line skiprows + 1 + i.
    width = layout.n_fields + 4
    text_columns = {layout.columns[c]: "string" for c in ("timestamp", "date", "time", "contract") if c in layout.columns}
    options = {"on_bad_lines": lambda fields: fields[:width]} if engine == "python" else {}
    try:
        reader = pd.read_csv(
            path, sep=layout.delimiter, header=None, names=range(width), skiprows=layout.skiprows,
            skip_blank_lines=False, engine=engine, encoding="utf-8-sig", compression="infer",
            quoting=csv.QUOTE_MINIMAL if layout.quoted else csv.QUOTE_NONE,
            chunksize=chunk_rows or None, dtype=text_columns, decimal=layout.decimal,
            keep_default_na=False, na_values=["", "NaN", "nan", "NA", "N/A", "null", "None"], **options,
        )
        for raw in reader if chunk_rows else [reader]:
            yield _raw_from_positions(raw, layout)
    except (UnicodeDecodeError, EOFError, OSError) as e:
        raise DataError(f"cannot read: {e}", where=str(path)) from None


def _raw_from_positions(raw: pd.DataFrame, layout: _Layout) -> _Raw:
    lines = layout.skiprows + 1 + raw.index.to_numpy(dtype=np.int64)
    present = raw.notna().to_numpy()
    first_text = raw[0].astype("string").str.strip()
    blank = ~present[:, 1:].any(axis=1) & (first_text.isna() | (first_text == "")).to_numpy()
    problems = np.full(len(raw), None, dtype=object)
    over = present[:, layout.n_fields:].any(axis=1)
    problems[over] = f"more fields than the {layout.n_fields} of the other lines"
    wanted = layout.columns | layout.extras
    frame = pd.DataFrame({name: raw[pos] for name, pos in wanted.items()})
    frame.index = raw.index
    return _Raw(frame, lines, problems, blank)


def _parquet_chunks(path: Path, chunk_rows: int | None) -> Iterator[_Raw]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read as Parquet: {e}", where=str(path)) from None
    names = pf.schema_arrow.names
    columns, extras = _map_columns(names)
    if "timestamp" not in columns and "date" not in columns and "__index_level_0__" in names:
        columns["timestamp"] = names.index("__index_level_0__")
    _check_required(columns, names, path)
    numeric = {n: p for n, p in extras.items()
               if pa.types.is_integer(pf.schema_arrow.field(p).type) or pa.types.is_floating(pf.schema_arrow.field(p).type)}
    wanted = columns | numeric
    row = 1
    for batch in pf.iter_batches(batch_size=chunk_rows or max(pf.metadata.num_rows, 1)):
        # column by column: to_pandas on the whole batch would turn a stored index into the index
        frame = pd.DataFrame({name: batch.column(pos).to_pandas() for name, pos in wanted.items()})
        n = len(frame)
        yield _Raw(frame, np.arange(row, row + n, dtype=np.int64), np.full(n, None, dtype=object), np.zeros(n, dtype=bool))
        row += n


# --------------------------------------------------------------------------- validation


@dataclass
class _State:
    """What one chunk tells the next: the last good stamp (for order) and the bar period."""

    last_stamp: int = _NAT
    last_line: int = 0
    bar_period_ns: int | None = None
    tail: pd.Series | None = None  # the last stamps as read: the next chunk's local times are told with them


class _Problems:
    """The first problem found in each row (None where the row is fine)."""

    def __init__(self, n: int, initial: np.ndarray | None = None):
        self.reasons = np.full(n, None, dtype=object) if initial is None else initial.copy()
        self.any = np.not_equal(self.reasons, None)

    def flag(self, mask: np.ndarray, reason) -> None:
        """Record ``reason`` (text, or a function of the row) for rows without a problem yet."""
        todo = mask & ~self.any
        if not todo.any():
            return
        idx = np.flatnonzero(todo)
        self.reasons[idx] = [reason(i) for i in idx] if callable(reason) else reason
        self.any[idx] = True


def _numeric(raw: pd.DataFrame, name: str, problems: _Problems, required: bool, decimal_comma: bool = False) -> np.ndarray:
    column = raw[name]
    as_read = column
    if decimal_comma and not pd.api.types.is_numeric_dtype(column):
        # one bad cell leaves the column as text: its good 1234,50 cells still count
        as_read = column.astype("string").str.strip().str.replace(_DECIMAL_COMMA_ONE, r"\1.\2", regex=True)
    values = pd.to_numeric(as_read, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if not required:
        return values
    missing = column.isna().to_numpy()
    bad_text = ~missing & np.isnan(values)
    text = column.to_numpy()
    problems.flag(bad_text, lambda i: f"{name} is not a number: {_quoted(text[i])}")
    problems.flag(missing, f"{name} is missing (empty or NaN)")
    problems.flag(np.isinf(values), f"{name} is infinite")
    with np.errstate(invalid="ignore"):
        huge = np.abs(values) >= _FLOAT32_MAX
    problems.flag(huge, lambda i: f"{name} too large (float32 holds values below {_FLOAT32_MAX:.4g}): {values[i]:.6g}")
    return values


def _check_prices(o, h, lo, c, problems: _Problems) -> None:
    with np.errstate(invalid="ignore"):
        problems.flag((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "non-positive price")
        problems.flag(h < lo, "high < low")
        problems.flag(h < np.maximum(o, c), "high < max(open, close)")
        problems.flag(lo > np.minimum(o, c), "low > min(open, close)")


def _stamp_text(ns: int) -> str:
    return str(pd.Timestamp(ns, tz="UTC")) if ns != _NAT else "?"


def _check_order(stamps: np.ndarray, lines: np.ndarray, problems: _Problems, state: _State) -> None:
    """Duplicated stamps, then stamps that break the increasing order.

    A duplicate keeps its first occurrence. For the order, the longest strictly increasing
    run of stamps is kept and the rows off it are reported: one mistyped stamp then costs
    one row, not every row after it.
    """
    idx = np.flatnonzero(~problems.any)
    s = stamps[idx]
    dup = pd.Series(s).duplicated(keep="first").to_numpy()
    if dup.any():
        uniq, first_pos = np.unique(s, return_index=True)
        first_line = lines[idx[first_pos[np.searchsorted(uniq, s)]]]
        problems.flag(_expand(idx, dup, len(stamps)),
              lambda i: f"duplicated timestamp {_stamp_text(stamps[i])} (first at line {first_line[np.searchsorted(idx, i)]})")
    same_as_before = s == state.last_stamp
    if same_as_before.any():
        problems.flag(_expand(idx, same_as_before, len(stamps)),
              lambda i: f"duplicated timestamp {_stamp_text(stamps[i])} (first at line {state.last_line})")
    idx = np.flatnonzero(~problems.any)
    s = stamps[idx]
    if len(s) and ((s[0] <= state.last_stamp) or (np.diff(s) <= 0).any()):
        keep = _longest_increasing(s, state.last_stamp)
        prev = np.maximum.accumulate(np.where(keep, np.arange(len(s)), -1))
        bad = np.flatnonzero(~keep)
        for j in bad:
            before = prev[j]
            after = (f"line {lines[idx[before]]}'s {_stamp_text(s[before])}" if before >= 0
                     else f"the previous chunk's {_stamp_text(state.last_stamp)}")
            problems.reasons[idx[j]] = f"out of order: timestamp {_stamp_text(s[j])} is not after {after}"
            problems.any[idx[j]] = True
    idx = np.flatnonzero(~problems.any)
    if len(idx):
        state.last_stamp, state.last_line = int(stamps[idx[-1]]), int(lines[idx[-1]])


def _expand(idx: np.ndarray, sub_mask: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[idx[sub_mask]] = True
    return mask


def _longest_increasing(s: np.ndarray, floor: int) -> np.ndarray:
    """Mask of one longest strictly increasing subsequence of s whose values exceed floor."""
    tails: list[int] = []  # tails[k]: smallest last value of an increasing run of length k+1
    tail_pos: list[int] = []
    parent = np.full(len(s), -1, dtype=np.int64)
    for i, v in enumerate(s.tolist()):
        if v <= floor:
            continue
        k = bisect.bisect_left(tails, v)
        parent[i] = tail_pos[k - 1] if k else -1
        if k == len(tails):
            tails.append(v)
            tail_pos.append(i)
        else:
            tails[k], tail_pos[k] = v, i
    keep = np.zeros(len(s), dtype=bool)
    i = tail_pos[-1] if tail_pos else -1
    while i >= 0:
        keep[i] = True
        i = parent[i]
    return keep


def _raise_first(problems: _Problems, lines: np.ndarray, path: Path, unit: str) -> None:
    bad = np.flatnonzero(problems.any)
    if not len(bad):
        return
    first, others = bad[0], bad[1:]
    listed = ", ".join(str(lines[i]) for i in others[:8]) + (", ..." if len(others) > 8 else "")
    tail = (f"; {len(others)} other row(s) also have problems ({unit}s {listed})" if len(others)
            else "; no other row has a problem")
    out_of_order = sum(str(problems.reasons[i]).startswith("out of order") for i in bad[:1000])
    hint = ("the rows look newest-first: sort the file by time, oldest first" if out_of_order > 0.5 * len(lines)
            else "fix the file, or load with repair=True (--repair) to drop bad rows and get a report")
    raise DataError(f"{problems.reasons[first]}{tail}", where=f"{path}, {unit} {lines[first]}", hint=hint)


def _check_bad_prints(prices: dict, stamps: np.ndarray, contract, problems: _Problems, rule: BadPrintRule,
                      clip: bool) -> dict[int, str]:
    """Bad prints among the rows still good: flagged as problems, or with ``clip`` mended in
    ``prices`` in place. Returns {row: what was clipped} (empty unless ``clip``)."""
    ok = np.flatnonzero(~problems.any)
    found = find_bad_prints({c: prices[c][ok] for c in PRICE_COLUMNS}, stamps[ok], rule,
                            None if contract is None else contract[ok])
    rows = ok[found.rows]
    if not len(rows):
        return {}
    if not clip:
        why = dict(zip(rows.tolist(), found.reasons))
        problems.flag(_expand(ok, np.isin(ok, rows), len(stamps)), lambda i: why[int(i)])
        return {}
    for c in PRICE_COLUMNS:
        mended = prices[c].copy()  # the parsed column may be a read-only view
        mended[rows] = found.clipped[c][found.rows]
        prices[c] = mended
    now = ["/".join(f"{prices[c][i]:.10g}" for c in PRICE_COLUMNS) for i in rows]
    return {int(i): f"{why} -> open/high/low/close now {bar}" for i, why, bar in zip(rows, found.reasons, now)}


_TAIL_STAMPS = 120  # two hours of minute bars: more than the repeated autumn hour


def _parse_in_context(text: pd.Series, tz: str | None, state: _State) -> np.ndarray:
    """:func:`_parse_stamps` of one chunk, read after the previous chunk's last stamps: a repeated
    autumn hour that a chunk boundary cuts in two is still told by order (``_first_copy``)."""
    if tz in (None, "UTC", "utc") or state.tail is None or text.dtype != state.tail.dtype:
        stamps = _parse_stamps(text, tz=tz)
    else:
        stamps = _parse_stamps(pd.concat([state.tail, text], ignore_index=True), tz=tz)[len(state.tail):]
    state.tail = text.dropna().tail(_TAIL_STAMPS).reset_index(drop=True)
    return stamps


def _validated(raw: _Raw, path: Path, layout: _Layout | None, tz: str | None, repair: bool,
               state: _State, report: RepairReport, rule: BadPrintRule) -> pd.DataFrame:
    """Type, check and (with repair) clean one chunk; returns the bars frame of the good rows."""
    unit = "line" if layout is not None else "row"
    keep_rows = ~raw.blank
    frame, lines = raw.frame[keep_rows], raw.lines[keep_rows]
    problems = _Problems(len(frame), raw.shape_problems[keep_rows])
    stamp_text = _stamp_source(frame)
    stamps = _parse_in_context(stamp_text, tz, state)
    outside = stamps == _OUT_OF_RANGE
    problems.flag(outside, lambda i: f"timestamp outside the supported range ({STAMP_RANGE}): {_quoted(stamp_text.iloc[i])}")
    stamps[outside] = _NAT
    # in a zone with daylight saving, a well-formed local time can still not exist (spring gap)
    in_zone = f" (or it is not a valid local time in {tz})" if tz not in (None, "UTC", "utc") else ""
    problems.flag(stamps == _NAT, lambda i: f"cannot read timestamp {_quoted(stamp_text.iloc[i])}{in_zone}"
                  if pd.notna(stamp_text.iloc[i]) else "timestamp is missing")
    comma = layout is not None and layout.decimal == ","
    prices = {c: _numeric(frame, c, problems, required=True, decimal_comma=comma) for c in PRICE_COLUMNS}
    volume = _numeric(frame, "volume", problems, required=True, decimal_comma=comma) if "volume" in frame else None
    if volume is not None:
        with np.errstate(invalid="ignore"):
            problems.flag(volume < 0, "negative volume")
    _check_prices(prices["open"], prices["high"], prices["low"], prices["close"], problems)
    # extra numeric columns may be missing (NaN), but not infinite or beyond float32
    extras = {}
    for name in (layout.extras if layout is not None else [c for c in frame if c not in _ALIASES]):
        if name in frame:
            values = extras[name] = _numeric(frame, name, problems, required=False, decimal_comma=comma)
            problems.flag(np.isinf(values), f"{name} is infinite")
            with np.errstate(invalid="ignore"):
                huge = np.isfinite(values) & (np.abs(values) >= _FLOAT32_MAX)
            problems.flag(huge, lambda i, n=name, v=values: f"{n} too large (float32 holds values below {_FLOAT32_MAX:.4g}): {v[i]:.6g}")
    contract = None
    if "contract" in frame:
        text = frame["contract"].astype("string").str.strip()
        problems.flag((text.isna() | (text == "")).to_numpy(dtype=bool, na_value=True), "contract is missing")
        contract = text.to_numpy(dtype=object, na_value=None)
    if layout is not None and layout.stamps_at_close:
        stamps = _shift_close_to_open(stamps, state)
    _check_order(stamps, lines, problems, state)
    clipped = _check_bad_prints(prices, stamps, contract, problems, rule, clip=repair and rule.repair == "clip")
    report.clipped.extend(ClippedRow(int(lines[i]), _stamp_or_none(stamp_text.iloc[i]), why) for i, why in clipped.items())
    report.rows_read += len(frame)
    bad = problems.any
    if bad.any():
        if not repair:
            _raise_first(problems, lines, path, unit)
        report.dropped.extend(DroppedRow(int(lines[i]), _stamp_or_none(stamp_text.iloc[i]), problems.reasons[i])
                              for i in np.flatnonzero(bad))
    good = ~bad
    columns = {c: prices[c][good] for c in PRICE_COLUMNS}
    if volume is not None:
        columns["volume"] = volume[good]
    if contract is not None:
        columns["contract"] = pd.array(contract[good], dtype="str")
    for name, values in extras.items():
        columns[name] = values[good]
    index = pd.DatetimeIndex(stamps[good].view("datetime64[ns]"), name="timestamp").tz_localize("UTC")
    return pd.DataFrame(columns, index=index)


def _as_text(value) -> str:
    return _clip(str(value).strip())


def _stamp_or_none(value) -> str | None:
    return None if pd.isna(value) else _as_text(value)


def _quoted(value) -> str:
    """A bad value quoted in a message, escapes included, at most about ``_ECHO_CHARS`` long."""
    text = str(value).strip()
    shown = repr(text)
    return shown if len(shown) <= _ECHO_CHARS + 2 else f"{shown[:_ECHO_CHARS]}... ({len(text):,} characters)"


def _clip(text: str, limit: int = _ECHO_CHARS) -> str:
    """A bad value as quoted in a message: never more than ``limit`` characters of it."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _stamp_source(frame: pd.DataFrame) -> pd.Series:
    """The stamp column, or date and time joined into one text."""
    if "timestamp" in frame:
        return frame["timestamp"].reset_index(drop=True)
    date = frame["date"].astype("string").str.strip()
    if "time" not in frame:
        return date.reset_index(drop=True)
    time = frame["time"].astype("string").str.strip().str.replace(r"\.0$", "", regex=True)
    digits = time.str.fullmatch(r"\d{1,6}").fillna(False)
    if digits.any():  # 90100 lost its leading zero when a tool stored it as a number
        width = 6 if (time[digits].str.len() > 4).any() else 4
        time = time.where(~digits, time.str.zfill(width))
    return (date + " " + time).reset_index(drop=True)


def _shift_close_to_open(stamps: np.ndarray, state: _State) -> np.ndarray:
    """Bar-close labels -> bar-open labels: back by one bar period (the median spacing)."""
    if state.bar_period_ns is None:
        valid = np.sort(stamps[stamps != _NAT])
        steps = np.diff(valid)
        steps = steps[steps > 0]
        state.bar_period_ns = int(np.median(steps)) if len(steps) else _NS_PER_MINUTE
    out = stamps.copy()
    out[stamps != _NAT] -= state.bar_period_ns
    return out


def _naive(stamp_text: pd.Series) -> bool:
    """Whether a file's stamps carry no zone: text without an offset or local datetimes, not unix
    numbers (UTC by definition) and not zone-aware values."""
    s = stamp_text.dropna()
    if isinstance(s.dtype, pd.DatetimeTZDtype) or not len(s):
        return False
    if s.dtype.kind == "M":
        return True
    text = s.astype("string").str.strip().head(_SNIFF_LINES)
    if _majority(text, _ISO_RE):
        return not _majority(text, _OFFSET_RE)
    return not _majority(text, _EPOCH_RE) or bool(text.str.fullmatch(r"\d{8}|\d{12}|\d{14}").mean() > 0.5)


class NaiveStampWarning(UserWarning):
    """Naive stamps read as UTC because no zone was given (--tz / [data] timezone)."""


def _warn_naive(path, tz: str | None, stamp_text: pd.Series, once: set) -> None:
    """One warning per command (``once`` is shared by every file it reads): naive stamps, no zone."""
    if tz is None and "naive" not in once and _naive(stamp_text):
        once.add("naive")
        warnings.warn(f"{path}: naive timestamps read as UTC; if they are local times give --tz ZONE "
                      "(or [data] timezone), e.g. --tz America/New_York", NaiveStampWarning, stacklevel=4)


# --------------------------------------------------------------------------- public API


def _guess_symbol(path: Path, bars: pd.DataFrame) -> str | None:
    """From the contract column when it names a known root (ESH14, ES201312), else the file name
    (es_...); None when neither does (``trademl.market.contracts.infer_symbol``)."""
    from trademl.market.contracts import infer_symbol

    contract = str(bars["contract"].iloc[-1]) if "contract" in bars and len(bars) else None
    return infer_symbol(contract=contract, path=path)


def _chunks(path, *, symbol, repair, tz, chunk_rows, max_gap_minutes, bar_stamp, bad_prints,
            once: set | None = None) -> Iterator[pd.DataFrame]:
    path = Path(path)
    once = set() if once is None else once
    if not path.exists():
        raise DataError("file not found", where=str(path))
    if bar_stamp not in ("auto", "open", "close"):
        raise DataError(f"bar_stamp must be 'auto', 'open' or 'close', not {bar_stamp!r}", where="bar_stamp")
    check_tz(tz)
    is_parquet = path.suffix.lower() in _PARQUET_SUFFIXES
    layout = None if is_parquet else _sniff_layout(path)
    if layout is not None and bar_stamp != "auto":
        layout = _Layout(**{**vars(layout), "stamps_at_close": bar_stamp == "close"})
    if layout is not None and layout.utc_header:
        tz = "UTC"  # the file says its stamps are UTC (timestamp_utc): a zone for other files does not apply
    raws = _parquet_chunks(path, chunk_rows) if is_parquet else _csv_chunks(path, layout, chunk_rows)
    state = _State()
    warned = False
    rule = _bad_print_rule(bad_prints, max_gap_minutes)
    for raw in raws:
        report = RepairReport(str(path), unit="row" if is_parquet else "line")
        bars = _validated(raw, path, layout, tz, repair, state, report, rule)
        if len(bars):  # after the rows passed: an error comes alone
            _warn_naive(path, tz, _stamp_source(raw.frame[~raw.blank]), once)
        if "volume" not in bars and not warned:
            warnings.warn(f"{path}: no volume column; volume features will be left out", stacklevel=3)
            warned = True
        bars.attrs["symbol"] = symbol or _guess_symbol(path, bars)
        bars.attrs["source"] = str(path)
        bars.attrs["max_gap_minutes"] = max_gap_minutes
        shifted = layout is not None and layout.stamps_at_close
        bars.attrs["bar_stamp"] = (f"close, moved back {state.bar_period_ns / _NS_PER_MINUTE:g} min to the open"
                                   if shifted else "open")
        if repair:
            bars.attrs["repair_report"] = report
        yield bars


def _bad_print_rule(rule: BadPrintRule | None, max_gap_minutes: float) -> BadPrintRule:
    """The given rule, else [data]'s; either way with the gap that cuts segments here."""
    rule = rule or BadPrintRule.from_config(resolve_config().data)
    return BadPrintRule(rule.mads, rule.reopen_mads, rule.window, rule.repair, max_gap_minutes)


def load_bars(path, *, symbol: str | None = None, repair: bool = False, tz: str | None = None,
              max_gap_minutes: float | None = None, bar_stamp: str = "auto",
              bad_prints: BadPrintRule | None = None) -> pd.DataFrame:
    """Read a bars file into the bars frame; every row is validated.

    ``path``: one file, a list of files or a glob pattern (``"nq_2024Q*.csv"``): several files are
    read one by one and merged in time order (:func:`merge_bars`).
    ``tz`` is the zone of naive stamps (None: [data] timezone, else UTC with one warning). ``repair=True`` drops bad rows
    (keeping the first of duplicated stamps) and attaches a printable ``RepairReport`` as
    ``bars.attrs["repair_report"]``; otherwise the first bad row raises ``DataError``
    naming the file, line and problem, and counting the others.

    NinjaTrader minute exports (no header, ``;``, ``YYYYMMDD HHMMSS``) label each bar with
    its CLOSE time; they are shifted back one bar period (the median spacing) so that the
    index is the bar-open time like every other source. ``bar_stamp="open"`` or ``"close"``
    overrides that guess for any text file.
    ``max_gap_minutes`` (None: [data] max_gap_minutes) is recorded in ``attrs`` for ``describe_bars``.
    Bad prints (``trademl.data.bad_prints``) are bad rows too; ``bad_prints`` (None: [data]
    bad_print_*) sets the check, and whether repair clips them (listed in the report's
    ``clipped``) or drops them.
    """
    cfg = resolve_config()
    max_gap_minutes = cfg.data.max_gap_minutes if max_gap_minutes is None else max_gap_minutes
    tz = cfg.data.timezone if tz is None else tz
    once: set = set()  # one naive-stamp warning for all the files
    frames = []
    for one in bar_paths(path):
        got = list(_chunks(one, symbol=symbol, repair=repair, tz=tz, chunk_rows=None, max_gap_minutes=max_gap_minutes,
                           bar_stamp=bar_stamp, bad_prints=bad_prints, once=once))
        if not got or got[0].empty:
            raise no_bars_error(one, got[0].attrs.get("repair_report") if got else None)
        frames.append(got[0])
    return frames[0] if len(frames) == 1 else merge_bars(frames)


def bar_paths(source) -> list[Path]:
    """One file, several (a list), or glob patterns -> the files to read, each pattern's matches in
    name order; a pattern that matches nothing is an error naming it."""
    import glob

    items = [source] if isinstance(source, (str, Path)) or not hasattr(source, "__iter__") else list(source)
    if not items:
        raise DataError("no bars file given", where="bars")
    out: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text) and not Path(text).exists():
            matches = sorted(glob.glob(text))
            if not matches:
                raise DataError("no file matches this pattern", where=text)
            out += [Path(m) for m in matches]
        else:
            out.append(Path(item))
    return list(dict.fromkeys(out))  # a file named twice (a pattern and its name) is read once


class MergeReport(list):
    """What merging several files did, one line each (a list of text: it travels in ``attrs``)."""

    def __str__(self) -> str:
        return "\n".join(self)


def merge_bars(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Bars frames of several files -> one, in time order. Files may overlap: a stamp that two files
    both hold must be the same bar in both (prices, volume, contract), and is kept once, counted;
    a conflicting one is an error naming both files. ``attrs["merge_report"]`` says what happened."""
    frames = sorted(frames, key=lambda f: f.index[0])
    sources = [str(f.attrs.get("source")) for f in frames]
    _same_columns(frames, sources)
    symbols = {f.attrs.get("symbol") for f in frames} - {None}
    if len(symbols) > 1:
        raise DataError(f"the files are of different instruments: {sorted(symbols)}", where=", ".join(sources),
                        hint="merge files of one instrument (pass --symbol if the names mislead)")
    stamps = np.concatenate([_ns(f.index) for f in frames])
    owner = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)])
    order = np.argsort(stamps, kind="stable")  # equal stamps: the earlier file first
    merged = pd.concat(frames).iloc[order]
    stamps, owner = stamps[order], owner[order]
    repeat = np.flatnonzero(stamps[1:] == stamps[:-1]) + 1
    _refuse_conflicts(merged, repeat, owner, sources)
    report = MergeReport([f"merged {len(frames)} files in time order: " + "; ".join(
        f"{s} ({len(f):,} bars, {f.index[0]} .. {f.index[-1]})" for s, f in zip(sources, frames))])
    report += _overlaps(frames, sources)
    if len(repeat):
        report.append(f"dropped {len(repeat):,} duplicate bars (the same stamp and values in two files)")
        warnings.warn(f"{len(repeat):,} identical duplicate bars in overlapping files dropped", stacklevel=3)
    keep = np.ones(len(merged), dtype=bool)
    keep[repeat] = False  # the later copy of each repeated bar
    merged = merged[keep]
    merged.attrs = {**frames[0].attrs, "source": ", ".join(sources), "sources": sources, "merge_report": report}
    reports = [f.attrs["repair_report"] for f in frames if "repair_report" in f.attrs]
    if reports:
        merged.attrs["repair_report"] = MergeReport(str(r) for r in reports)
    return merged


def _same_columns(frames: list[pd.DataFrame], sources: list[str]) -> None:
    first = list(frames[0].columns)
    for f, s in zip(frames[1:], sources[1:]):
        if sorted(f.columns) != sorted(first):
            raise DataError(f"the files hold different columns: {sources[0]} has {first}, {s} has {list(f.columns)}",
                            where=f"{sources[0]} and {s}")


def _refuse_conflicts(merged: pd.DataFrame, repeat: np.ndarray, owner: np.ndarray, sources: list[str]) -> None:
    """A stamp held twice must be the same bar both times (NaN equal to NaN)."""
    if not len(repeat):
        return
    for col in merged.columns:
        values = merged[col].to_numpy()
        a, b = values[repeat - 1], values[repeat]
        same = (a == b) | (pd.isna(a) & pd.isna(b))
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            first, second = repeat[i] - 1, repeat[i]
            raise DataError(f"conflicting bars at {merged.index[second]}: {col} is {a[i]!r} in "
                            f"{sources[owner[first]]} but {b[i]!r} in {sources[owner[second]]}",
                            where=f"{sources[owner[first]]} and {sources[owner[second]]}",
                            hint="two files hold different bars for one minute: keep the one you trust")


def _overlaps(frames: list[pd.DataFrame], sources: list[str]) -> list[str]:
    """A line for each file that starts before the files before it end."""
    lines, end, end_source = [], frames[0].index[-1], sources[0]
    for f, s in zip(frames[1:], sources[1:]):
        if f.index[0] <= end:
            lines.append(f"{s} overlaps {end_source} from {f.index[0]} to {min(end, f.index[-1])}")
        if f.index[-1] > end:
            end, end_source = f.index[-1], s
    return lines


def no_bars_error(path, report: RepairReport | None) -> DataError:
    """The error for a file that gives no bars: only a header, or every row dropped by repair."""
    if report is None or report.rows_read == 0:
        return DataError("no bars: the file has no data rows (only a header or blank lines)", where=str(path))
    first = report.dropped[0]
    return DataError(f"no valid bars: repair dropped all {report.rows_read} rows; the first, "
                     f"{report.unit} {first.line}: {first.reason}", where=str(path))


def check_tz(tz: str | None) -> None:
    """Refuse an unknown zone name by name, before any file is read."""
    if tz is None:
        return
    try:
        pd.DatetimeIndex([0]).tz_localize(tz)
    except Exception:  # zoneinfo, pytz and dateutil each raise their own kind
        raise DataError(f"unknown timezone {_clip(tz, 80)!r}", where="--tz",
                        hint="an IANA name such as America/Chicago or Europe/London, or UTC") from None


def check_resample_minutes(minutes) -> int:
    """A resample length the bars can take: a whole number of minutes, 1 .. a week."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, np.integer, float)) or int(minutes) != minutes \
            or not 1 <= minutes <= MAX_RESAMPLE_MINUTES:
        raise DataError(f"resample minutes must be a whole number from 1 to {MAX_RESAMPLE_MINUTES} "
                        f"(a week), not {_clip(repr(minutes), 40)}", where="--resample")
    return int(minutes)


def read_bars_chunks(path, chunk_rows: int, *, symbol: str | None = None, repair: bool = False,
                     tz: str | None = None, max_gap_minutes: float | None = None,
                     bar_stamp: str = "auto", bad_prints: BadPrintRule | None = None) -> Iterator[pd.DataFrame]:
    """Validated bars frames of at most ``chunk_rows`` rows each, for files larger than memory.

    Order and duplicates are checked across chunks too (against the last good stamp of the
    previous chunk). Several files (a list or a glob) are merged whole by :func:`load_bars`, then cut. With ``repair=True`` each frame's ``attrs["repair_report"]`` covers
    its own chunk; fold them with ``RepairReport.extend``. ``max_gap_minutes`` and ``bad_prints`` as in
    :func:`load_bars`; the bad-print window is cut at chunk ends (a chunk's first and last bars are
    judged by their neighbours on one side).
    """
    if max_gap_minutes is None:
        max_gap_minutes = resolve_config().data.max_gap_minutes
    tz = resolve_config().data.timezone if tz is None else tz
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, not {chunk_rows}", where="chunk_rows")
    paths = bar_paths(path)
    if len(paths) > 1:  # several files are merged whole (overlaps need both sides), then cut
        merged = load_bars(paths, symbol=symbol, repair=repair, tz=tz, max_gap_minutes=max_gap_minutes,
                           bar_stamp=bar_stamp, bad_prints=bad_prints)
        for start in range(0, len(merged), int(chunk_rows)):
            chunk = merged.iloc[start:start + int(chunk_rows)]
            chunk.attrs = {k: v for k, v in merged.attrs.items() if start == 0 or k != "repair_report"}
            yield chunk
        return
    yield from _chunks(paths[0], symbol=symbol, repair=repair, tz=tz, chunk_rows=int(chunk_rows),
                       max_gap_minutes=max_gap_minutes, bar_stamp=bar_stamp, bad_prints=bad_prints)


def bundled_sample_path() -> Path:
    """The bundled real ES minute bars (QuantConnect Lean sample, see resources/NOTICE)."""
    return Path(str(resources.files("trademl") / "resources" / "es_1min_lean.csv"))


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    """Stamps as int64 nanoseconds whatever the index unit (pandas 3 often picks us)."""
    return index.as_unit("ns").asi8


def median_bar_minutes(bars: pd.DataFrame) -> float:
    """Median spacing between consecutive bars, in minutes (the bar length)."""
    steps = np.diff(_ns(bars.index))
    steps = steps[steps > 0]
    return float(np.median(steps)) / _NS_PER_MINUTE if len(steps) else float("nan")


def bar_length_minutes(bars: pd.DataFrame) -> float:
    """The bars' length in minutes: what resampling made them (``attrs["bar_minutes"]``), else the median spacing."""
    return float(bars.attrs.get("bar_minutes") or median_bar_minutes(bars))


def resample_bars(bars: pd.DataFrame, minutes: int, *, max_gap_minutes: float | None = None) -> pd.DataFrame:
    """Aggregate to ``minutes``-minute bars labelled by their open time.

    Buckets are aligned on the clock (epoch multiples of ``minutes``) and never merge bars
    of different segments: a bucket that straddles a gap or a roll becomes two bars. The
    second of those is labelled by its own first stamp instead of the bucket start, so
    labels stay unique and increasing; its nominal close (label + minutes) is then later
    than its real one, which can delay an as-of join but never lets it look ahead.
    open = first, high = max, low = min, close = last, volume = sum, extra numeric
    columns = last value (what is known at the close of the bucket).
    """
    minutes = check_resample_minutes(minutes)
    if bars.empty:
        return bars.copy()
    step = median_bar_minutes(bars)
    if not np.isnan(step) and (minutes < step or minutes % step):
        raise DataError(f"cannot resample {step:g}-minute bars to {minutes}-minute bars (not a multiple)",
                        where="resample")
    seg = segment_ids(bars, max_gap_minutes if max_gap_minutes is not None else bars.attrs.get("max_gap_minutes"))
    bucket = _ns(bars.index) // (minutes * _NS_PER_MINUTE)
    starts = np.flatnonzero(segment_start_mask(bucket) | segment_start_mask(seg))
    ends = np.r_[starts[1:], len(bars)] - 1
    columns = {
        "open": bars["open"].to_numpy(float)[starts],
        "high": np.maximum.reduceat(bars["high"].to_numpy(float), starts),
        "low": np.minimum.reduceat(bars["low"].to_numpy(float), starts),
        "close": bars["close"].to_numpy(float)[ends],
    }
    if "volume" in bars:
        columns["volume"] = np.add.reduceat(bars["volume"].to_numpy(float), starts)
    if "contract" in bars:
        columns["contract"] = bars["contract"].array[starts]
    for name in bars.columns:
        if name not in columns and pd.api.types.is_numeric_dtype(bars[name]):
            columns[name] = bars[name].to_numpy()[ends]
    labels = bucket[starts] * minutes * _NS_PER_MINUTE
    shared = np.r_[False, bucket[starts][1:] == bucket[starts][:-1]]  # second part of a split bucket
    labels[shared] = _ns(bars.index)[starts][shared]
    stamps = labels.view("datetime64[ns]")
    out = pd.DataFrame(columns, index=pd.DatetimeIndex(stamps, name="timestamp").tz_localize("UTC"))
    out.attrs = {k: v for k, v in bars.attrs.items() if k != "repair_report"} | {"bar_minutes": minutes}
    return out


def describe_bars(bars: pd.DataFrame, max_gap_minutes: float | None = None) -> dict:
    """What a bars frame holds: rows, span, timezone, segments, contracts, bar spacing."""
    seg = segment_ids(bars, max_gap_minutes if max_gap_minutes is not None else bars.attrs.get("max_gap_minutes"))
    contracts = list(dict.fromkeys(bars["contract"].astype(str))) if "contract" in bars else []
    return {
        "symbol": bars.attrs.get("symbol"),
        "source": bars.attrs.get("source"),
        "rows": len(bars),
        "first": bars.index[0] if len(bars) else None,
        "last": bars.index[-1] if len(bars) else None,
        "tz": str(bars.index.tz) if bars.index.tz is not None else None,
        "segments": int(seg[-1]) + 1 if len(seg) else 0,
        "contracts": contracts,
        "median_bar_minutes": median_bar_minutes(bars),
        "bar_stamp": bars.attrs.get("bar_stamp", "open"),
        "has_volume": "volume" in bars,
        "zero_volume_bars": int((bars["volume"] == 0).sum()) if "volume" in bars else None,
        "columns": list(bars.columns),
    }


def summary_rows(info: dict, horizons=None) -> list[tuple[str, str]]:
    """``describe_bars`` output as (label, text) rows for a printed table, with what the label
    ``horizons`` (default: [data] horizons) cover on these bars."""
    from trademl.data.labels import describe_horizons  # labels reads bars: imported here, not above

    horizons = resolve_config().data.horizons if horizons is None else horizons
    volume = ("none (volume features left out)" if not info["has_volume"]
              else "all zero (volume features left out)" if info["zero_volume_bars"] == info["rows"] > 0
              else f"yes, {info['zero_volume_bars']:,} zero-volume bars")
    return [
        ("source", str(info["source"])),
        ("symbol", str(info["symbol"] or "not told by the file (give --symbol)")),
        ("bars", f"{info['rows']:,}"),
        ("first bar open", str(info["first"])),
        ("last bar open", str(info["last"])),
        ("timezone", str(info["tz"])),
        ("bar length", f"{info['median_bar_minutes']:g} min (median spacing)"),
        ("label horizons", describe_horizons(horizons, info["median_bar_minutes"])),
        ("stamps label", info["bar_stamp"]),
        ("segments", f"{info['segments']:,} (gaps and rolls cut them)"),
        ("contracts", ", ".join(info["contracts"]) or "-"),
        ("volume", volume),
        ("extra columns", ", ".join(c for c in info["columns"] if c not in (*BAR_COLUMNS, "contract")) or "-"),
    ]
