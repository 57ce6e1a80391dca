"""Bars (+ decision log) -> features + labels -> a Parquet dataset with a manifest.

A dataset folder holds ``data.parquet`` (one row per bar: segment, OHLCV, features,
labels), ``manifest.json`` (symbol and contract spec, feature schema, label columns,
span, rows, label balance, segments, costs) and, when a decision log was given,
``decisions.parquet``. It is written into a temporary folder and renamed into place,
so a killed build never leaves a half-written dataset.

Large files are processed segment by segment in chunks: features and labels restart at
every segment boundary anyway, so a chunk that ends on a boundary is computed exactly
as the whole file would be, and memory stays bounded by the chunk size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trademl.config import Config, resolve_config
from trademl.data.bad_prints import BadPrintRule
from trademl.data.bars import bar_length_minutes
from trademl.data.labels import horizon_bars, horizon_minutes, label_columns, make_labels, warn_horizons_in_bars
from trademl.segments import segment_ids
from trademl.errors import DataError
from trademl.market.contracts import ContractSpec, contract_spec, require_symbol, spec_of_bars
from trademl.market.execution import ExecutionModel

DATA_FILE = "data.parquet"
DECISIONS_FILE = "decisions.parquet"
MANIFEST_FILE = "manifest.json"
BAR_COLUMNS = ["open", "high", "low", "close", "volume"]


@dataclass
class Dataset:
    """A built dataset in memory: the frame and what describes it."""

    frame: pd.DataFrame
    manifest: dict
    decisions: pd.DataFrame | None = None
    path: Path | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_schema"]["names"])

    @property
    def schema(self):
        from trademl.data.features import FeatureSchema

        return FeatureSchema.from_dict(self.manifest["feature_schema"])

    @property
    def horizons(self) -> list[int]:
        return list(self.manifest["horizons"])

    @property
    def symbol(self) -> str:
        return self.manifest["symbol"]

    @property
    def spec(self) -> ContractSpec:
        """The contract the dataset was built with (its manifest's): labels, training and serving use it."""
        return ContractSpec.from_dict(self.manifest["contract"])

    @property
    def segments(self) -> np.ndarray:
        return self.frame["segment"].to_numpy()

    @property
    def X(self) -> np.ndarray:
        """float32 [rows, F], one column per feature name, in schema order."""
        missing = [n for n in self.feature_names if n not in self.frame.columns]
        if missing:
            raise DataError(f"dataset has no feature columns {missing}", where=str(self.path or "dataset"))
        if not self.frame.columns.is_unique:
            repeated = sorted(set(self.frame.columns[self.frame.columns.duplicated()]))
            raise DataError(f"columns {repeated} appear twice in the dataset frame", where=str(self.path or "dataset"))
        return np.ascontiguousarray(self.frame[self.feature_names].to_numpy(np.float32))

    def bars(self) -> pd.DataFrame:
        cols = [c for c in BAR_COLUMNS + ["contract"] if c in self.frame.columns]
        out = self.frame[cols].copy()
        out.attrs["symbol"] = self.symbol
        out.attrs["contract"] = dict(self.manifest["contract"])  # so a spec given on the command line travels
        return out

    # -- the short public API: Dataset.from_bars(...), .load, .save, .snapshot --

    @classmethod
    def from_bars(cls, bars, symbol: str | None = None, config=None, tz: str | None = None) -> "Dataset":
        """Build in memory from bars files (one, a list or a glob; any format ``load_bars`` reads)
        or a bars DataFrame."""
        config = resolve_config(config)
        if isinstance(bars, pd.DataFrame):
            return dataset_from_bars(bars, config, symbol)
        return bars_file_dataset(bars, config, symbol=symbol, tz=tz)

    @classmethod
    def load(cls, path) -> "Dataset":
        """A dataset folder written by ``save`` or ``trademl data build``."""
        return load_dataset(path)

    def save(self, path) -> Path:
        """Write the dataset folder (data.parquet + manifest.json) atomically; returns its path."""
        path = Path(path)
        frame = self.frame.copy()
        frame.attrs = {}  # the schema is in the manifest, not in Parquet metadata
        with _atomic_folder(path) as tmp:
            frame.to_parquet(tmp / DATA_FILE, compression="zstd")
            if self.decisions is not None:
                self.decisions.to_parquet(tmp / DECISIONS_FILE)
            (tmp / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, default=str))
        self.path = path
        return path

    def snapshot(self, row: int = -1, *, history: int | None = None) -> dict:
        """Bar ``row`` as the predictor's request: its features (NaN -> missing), the last
        ``history`` complete feature rows of its segment as ``sequence`` (default: the LSTM's
        [lstm] SEQUENCE_LENGTH, left out when the segment has fewer), symbol and timestamp."""
        n = len(self.frame)
        i = row + n if row < 0 else row
        if not 0 <= i < n:
            raise DataError(f"row {row} is outside the dataset's {n} rows", where="snapshot")
        length = history or resolve_config().lstm.SEQUENCE_LENGTH
        X = self.X
        current = X[i]
        request = {
            "symbol": self.symbol,
            "timestamp": self.frame.index[i].isoformat(),
            "features": {k: (None if not np.isfinite(v) else float(v)) for k, v in zip(self.feature_names, current)},
        }
        from trademl.data.sequences import complete_windows_at

        if complete_windows_at(X, [i], length, self.segments)[0]:
            request["sequence"] = X[i - length + 1: i + 1].astype(np.float64).tolist()
        return request

    def execution_model(self, costs, max_position: int) -> ExecutionModel:
        return ExecutionModel.from_config(self.spec, costs, max_position)


