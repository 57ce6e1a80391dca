"""The model store: one folder per trained model, written atomically, verified on load.

Layout::

    <root>/<kind>/<version>/manifest.json   kind, version, created_at, feature schema,
                                             training span, config, metrics, library
                                             versions, sha256 of every file
    <root>/<kind>/<version>/<files...>       model.onnx, model.txt, normalizer.json, ...
    <root>/.tmp-<kind>-<uuid>/               a model being written; never resolved

A model is written into a temporary folder and renamed into place only when every
file and the manifest are complete, so a run killed midway leaves nothing that
``latest`` could pick. Loading re-hashes every file and checks the feature schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from trademl.errors import ModelStoreError, SchemaError

MANIFEST = "manifest.json"
_TRACKED_LIBRARIES = ("trademl", "numpy", "pandas", "lightgbm", "torch", "stable-baselines3", "onnx", "onnxruntime")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


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
        return list(self.manifest.get("feature_schema", {}).get("names", []))

    def file(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise ModelStoreError(f"model has no file {name!r}", where=str(self.path))
        return self.path / name

    def verify(self) -> None:
        """Re-hash every file; a changed, missing or extra file is an error naming it."""
        files = self.manifest.get("files", {})
        for name, digest in files.items():
            p = self.path / name
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
        """
        self.root.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc)
        version = now.strftime("%Y%m%dT%H%M%S%fZ") + f"-{uuid.uuid4().hex[:6]}"  # sorts by time
        tmp = self.root / f".tmp-{kind}-{uuid.uuid4().hex}"
        tmp.mkdir()
        w = ModelWriter(tmp, dict(manifest))
        try:
            yield w
            files = {
                str(p.relative_to(tmp)): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            if not files:
                raise ModelStoreError("refusing to store a model with no files", where=kind)
            full = {
                "kind": kind,
                "version": version,
                "created_at": now.isoformat(),
                "library_versions": library_versions(),
                **w.manifest,
                "files": files,
            }
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
        under its own kind and version, atomically; the copy is verified again."""
        stored.verify()
        final = self.root / stored.kind / stored.version
        if final.exists():
            if final.resolve() == Path(stored.path).resolve():
                return stored
            raise ModelStoreError(f"version {stored.version} of {stored.kind} is already in this store", where=str(final))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{stored.kind}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(stored.path, tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.load(stored.kind, stored.version)

    def versions(self, kind: str) -> list[str]:
        d = self.root / kind
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and (p / MANIFEST).is_file())

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load(self, kind: str, version: str = "latest", *, feature_names=None, verify: bool = True) -> StoredModel:
        versions = self.versions(kind)
        if not versions:
            raise ModelStoreError(f"no trained {kind!r} model", where=str(self.root), hint="run `trademl train` first")
        if version == "latest":
            version = versions[-1]
        elif version not in versions:
            raise ModelStoreError(f"no version {version!r} of {kind!r}; have {', '.join(versions)}", where=str(self.root))
        path = self.root / kind / version
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelStoreError(f"unreadable manifest: {e}", where=str(path)) from None
        model = StoredModel(path, manifest)
        if verify:
            model.verify()
        if feature_names is not None:
            model.check_schema(feature_names)
        return model

    def latest(self, kind: str) -> StoredModel | None:
        return self.load(kind) if self.versions(kind) else None

    def list(self) -> list[dict]:
        rows = []
        for kind in self.kinds():
            for version in self.versions(kind):
                m = json.loads((self.root / kind / version / MANIFEST).read_text())
                rows.append(m)
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


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
