"""The model store: one folder per trained model, written atomically, verified before it is trusted.

Layout::

    <root>/<kind>/<version>/manifest.json   kind, version, created_at, feature schema,
                                             training span, config, metrics, library
                                             versions, sha256 of every file, and
                                             ``manifest_sha256``: the sha256 of the manifest
                                             itself (canonical JSON of every other field)
    <root>/<kind>/<version>/<files...>       model.onnx, model.txt, normalizer.json, ...
    <root>/.tmp-<kind>-<uuid>/               a model being written; never resolved

A model is written into a temporary folder and renamed into place only when every
file and the manifest are complete, so a run killed midway leaves nothing that
``latest`` could pick; a ``.tmp-*`` folder nothing has touched for an hour (what a killed
run leaves) is removed by the next ``writer`` or ``list``.

What loading checks, before anything is opened (each failure is a ``ModelStoreError`` naming
the folder and what is wrong):

* version folders are named as the writer names them (``%Y%m%dT%H%M%S%fZ-<6 hex>``); any other
  folder (``backup``, ``old``) is not a version and is ignored;
* the kind and version folders resolve inside the store (no symlink out of it), and the
  manifest's ``kind`` and ``version`` are the folder's own names;
* the manifest matches its ``manifest_sha256``: an edited kind, metric or file list is refused.
  A manifest without one (a model stored before this check existed, or one whose checksum was
  removed) is refused too, with a "retrain" message: accepting it would let anyone walk around
  the check by deleting the field;
* ``files`` is a non-empty dict of name -> sha256 hex; every name stays inside the version
  folder (no ``..``, no absolute path, no symlink out of the folder);
* every file is re-hashed (``verify=False`` skips only this step).

What each kind's ONNX graph must look like is its runtime's check at open time
(``trademl.models.base.check_onnx_contract``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath, PureWindowsPath

from trademl.errors import ModelStoreError, SchemaError

MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest_sha256"  # the manifest's own checksum, a field of the manifest
VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"  # + "-<6 hex>": sorts by time
VERSION_PATTERN = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{6}")
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600.0  # a temporary folder untouched this long was left by a killed writer
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRACKED_LIBRARIES = ("trademl", "numpy", "pandas", "lightgbm", "torch", "stable-baselines3", "onnx", "onnxruntime")
RETRAIN_HINT = "retrain the model (`trademl train`) or restore its folder from a copy"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, ASCII) of every field but
    ``manifest_sha256`` itself."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest as it reads back from JSON (non-JSON values as their ``str``), with its
    ``manifest_sha256``."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}, default=str))
    body[MANIFEST_CHECKSUM] = manifest_digest(body)
    return body


def library_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def is_version_name(name: str) -> bool:
    """True for a folder name the writer gives a version (``%Y%m%dT%H%M%S%fZ-<6 hex>``)."""
    return VERSION_PATTERN.fullmatch(name) is not None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_file_name(name, where: str) -> str:
    """``name`` as a relative path that cannot leave its version folder, or a ModelStoreError."""
    if not isinstance(name, str) or not name:
        raise ModelStoreError(f"the manifest lists a file name that is not a string: {name!r}", where=where,
                              hint=RETRAIN_HINT)
    bad = None
    if "\x00" in name or "\\" in name:
        bad = "a NUL or backslash"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        bad = "an absolute path"
    elif any(part in ("..", ".", "") for part in name.split("/")):
        bad = "a '..', '.' or empty path part"
    elif name == MANIFEST:
        bad = "the manifest itself"
    if bad:
        raise ModelStoreError(f"the manifest lists file {name!r}: {bad}; files must be inside the version folder",
                              where=where, hint=RETRAIN_HINT)
    return name


def check_manifest(manifest, path: Path, kind: str, version: str) -> dict:
    """The manifest of the version folder ``path`` (``<kind>/<version>``) if it can be trusted
    (see the module doc; no file is hashed here), else a ModelStoreError naming what is wrong."""
    where = str(path)
    if not isinstance(manifest, dict):
        raise ModelStoreError(f"{MANIFEST} is not a JSON object", where=where, hint=RETRAIN_HINT)
    recorded = manifest.get(MANIFEST_CHECKSUM)
    if recorded is None:
        raise ModelStoreError(
            f"{MANIFEST} has no {MANIFEST_CHECKSUM}: it was stored by an older trademl or its checksum was removed, "
            "so it cannot be told apart from an edited one", where=where, hint=RETRAIN_HINT)
    if not isinstance(recorded, str) or manifest_digest(manifest) != recorded:
        raise ModelStoreError(f"{MANIFEST} does not match its {MANIFEST_CHECKSUM}: it was edited or corrupted "
                              "after training", where=where, hint=RETRAIN_HINT)
    if manifest.get("kind") != kind:
        raise ModelStoreError(f"{MANIFEST} says kind {manifest.get('kind')!r}, the folder is {kind!r}", where=where,
                              hint="a model folder cannot be moved or linked under another kind")
    if manifest.get("version") != version:
        raise ModelStoreError(f"{MANIFEST} says version {manifest.get('version')!r}, the folder is {version!r}",
                              where=where, hint="a model folder cannot be renamed or linked under another version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelStoreError(f"{MANIFEST} 'files' must be a non-empty object of name -> sha256, "
                              f"got {type(files).__name__}", where=where, hint=RETRAIN_HINT)
    for name, digest in files.items():
        check_file_name(name, where)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelStoreError(f"{MANIFEST} lists file {name!r} with a checksum that is not sha256 hex",
                                  where=where, hint=RETRAIN_HINT)
    if not isinstance(manifest.get("created_at", ""), str):
        raise ModelStoreError(f"{MANIFEST} 'created_at' is not a string", where=where, hint=RETRAIN_HINT)
    for key in ("feature_schema", "training_span", "metrics", "config", "model", "library_versions"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise ModelStoreError(f"{MANIFEST} {key!r} is not an object", where=where, hint=RETRAIN_HINT)
    names = (manifest.get("feature_schema") or {}).get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelStoreError(f"{MANIFEST} feature_schema.names is not a list of names", where=where, hint=RETRAIN_HINT)
    return manifest


@dataclass
class StoredModel:
    """A model folder that passed its checks."""

    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def feature_names(self) -> list[str]:
        return list((self.manifest.get("feature_schema") or {}).get("names", []))

    @property
    def files(self) -> dict[str, str]:
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            raise ModelStoreError(f"{MANIFEST} 'files' is not an object of name -> sha256", where=str(self.path),
                                  hint=RETRAIN_HINT)
        return files

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise ModelStoreError(f"model has no file {name!r}", where=str(self.path))
        return self._confined(name)

    def _confined(self, name: str) -> Path:
        """The path of listed file ``name``, refused when it (or a symlink on its way) leads out
        of the version folder."""
        check_file_name(name, str(self.path))
        folder = self.path.resolve()
        p = self.path / name
        if not _inside(p.resolve(), folder):
            raise ModelStoreError(f"file {name!r} leads out of the version folder (a symlink)", where=str(self.path),
                                  hint=RETRAIN_HINT)
        return p

    def verify(self) -> None:
        """Re-hash every file; a changed or missing file, or one outside the folder, is an error naming it."""
        for name, digest in self.files.items():
            p = self._confined(name)
            if not p.is_file():
                raise ModelStoreError(f"file {name!r} listed in the manifest is missing", where=str(self.path))
            if sha256_file(p) != digest:
                raise ModelStoreError(
                    f"file {name!r} does not match its checksum: it was changed or corrupted after training",
                    where=str(self.path),
                    hint="retrain the model or restore the file",
                )

    def check_schema(self, names: list[str] | tuple[str, ...]) -> None:
        """Fail with the difference when ``names`` is not the model's ordered feature list."""
        raise_on_schema_difference(self.feature_names, list(names), where=f"model {self.kind} {self.version}")