@dataclass
class BuildResult:
    path: Path
    manifest: dict
    written: list[Path] = field(default_factory=list)


def _features_and_labels(bars: pd.DataFrame, seg: np.ndarray, spec: ContractSpec, config: Config,
                         names=None, *, history: pd.DataFrame | None = None,
                         context: pd.DataFrame | None = None) -> pd.DataFrame:
    """``names``: the features to compute (None: [features] include / exclude, else the default set,
    less what the bars cannot give; with ``context`` bars, the cross-market features too).
    ``history``: the bars before these (a chunked build's previous chunk), read only by the
    features that cross segments (yesterday's levels); no row of it is returned."""
    from trademl.data.features import compute_features

    extra = tuple(c for c in config.data.extra_feature_columns if c in bars.columns)
    missing = [c for c in config.data.extra_feature_columns if c not in bars.columns]
    if missing:
        raise DataError(f"extra feature columns {missing} are not in the bars", where=bars.attrs.get("source"))
    volume_optional = None
    if names is None:
        names = _chosen_features(bars, config, with_context=context is not None)
        volume_optional = names is None or config.features.include is None  # only exclude given: default rule
    with_history = bars if history is None or not len(history) else pd.concat([history, bars])
    with_history.attrs.update(bars.attrs)
    feats = compute_features(
        with_history, symbol=spec.root, names=names, max_gap_minutes=config.data.max_gap_minutes, extra_columns=extra,
        contract=spec, volume_optional=volume_optional, context=context,
    )
    if len(with_history) > len(bars):
        schema = feats.attrs["schema"]
        feats = feats.iloc[len(with_history) - len(bars):]
        feats.attrs["schema"] = schema
    execution = ExecutionModel.from_config(spec, config.costs, config.account.max_position_size)
    labels = make_labels(bars, seg, execution, config.data.horizons, config.costs.signal_cost_multiple)
    keep = [c for c in BAR_COLUMNS + ["contract"] if c in bars.columns]
    # The guide's snapshot features `close` and `volume` are the bar's own columns: keep one
    # column per name (the bar's), so `frame[feature_names]` is unambiguous.
    shared = [c for c in feats.columns if c in keep]
    for c in shared:
        if not np.allclose(feats[c].to_numpy(np.float64), bars[c].to_numpy(np.float64), rtol=1e-6, equal_nan=True):
            raise DataError(f"feature {c!r} differs from the bar column of the same name")
    frame = pd.concat([bars[keep], feats.drop(columns=shared), labels], axis=1)
    frame.insert(0, "segment", seg.astype(np.int32))
    frame.attrs["schema"] = feats.attrs.get("schema")
    return frame


