"""The model store: atomic writes, checksums, schema checks, latest resolution."""

import json

import pytest

from trademl.errors import ModelStoreError, SchemaError
from trademl.models.store import ModelStore

NAMES = ["close", "rsi_14", "ret_5"]


def _save(store, kind="lgb_5m", payload=b"model-bytes", names=NAMES):
    with store.writer(kind, feature_schema={"names": names}, metrics={"auc": 0.61}) as w:
        (w.path / "model.txt").write_bytes(payload)
    return w.stored


def test_save_then_load_roundtrip(tmp_path):
    store = ModelStore(tmp_path)
    stored = _save(store)
    loaded = store.load("lgb_5m", feature_names=NAMES)
    assert loaded.version == stored.version
    assert loaded.manifest["metrics"] == {"auc": 0.61}
    assert set(loaded.manifest["files"]) == {"model.txt"}
    assert "numpy" in loaded.manifest["library_versions"]
    assert loaded.file("model.txt").read_bytes() == b"model-bytes"


def test_latest_is_newest_and_per_kind(tmp_path):
    store = ModelStore(tmp_path)
    first = _save(store, payload=b"a")
    second = _save(store, payload=b"b")
    _save(store, kind="lstm", payload=b"c")
    assert store.latest("lgb_5m").version == second.version != first.version
    assert store.latest("lstm").file("model.txt").read_bytes() == b"c"
    assert store.latest("ppo") is None


def test_corrupted_file_is_named(tmp_path):
    store = ModelStore(tmp_path)
    stored = _save(store)
    (stored.path / "model.txt").write_bytes(b"tampered")
    with pytest.raises(ModelStoreError, match="model.txt.*checksum"):
        store.load("lgb_5m")


def test_missing_file_is_named(tmp_path):
    store = ModelStore(tmp_path)
    stored = _save(store)
    (stored.path / "model.txt").unlink()
    with pytest.raises(ModelStoreError, match="model.txt.*missing"):
        store.load("lgb_5m")


def test_schema_difference_is_named(tmp_path):
    store = ModelStore(tmp_path)
    _save(store)
    with pytest.raises(SchemaError, match=r"missing \['ret_5'\].*unexpected \['atr_14'\]"):
        store.load("lgb_5m", feature_names=["close", "rsi_14", "atr_14"])
    with pytest.raises(SchemaError, match="another order"):
        store.load("lgb_5m", feature_names=["rsi_14", "close", "ret_5"])


def test_failure_midway_leaves_nothing_latest_could_pick(tmp_path):
    store = ModelStore(tmp_path)
    good = _save(store)
    with pytest.raises(RuntimeError):
        with store.writer("lgb_5m", feature_schema={"names": NAMES}) as w:
            (w.path / "model.txt").write_bytes(b"half")
            raise RuntimeError("killed during training")
    assert store.latest("lgb_5m").version == good.version
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_killed_process_leftover_tmp_folder_is_ignored(tmp_path):
    store = ModelStore(tmp_path)
    # What a SIGKILL leaves behind: a temporary folder with files but never renamed.
    leftover = tmp_path / ".tmp-lgb_5m-dead"
    leftover.mkdir()
    (leftover / "model.txt").write_text("partial")
    assert store.latest("lgb_5m") is None
    assert store.kinds() == []


def test_manifest_lists_hashes_and_is_json(tmp_path):
    store = ModelStore(tmp_path)
    stored = _save(store)
    manifest = json.loads((stored.path / "manifest.json").read_text())
    assert len(manifest["files"]["model.txt"]) == 64
    assert manifest["kind"] == "lgb_5m"


def test_manifest_carries_its_own_checksum_over_what_reads_back(tmp_path):
    from pathlib import Path

    import numpy as np

    from trademl.models.store import manifest_digest

    store = ModelStore(tmp_path)
    # values JSON has no type for are stored as their str; the checksum is over what reads back
    with store.writer("lgb_5m", feature_schema={"names": NAMES}, metrics={"auc": np.float32(0.5), "nan": float("nan")},
                      source=Path("/data/x.csv"), manifest_sha256="forged") as w:
        (w.path / "model.txt").write_bytes(b"m")
    manifest = json.loads((w.stored.path / "manifest.json").read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest) != "forged"
    assert manifest["source"] == "/data/x.csv" and manifest["metrics"]["auc"] == "0.5"
    assert store.load("lgb_5m").manifest == manifest == w.stored.manifest


def test_only_folders_named_as_the_writer_names_versions_are_versions(tmp_path):
    store = ModelStore(tmp_path)
    good = _save(store)
    # An upper-case hex suffix is not the writer's name (the writer's may be all digits: spell one).
    for name in ("backup", "zzz", good.version + "-copy", good.version[:-6] + "ABCDEF"):
        (tmp_path / "lgb_5m" / name).mkdir()
        (tmp_path / "lgb_5m" / name / "manifest.json").write_text((good.path / "manifest.json").read_text())
    assert store.versions("lgb_5m") == [good.version]
    assert store.latest("lgb_5m").version == good.version


def test_a_renamed_version_folder_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    good = _save(store)
    renamed = good.path.parent / "20991231T235959999999Z-abcdef"
    good.path.rename(renamed)
    with pytest.raises(ModelStoreError, match="says version .* the folder is '20991231T235959999999Z-abcdef'"):
        store.load("lgb_5m")


def test_files_in_subfolders_are_stored_and_loaded(tmp_path):
    store = ModelStore(tmp_path)
    with store.writer("lgb_5m", feature_schema={"names": NAMES}) as w:
        (w.path / "extra").mkdir()
        (w.path / "extra" / "table.json").write_text("{}")
    loaded = store.load("lgb_5m")
    assert set(loaded.manifest["files"]) == {"extra/table.json"}
    assert loaded.file("extra/table.json").read_text() == "{}"