@dataclass
class ModelWriter:
    """Handed out by ``ModelStore.writer``: put files under ``.path``, fill ``.manifest``."""

    path: Path
    manifest: dict = field(default_factory=dict)


class ModelStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @contextmanager
    def writer(self, kind: str, **manifest):
        """Write a new model atomically::

            with store.writer("lgb_5m", feature_schema=schema.to_dict()) as w:
                booster.save_model(w.path / "model.txt")
                w.manifest["metrics"] = metrics
            stored = w.stored  # the StoredModel, after the rename

        The manifest gets the sha256 of every file and its own ``manifest_sha256`` (a
        ``manifest_sha256`` passed in is replaced). Stale ``.tmp-*`` folders are removed first.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_tmp()
        now = datetime.now(timezone.utc)
        version = now.strftime(VERSION_FORMAT) + f"-{uuid.uuid4().hex[:6]}"  # sorts by time
        tmp = self.root / f"{TMP_PREFIX}{kind}-{uuid.uuid4().hex}"
        tmp.mkdir()
        w = ModelWriter(tmp, dict(manifest))
        try:
            yield w
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.name != MANIFEST
            }
            if not files:
                raise ModelStoreError("refusing to store a model with no files", where=kind)
            full = seal_manifest({
                "kind": kind,
                "version": version,
                "created_at": now.isoformat(),
                "library_versions": library_versions(),
                **w.manifest,
                "files": files,
            })
            _write_json_atomic(tmp / MANIFEST, full)
            final = self.root / kind / version
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # atomic on one filesystem: the model appears whole or not at all
            w.stored = StoredModel(final, full)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def adopt(self, stored: StoredModel) -> StoredModel:
        """Copy a verified model folder (e.g. one staged by ``TradeModel.fit``) into this store,
        under its own kind and version, atomically: its sealed manifest and the files it lists,
        nothing else; the copy is verified again."""
        check_manifest(stored.manifest, Path(stored.path), stored.kind, stored.version)
        stored.verify()
        if not is_version_name(stored.version):
            raise ModelStoreError(f"{stored.version!r} is not a version name this store writes", where=str(stored.path))
        final = self.root / stored.kind / stored.version
        if final.exists():
            if final.resolve() == Path(stored.path).resolve():
                return stored
            raise ModelStoreError(f"version {stored.version} of {stored.kind} is already in this store", where=str(final))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{stored.kind}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for name in stored.files:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(stored.path / name, tmp / name)
            _write_json_atomic(tmp / MANIFEST, seal_manifest(stored.manifest))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.load(stored.kind, stored.version)

    def remove_stale_tmp(self, older_than_s: float = STALE_TMP_S) -> list[Path]:
        """Remove the ``.tmp-*`` folders in which nothing changed for ``older_than_s`` (what a
        killed writer leaves); a fresh one, being written, is left alone. Returns those removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - older_than_s
        for p in self.root.iterdir():
            if not p.name.startswith(TMP_PREFIX) or p.is_symlink() or not p.is_dir():
                continue
            try:
                if _newest_mtime(p) < cutoff:
                    shutil.rmtree(p)
                    removed.append(p)
            except OSError:  # gone meanwhile, or not ours to remove: leave it
                continue
        return removed

    def versions(self, kind: str) -> list[str]:
        """The version folders of ``kind`` that hold a manifest, oldest first; a folder not named
        as the writer names versions (``backup``) is not one."""
        d = self.root / kind
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if is_version_name(p.name) and p.is_dir() and (p / MANIFEST).is_file())

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def version_path(self, kind: str, version: str) -> Path:
        """``<root>/<kind>/<version>``, refused when it resolves outside the store."""
        path = self.root / kind / version
        if not _inside(path.resolve(), self.root.resolve()):
            raise ModelStoreError("the version folder leads out of the model store (a symlink)", where=str(path),
                                  hint="copy the model into the store instead of linking it")
        return path

    def read_manifest(self, kind: str, version: str) -> StoredModel:
        """The version's manifest, checked (see the module doc), without hashing its files."""
        path = self.version_path(kind, version)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelStoreError(f"unreadable manifest: {e}", where=str(path), hint=RETRAIN_HINT) from None
        try:
            return StoredModel(path, check_manifest(manifest, path, kind, version))
        except RecursionError:
            raise ModelStoreError(f"{MANIFEST} is nested too deeply to check", where=str(path), hint=RETRAIN_HINT) from None

    def load(self, kind: str, version: str = "latest", *, feature_names=None, verify: bool = True) -> StoredModel:
        versions = self.versions(kind)
        if not versions:
            raise ModelStoreError(f"no trained {kind!r} model", where=str(self.root), hint="run `trademl train` first")
        if version == "latest":
            version = versions[-1]
        elif version not in versions:
            raise ModelStoreError(f"no version {version!r} of {kind!r}; have {', '.join(versions)}", where=str(self.root))
        model = self.read_manifest(kind, version)
        if verify:
            model.verify()
        if feature_names is not None:
            model.check_schema(feature_names)
        return model

    def latest(self, kind: str) -> StoredModel | None:
        return self.load(kind) if self.versions(kind) else None

    def list(self) -> list[dict]:
        """The manifest of every version (files not hashed), by kind then version. A version
        whose manifest cannot be trusted (truncated, no kind, edited) is a row of its folder's
        kind and version with ``error`` saying why (and that reason as its headline, so a table
        of headlines shows it); the others are listed as usual. Stale ``.tmp-*`` folders are
        removed first."""
        try:
            self.remove_stale_tmp()
        except OSError:
            pass
        rows = []
        for kind in self.kinds():
            for version in self.versions(kind):
                try:
                    rows.append(self.read_manifest(kind, version).manifest)
                except ModelStoreError as e:
                    reason = e.message
                    rows.append({"kind": kind, "version": version, "created_at": "", "error": reason,
                                 "metrics": {"headline": {"error": f"not loadable: {reason}"}}})
        return rows


def raise_on_schema_difference(expected: list[str], got: list[str], *, where: str) -> None:
    """SchemaError naming the missing, extra and reordered features, if any."""
    if list(expected) == list(got):
        return
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
        parts.append(f"same features in another order (position {first}: expected {expected[first]!r}, got {got[first]!r})")
    raise SchemaError(
        "feature schema differs from the one the model was trained on: " + "; ".join(parts),
        where=where,
        hint="rebuild the dataset with the model's feature set or retrain the model",
    )


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