def _chosen_features(bars: pd.DataFrame, config: Config, with_context: bool = False) -> list[str] | None:
    """[features] include / exclude as feature names (None: the default set). A feature chosen by
    name or group that the bars cannot give is an error naming it, not a silent gap. Context bars
    add the cross-market features to the choice (unless it excludes them); the default set's
    volume rule still applies to it (compute_features' ``volume_optional``)."""
    from trademl.data.features import FEATURES
    from trademl.data.features.registry import select_features

    where = "config [features]"
    include = config.features.include
    if with_context:
        include = list(include if include is not None else ["default"]) + ["context"]
    try:
        names = select_features(include, config.features.exclude)
    except ValueError as e:
        raise DataError(str(e), where=where) from None
    if names is not None and config.features.include is not None:
        volume = bars["volume"].to_numpy(np.float64) if "volume" in bars.columns else None
        needing = [n for n in names if FEATURES[n].needs_volume]
        if needing and (volume is None or not (volume > 0).any()):
            why = "have no volume column" if volume is None else "have all-zero volume"
            raise DataError(f"the bars {why}: the chosen features {needing} cannot be computed", where=where,
                            hint='leave them out: [features] exclude = ["volume"]')
    return names


def bars_file_dataset(path, config: Config | None = None, *, symbol: str | None = None, tz: str | None = None,
                      repair: bool = False, context=None) -> Dataset:
    """A dataset built in memory from bars files (one, a list or a glob), read as `data build` reads them;
    ``context``: another instrument's bars files (or frame) for the cross-market features."""
    from trademl.data.bars import load_bars

    config = resolve_config(config)
    frame = load_bars(path, symbol=symbol, repair=repair, tz=tz or config.data.timezone,
                      max_gap_minutes=config.data.max_gap_minutes, bad_prints=BadPrintRule.from_config(config.data))
    dataset = dataset_from_bars(frame, config, symbol, context=context_bars(context, config, tz))
    dataset.path = Path(path) if isinstance(path, (str, Path)) else None
    return dataset


def context_bars(context, config: Config, tz: str | None = None) -> pd.DataFrame | None:
    """The context instrument's bars: a frame as it is, files (one, a list or a glob) read and
    validated as bars are (its own instrument needs no symbol: its features are scale-free)."""
    from trademl.data.bars import load_bars

    if context is None or isinstance(context, pd.DataFrame):
        return context
    return load_bars(context, tz=tz or config.data.timezone, max_gap_minutes=config.data.max_gap_minutes,
                     bad_prints=BadPrintRule.from_config(config.data))


def _context_record(context: pd.DataFrame | None) -> dict:
    """What the manifest says of the context bars (their source and span)."""
    if context is None:
        return {}
    span = [context.index[0].isoformat(), context.index[-1].isoformat()] if len(context) else [None, None]
    return {"context": {"source": str(context.attrs.get("source") or "frame"), "bars": len(context), "span": span}}


def dataset_from_bars(bars: pd.DataFrame, config: Config | None = None, symbol: str | None = None,
                      context: pd.DataFrame | None = None) -> Dataset:
    """Build a dataset in memory (what tests and notebooks use); ``context``: another instrument's
    bars frame, which adds the cross-market features."""
    config = resolve_config(config)
    if bars.empty:  # a dataset of no rows would only fail later, in training, less clearly
        raise DataError("no bars to build a dataset from (the frame has no rows)", where=str(bars.attrs.get("source") or "bars"))
    symbol = require_symbol(symbol or bars.attrs.get("symbol") or config.data.symbol, bars.attrs.get("source"))
    spec = spec_of_bars(bars, symbol, config)
    seg = segment_ids(bars, config.data.max_gap_minutes)
    config, horizons = _horizons_in_bars(bars, config)
    frame = _features_and_labels(bars, seg, spec, config, context=context)
    tally = _LabelTally(config.data.horizons)
    tally.add(frame)
    manifest = _manifest(tally, frame.attrs["schema"], symbol, spec, config, source=bars.attrs.get("source"),
                         extra=_context_record(context) | horizons)
    return Dataset(frame, manifest)


def _horizons_in_bars(bars: pd.DataFrame, config: Config) -> tuple[Config, dict]:
    """The config with [data] horizons in bars of these bars' length, and what the manifest says of them.

    A horizon in minutes ("15min") becomes bars here, once per build; the labels keep their names
    in bars (win_long_5), which every model reads, and the manifest records the minutes each covers.
    """
    given = list(config.data.horizons)
    minutes = bar_length_minutes(bars)
    in_bars = horizon_bars(given, minutes)
    warn_horizons_in_bars(given, minutes)
    known = math.isfinite(minutes)
    extra = {"bar_minutes": minutes if known else None,
             "horizon_minutes": horizon_minutes(in_bars, minutes) if known else None}
    if in_bars == given:
        return config, extra
    config = config.model_copy(deep=True)
    config.data.horizons = in_bars
    return config, extra | {"horizons_given": given}


class _LabelTally:
    """Label balance and span, accumulated chunk by chunk (no need to keep the rows)."""

    def __init__(self, horizons):
        self.horizons = list(horizons)
        self.rows = 0
        self.segments = 0
        self.start = self.end = None
        self.sums = {str(h): {"n": 0, "long": 0.0, "short": 0.0, "hold": 0, "buy": 0, "sell": 0} for h in self.horizons}

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        self.rows += len(frame)
        self.segments += int(frame["segment"].nunique())
        self.start = self.start if self.start is not None else frame.index[0]
        self.end = frame.index[-1]
        for h in self.horizons:
            t = self.sums[str(h)]
            wl = frame[f"win_long_{h}"].to_numpy()
            ok = ~np.isnan(wl)
            t["n"] += int(ok.sum())
            t["long"] += float(np.nansum(wl))
            t["short"] += float(np.nansum(frame[f"win_short_{h}"].to_numpy()))
            sig = frame[f"signal_{h}"].to_numpy()
            for code, name in ((0, "hold"), (1, "buy"), (2, "sell")):
                t[name] += int((sig == code).sum())

    def balance(self) -> dict:
        out = {}
        for h, t in self.sums.items():
            n = t["n"]
            out[h] = {
                "rows_labelled": n,
                "win_long_rate": round(t["long"] / n, 6) if n else None,
                "win_short_rate": round(t["short"] / n, 6) if n else None,
                "signal_counts": {k: t[k] for k in ("hold", "buy", "sell")},
            }
        return out


def _manifest(tally: _LabelTally, schema, symbol: str, spec: ContractSpec, config: Config, source=None, extra=None) -> dict:
    return {
        "format": "trademl-dataset/1",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "source": str(source) if source else None,
        "symbol": symbol,
        "contract": spec.to_dict(),
        "rows": tally.rows,
        "span": {
            "start": tally.start.isoformat() if tally.start is not None else None,
            "end": tally.end.isoformat() if tally.end is not None else None,
        },
        "segments": tally.segments,
        "horizons": list(config.data.horizons),
        "feature_schema": schema.to_dict(),
        "label_columns": label_columns(config.data.horizons),
        "label_balance": tally.balance(),
        "costs": config.costs.model_dump(),
        "max_gap_minutes": config.data.max_gap_minutes,
        **(extra or {}),
    }


def _complete_segments(chunks, max_gap_minutes: float):
    """Re-cut a stream of bar chunks so every yielded frame ends on a segment boundary."""
    carry = None
    for chunk in chunks:
        if chunk.empty:  # every row of this chunk was dropped by repair
            continue
        frame = chunk if carry is None else pd.concat([carry, chunk])
        frame.attrs.update(chunk.attrs)
        seg = segment_ids(frame, max_gap_minutes)
        if seg[-1] == 0:  # one open segment so far: wait for its end
            carry = frame
            continue
        cut = int(np.searchsorted(seg, seg[-1]))
        done, carry = frame.iloc[:cut], frame.iloc[cut:]
        done.attrs.update(chunk.attrs)
        yield done
    if carry is not None and len(carry):
        yield carry


def build_dataset(
    bars_path=None,
    out_dir=None,
    decisions_path=None,
    symbol: str | None = None,
    repair: bool = False,
    resample_minutes: int | None = None,
    config: Config | None = None,
    progress: bool = False,
    tz: str | None = None,
    context=None,
) -> BuildResult:
    """Build a dataset folder from bars files (default: the bundled ES sample; several files or a
    glob are merged in time order). ``tz``: zone of naive stamps (None: [data] timezone, else UTC).
    The instrument is ``symbol``, else the data's or the file name's (an error when none tells).
    ``context``: another instrument's bars files, which add the cross-market features."""
    from trademl.data import bars as bars_mod

    config = resolve_config(config)
    paths = bars_mod.bar_paths(bars_path) if bars_path else [bars_mod.bundled_sample_path()]
    for p in paths:
        if not p.exists():
            raise DataError("bars file not found", where=str(p))
    if symbol:  # a symbol given is checked before any reading; one from the data after the first chunk
        contract_spec(symbol, config=config)
    if resample_minutes is None:
        resample_minutes = config.data.resample_minutes
    resample_minutes = bars_mod.check_resample_minutes(resample_minutes)
    out_dir = Path(out_dir) if out_dir else Path(config.paths.data_dir) / paths[0].name.split(".")[0]
    source = paths[0] if len(paths) == 1 else ", ".join(map(str, paths))
    context = context_bars(context, config, tz)
    try:
        with _atomic_folder(out_dir) as tmp:
            chunks = bars_mod.read_bars_chunks(paths, config.data.chunk_rows, symbol=symbol, repair=repair,
                                                tz=tz or config.data.timezone,
                                                max_gap_minutes=config.data.max_gap_minutes,
                                                bad_prints=BadPrintRule.from_config(config.data))
            manifest = _write_chunks(chunks, tmp, symbol, config, resample_minutes, progress, source, context)
            if decisions_path:
                manifest["decisions"] = _write_decisions(Path(decisions_path), tmp, config, manifest["horizons"][0],
                                                         tz or config.data.timezone)
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    except OSError as e:  # a full disk or a read-only folder: the half-written folder is gone already
        raise DataError(f"cannot write the dataset: {e.strerror or e}", where=str(out_dir)) from None
    written = [out_dir / DATA_FILE, out_dir / MANIFEST_FILE]
    if decisions_path:
        written.append(out_dir / DECISIONS_FILE)
    return BuildResult(out_dir, manifest, written)


def _write_chunks(chunks, tmp: Path, symbol, config: Config, resample_minutes, progress, source, context=None) -> dict:
    from trademl.data.bars import resample_bars
    from trademl.data.features import FEATURES

    writer = None
    seg_offset = 0
    # After resampling to N-minute bars consecutive bars are N minutes apart: the gap rule
    # must allow that much, or every bar would become its own segment.
    bar_config = config
    if resample_minutes and resample_minutes > config.data.max_gap_minutes:
        bar_config = config.model_copy(deep=True)
        bar_config.data.max_gap_minutes = int(resample_minutes)
    schema = spec = tally = horizons = None
    # every chunk's repair report, empty chunks too (the error for a file with no bars names a row);
    # taken as read, once each: a chunk cut at a segment boundary gives two frames with the same report
    reports = []

    merged = []  # what merging several files did (overlaps, duplicates dropped)

    def tapped():
        for chunk in chunks:
            if "repair_report" in chunk.attrs:
                reports.append(chunk.attrs["repair_report"])
            if "merge_report" in chunk.attrs and not merged:
                merged.extend(chunk.attrs["merge_report"])
            yield chunk

    bar = _progress(progress, source)
    history = None  # the previous chunk's last bars, for the features that read earlier segments
    try:
        for bars in _complete_segments(tapped(), config.data.max_gap_minutes):
            if spec is None:  # the first bars tell the instrument when no symbol was given
                symbol = require_symbol(symbol or bars.attrs.get("symbol"), source)
                spec = contract_spec(symbol, config=config)
            if resample_minutes and resample_minutes > 1:
                bars = resample_bars(bars, resample_minutes, max_gap_minutes=config.data.max_gap_minutes)
            if tally is None:  # the first bars tell their length: horizons in minutes become bars
                bar_config, horizons = _horizons_in_bars(bars, bar_config)
                tally = _LabelTally(bar_config.data.horizons)
            seg = segment_ids(bars, bar_config.data.max_gap_minutes) + seg_offset
            seg_offset = int(seg[-1]) + 1
            # the first chunk settles the features (volume ones left out when its volume is all
            # zero); every later chunk computes exactly those, so the file has one schema
            names = None if schema is None else [n for n in schema.names if n in FEATURES]
            frame = _features_and_labels(bars, seg, spec, bar_config, names, history=history, context=context)
            schema = schema or frame.attrs["schema"]
            history = _history_for(schema, history, bars)
            frame.attrs = {}  # the schema goes to the manifest, not into Parquet metadata
            table = pa.Table.from_pandas(frame, preserve_index=True)
            if writer is None:
                writer = pq.ParquetWriter(tmp / DATA_FILE, table.schema, compression="zstd")
            writer.write_table(table)
            tally.add(frame)
            if bar:
                bar[0].advance(bar[1], len(frame))
    finally:
        if writer is not None:
            writer.close()
        if bar:
            bar[0].stop()
    if writer is None:
        from trademl.data.bars import RepairReport, no_bars_error

        folded = None
        if reports:
            folded = RepairReport(str(source), unit=reports[0].unit)
            for r in reports:
                folded.extend(r)
        raise no_bars_error(source, folded)
    extra = {"repairs": [str(r) for r in reports]} if reports else {}
    if merged:
        extra["merged"] = list(merged)
    extra["resample_minutes"] = resample_minutes or 1
    extra |= _context_record(context) | horizons
    return _manifest(tally, schema, symbol, spec, bar_config, source=source, extra=extra)


def _history_for(schema, history: pd.DataFrame | None, bars: pd.DataFrame) -> pd.DataFrame | None:
    """The bars the next chunk's cross-segment features read: the last ``history`` bars (their
    longest) of what came before; None when no chosen feature crosses segments."""
    from trademl.data.features import FEATURES

    crossing = [FEATURES[n].history for n in schema.names if n in FEATURES and FEATURES[n].crosses_segments]
    if not crossing:
        return None
    joined = bars if history is None else pd.concat([history, bars])
    return joined.iloc[-max(crossing):]


def _write_decisions(path: Path, tmp: Path, config: Config, horizon: int, tz: str | None = None) -> dict:
    """The decision log joined to the built bars (its labels at ``horizon`` bars, the dataset's first);
    its naive stamps are read in ``tz``, like the bars'."""
    from trademl.data.decisions import join_decisions, load_decisions

    frame = pd.read_parquet(tmp / DATA_FILE)
    frame.attrs["max_gap_minutes"] = config.data.max_gap_minutes
    decisions = load_decisions(path, tz=tz)
    joined = join_decisions(decisions, frame, frame["segment"].to_numpy(), frame, horizon=horizon)
    joined.to_parquet(tmp / DECISIONS_FILE)
    return {"source": str(path), "rows": int(len(joined))}


def _progress(enabled: bool, source):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("building dataset"), BarColumn(), TextColumn("{task.completed:,} bars"), TimeElapsedColumn(), transient=True)
    task = p.add_task("build", total=None)
    p.start()
    return p, task


@contextmanager
def _atomic_folder(path: Path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole."""
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            backup = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_dataset(path) -> Dataset:
    """Read a dataset folder written by ``build_dataset``."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError("not a dataset folder (no manifest.json)", where=str(path), hint="run `trademl data build` first")
    try:
        manifest = json.loads(manifest_path.read_text())
        frame = pd.read_parquet(path / DATA_FILE)
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable dataset: {e}", where=str(path)) from None
    decisions = pd.read_parquet(path / DECISIONS_FILE) if (path / DECISIONS_FILE).exists() else None
    return Dataset(frame, manifest, decisions, path)


def load_training_dataset(path=None, config=None, *, symbol: str | None = None, tz: str | None = None,
                          context=None) -> Dataset:
    """A dataset folder, or a bars file built in memory; by default the built bundled
    sample (``[paths] data_dir``/es_1min_lean), else the bundled sample built in memory. ``path`` may
    also be several bars files (a list or a glob); ``symbol``, ``tz`` and ``context`` (another instrument's
    bars) are for bars files, as in `data build`: a dataset folder already holds its features."""
    from trademl.data.bars import bar_paths, bundled_sample_path

    config = resolve_config(config)
    if path is None:
        default = Path(config.paths.data_dir) / bundled_sample_path().name.split(".")[0]
        path = default if (default / MANIFEST_FILE).is_file() else bundled_sample_path()
    if isinstance(path, (str, Path)) and Path(path).is_dir():
        if context is not None:
            raise DataError("--context is for bars files: a dataset folder already holds its features",
                            where=str(path), hint="build the dataset with `trademl data build BARS --context FILE`")
        return load_dataset(path)
    paths = bar_paths(path)
    for p in paths:
        if not p.exists():
            raise DataError("no such dataset folder or bars file", where=str(p))
    return bars_file_dataset(paths if len(paths) > 1 else paths[0], config, symbol=symbol, tz=tz, context=context)


def print_summary(result: BuildResult, console) -> None:
    """The table `trademl data build` ends with."""
    from rich.table import Table

    m = result.manifest
    t = Table(title=f"dataset {result.path}")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    t.add_row("symbol", f"{m['symbol']} (tick {m['contract']['tick_size']}, ${m['contract']['point_value']:g}/pt)")
    t.add_row("rows", f"{m['rows']:,}")
    t.add_row("span", f"{m['span']['start']} .. {m['span']['end']}")
    t.add_row("segments", str(m["segments"]))
    t.add_row("features", f"{len(m['feature_schema']['names'])} (schema {m['feature_schema']['hash'][:12]})")
    if left_out := m["feature_schema"].get("left_out"):
        t.add_row("left out", f"{len(left_out)} features ({', '.join(sorted(set(left_out.values())))}): {', '.join(left_out)}")
    if m.get("bar_minutes"):
        t.add_row("bar length", f"{m['bar_minutes']:g} min")
    covers = m.get("horizon_minutes") or {}
    for h, b in m["label_balance"].items():
        sc = b["signal_counts"]
        t.add_row(
            f"labels {h} bars" + (f" = {covers[h]:g} min" if h in covers else ""),
            f"{b['rows_labelled']:,} labelled; win long {b['win_long_rate']}, win short {b['win_short_rate']}; "
            f"hold/buy/sell {sc['hold']}/{sc['buy']}/{sc['sell']}",
        )
    if m.get("decisions"):
        t.add_row("decisions", f"{m['decisions']['rows']} joined")
    for r in m.get("repairs", []):
        t.add_row("repaired", r)
    for line in m.get("merged", []):
        t.add_row("merged", line)
    console.print(t)
    console.print("written:")
    for p in result.written:
        console.print(f"  {p}")


def sub_dataset(dataset, rows: np.ndarray) -> Dataset:
    """The dataset restricted to ``rows`` (a contiguous, time-ordered block)."""
    frame = dataset.frame.iloc[int(rows[0]): int(rows[-1]) + 1]
    return Dataset(frame, dict(dataset.manifest), None, getattr(dataset, "path", None))
