"""Each store tampering case of issue 15, on a private copy of the session's trained store:
refused at load with a clear ModelStoreError, or fallen back from to the newest good version,
with the good models still serving through ``EnsemblePredictor``.

"Resealed" below means the tamperer also recomputed ``manifest_sha256`` (anyone who can edit
the manifest can), so the check under test is the one after the manifest checksum.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from trademl.errors import ModelStoreError
from trademl.models.base import open_runtime
from trademl.models.store import MANIFEST, ModelStore, seal_manifest, sha256_file
from trademl.predict.ensemble import EnsemblePredictor

ALL = ["lgb_5m", "lgb_30m", "lstm", "ppo"]


# ----------------------------------------------------------------------------- tampering tools


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: dict, *, reseal: bool) -> None:
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest) if reseal else manifest, indent=2))


def edit_manifest(folder: Path, *, reseal: bool, **changes) -> None:
    m = read_manifest(folder)
    m.update(changes)
    write_manifest(folder, m, reseal=reseal)


def rehash(folder: Path, name: str) -> None:
    """What a tamperer does after replacing a file: the manifest's sha updated, resealed."""
    m = read_manifest(folder)
    m["files"][name] = sha256_file(folder / name)
    write_manifest(folder, m, reseal=True)


def new_version_name() -> str:
    time.sleep(0.001)  # the name sorts by time: strictly after every version made before
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + f"-{uuid.uuid4().hex[:6]}"


def newer_copy(root: Path, kind: str, *, files: bool = True) -> Path:
    """A newer, valid version of ``kind``: its latest folder copied under a new version name,
    the manifest's version updated and resealed (``files=False``: the manifest only)."""
    store = ModelStore(root)
    src = store.root / kind / store.versions(kind)[-1]
    version = new_version_name()
    dest = src.parent / version
    dest.mkdir()
    if files:
        for p in src.iterdir():
            if p.name != MANIFEST:
                shutil.copyfile(p, dest / p.name)
    m = read_manifest(src)
    m["version"] = version
    write_manifest(dest, m, reseal=True)
    return dest


def predictor(root, trained_store, **kw) -> EnsemblePredictor:
    return EnsemblePredictor(root, trained_store.config, record=False, reload_interval_s=0.0, **kw)


def request(p: EnsemblePredictor) -> dict:
    """A request every kind can answer (a window long enough for the LSTM and the PPO agent)."""
    return {"symbol": "NQ", "sequence": np.zeros((30, len(p.models.feature_names))).tolist()}


def served(p: EnsemblePredictor) -> dict[str, str]:
    """kind -> version of the models that answered a request."""
    out = p.ensemble_predict(request(p))
    assert out["ensemble_recommendation"] in ("BUY", "SELL", "HOLD")
    return out["model_versions"]


def originals(trained_store) -> dict[str, str]:
    store = ModelStore(trained_store.root)
    return {k: store.versions(k)[-1] for k in ALL}


# ----------------------------------------------------------------------------- the manifest itself


@pytest.mark.parametrize("change", [{"kind": "lgb_5m"}, {"metrics": {"validation_skill": {"value": 1.0}}},
                                    {"files": {}}, {"feature_schema": {"names": ["close"]}}],
                         ids=["kind", "metric", "file list", "schema"])
def test_an_edited_manifest_is_refused_and_the_good_models_serve(store_copy, trained_store, change):
    root = store_copy()
    folder = root / "lgb_30m" / originals(trained_store)["lgb_30m"]
    edit_manifest(folder, reseal=False, **change)
    with pytest.raises(ModelStoreError, match="does not match its manifest_sha256"):
        ModelStore(root).load("lgb_30m")
    p = predictor(root, trained_store)
    assert "manifest_sha256" in p.models.load_errors["lgb_30m"]
    assert set(served(p)) == {"lgb_5m", "lstm", "ppo"}


def test_a_resealed_manifest_of_another_kind_is_refused(store_copy, trained_store):
    root = store_copy()
    folder = root / "lgb_30m" / originals(trained_store)["lgb_30m"]
    edit_manifest(folder, reseal=True, kind="lgb_5m")
    with pytest.raises(ModelStoreError, match="says kind 'lgb_5m', the folder is 'lgb_30m'"):
        ModelStore(root).load("lgb_30m")


def test_an_edited_metric_in_a_newer_version_falls_back_to_the_older(store_copy, trained_store):
    root = store_copy()
    newer = newer_copy(root, "lgb_5m")
    edit_manifest(newer, reseal=False, metrics={"validation_skill": {"value": 1.0, "measure": "made up"}})
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert newer.name in p.models.load_errors["lgb_5m"] and "manifest_sha256" in p.models.load_errors["lgb_5m"]
    assert f"serving lgb_5m {originals(trained_store)['lgb_5m']}" in p.models.load_errors["lgb_5m"]


def test_a_manifest_without_its_checksum_is_refused_with_a_retrain_message(store_copy, trained_store):
    root = store_copy(kinds={"ppo"})
    folder = root / "ppo" / originals(trained_store)["ppo"]
    m = read_manifest(folder)
    del m["manifest_sha256"]
    write_manifest(folder, m, reseal=False)
    with pytest.raises(ModelStoreError, match="no manifest_sha256.*retrain"):
        ModelStore(root).load("ppo")


@pytest.mark.parametrize("files", [["model.onnx", "calibration.json"], None, "model.onnx", 7, {"model.onnx": 1},
                                   {"model.onnx": "not-a-sha"}], ids=["list", "null", "string", "number",
                                                                      "int sha", "short sha"])
@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "resealed"])
def test_files_that_are_not_a_dict_of_sha256_are_refused(store_copy, trained_store, files, reseal):
    root = store_copy()
    newer = newer_copy(root, "lgb_30m")
    edit_manifest(newer, reseal=reseal, files=files)
    with pytest.raises(ModelStoreError, match="manifest_sha256" if not reseal else "'files'|not sha256 hex"):
        ModelStore(root).load("lgb_30m")
    # serve and predict start, every kind serves (lgb_30m its older version), and reloads go on working
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert newer.name in p.models.load_errors["lgb_30m"]
    fresh = newer_copy(root, "lgb_5m")
    assert p.maybe_reload(force=True, wait=True)
    assert served(p)["lgb_5m"] == fresh.name


# ----------------------------------------------------------------------------- names and folders


@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/hostname", "../outside.json", "sub/../../x",
                                  "C:\\Windows\\win.ini", "./model.onnx", "manifest.json"])
def test_file_names_leaving_the_version_folder_are_refused(store_copy, trained_store, tmp_path, name):
    root = store_copy()
    newer = newer_copy(root, "lstm")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    target = Path(name) if name.startswith("/") else newer / name
    digest = sha256_file(target) if target.is_file() else "0" * 64
    m = read_manifest(newer)
    m["files"][name] = digest
    write_manifest(newer, m, reseal=True)
    with pytest.raises(ModelStoreError, match="inside the version folder"):
        ModelStore(root).load("lstm")
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert newer.name in p.models.load_errors["lstm"]


def test_a_file_symlinked_out_of_the_version_folder_is_refused(store_copy, trained_store, tmp_path):
    root = store_copy()
    newer = newer_copy(root, "lstm")
    outside = tmp_path / "elsewhere.json"
    shutil.copyfile(newer / "normalizer.json", outside)
    (newer / "normalizer.json").unlink()
    (newer / "normalizer.json").symlink_to(outside)
    with pytest.raises(ModelStoreError, match="'normalizer.json' leads out of the version folder"):
        ModelStore(root).load("lstm")
    assert served(predictor(root, trained_store)) == originals(trained_store)


def test_a_version_folder_symlinked_outside_the_store_is_refused(store_copy, trained_store, tmp_path):
    """The probe's case: a PPO folder outside the store, its manifest made an lstm one and
    resealed, linked in as the newest lstm: it must not be served as the lstm."""
    root = store_copy()
    ppo = root / "ppo" / originals(trained_store)["ppo"]
    outside = tmp_path / "outside" / "model"
    shutil.copytree(ppo, outside)
    link = root / "lstm" / new_version_name()
    edit_manifest(outside, reseal=True, kind="lstm", version=link.name)
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelStoreError, match="leads out of the model store"):
        ModelStore(root).load("lstm")
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert link.name in p.models.load_errors["lstm"]


def test_a_version_folder_linked_to_another_kind_in_the_store_is_refused(store_copy, trained_store):
    root = store_copy()
    link = root / "lstm" / new_version_name()
    link.symlink_to(root / "ppo" / originals(trained_store)["ppo"], target_is_directory=True)
    with pytest.raises(ModelStoreError, match="says kind 'ppo', the folder is 'lstm'"):
        ModelStore(root).load("lstm")
    assert served(predictor(root, trained_store)) == originals(trained_store)


def test_a_kind_folder_symlinked_outside_the_store_is_refused(store_copy, trained_store, tmp_path):
    root = store_copy()
    shutil.move(str(root / "ppo"), str(tmp_path / "ppo-elsewhere"))
    (root / "ppo").symlink_to(tmp_path / "ppo-elsewhere", target_is_directory=True)
    with pytest.raises(ModelStoreError, match="leads out of the model store"):
        ModelStore(root).load("ppo")
    p = predictor(root, trained_store)
    assert set(served(p)) == {"lgb_5m", "lgb_30m", "lstm"}


def test_a_store_reached_through_a_symlink_still_loads(store_copy, trained_store, tmp_path):
    """The store root itself may be a link (artifacts/models -> /data/models): only what leads
    out of it is refused."""
    link = tmp_path / "linked-models"
    link.symlink_to(store_copy(), target_is_directory=True)
    assert served(predictor(link, trained_store)) == originals(trained_store)


def test_a_backup_folder_is_not_a_version(store_copy, trained_store):
    root = store_copy()
    good = originals(trained_store)["lgb_5m"]
    backup = root / "lgb_5m" / "backup"
    shutil.copytree(root / "lgb_5m" / good, backup)
    (backup / "model.onnx").write_bytes(b"")  # sorts after every version name: it would be "latest"
    for name in ("old", "20991231T235959999999Z-zzzzzz", "20991231T235959999999Z-abcdef.bak"):
        shutil.copytree(backup, root / "lgb_5m" / name)
    store = ModelStore(root)
    assert store.versions("lgb_5m") == [good]
    assert store.latest("lgb_5m").version == good
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store) and p.models.load_errors == {}


# ----------------------------------------------------------------------------- corrupt and foreign files


def test_a_corrupt_latest_falls_back_to_the_newest_good_version(store_copy, trained_store):
    root = store_copy()
    good = newer_copy(root, "lstm")  # two good versions and a corrupt newest
    bad = newer_copy(root, "lstm")
    (bad / "model.onnx").write_bytes(b"garbage")
    p = predictor(root, trained_store)
    assert served(p)["lstm"] == good.name
    assert f"lstm {bad.name} could not be loaded" in p.models.load_errors["lstm"]
    assert "'model.onnx' does not match its checksum" in p.models.load_errors["lstm"]
    assert "/" + str(root) not in p.models.load_errors["lstm"]  # no absolute path in what responses show


def test_two_bad_newest_versions_fall_back_past_both(store_copy, trained_store):
    root = store_copy()
    first_bad = newer_copy(root, "ppo")
    (first_bad / "obs_spec.json").write_text("{}")
    second_bad = newer_copy(root, "ppo")
    edit_manifest(second_bad, reseal=True, files=None)
    p = predictor(root, trained_store)
    assert served(p)["ppo"] == originals(trained_store)["ppo"]
    errors = p.models.load_errors["ppo"]
    assert first_bad.name in errors and second_bad.name in errors


def _foreign_onnx(trained_store, kind: str) -> Path:
    """An ONNX graph of another kind (another input shape)."""
    other = {"lgb_5m": ("lstm", "model.onnx"), "lstm": ("ppo", "policy.onnx"), "ppo": ("lgb_5m", "model.onnx")}[kind]
    return trained_store.root / other[0] / originals(trained_store)[other[0]] / other[1]


@pytest.mark.parametrize("kind,file", [("lgb_5m", "model.onnx"), ("lstm", "model.onnx"), ("ppo", "policy.onnx")])
def test_an_onnx_of_another_shape_with_its_sha_updated_is_refused(store_copy, trained_store, kind, file):
    root = store_copy()
    newer = newer_copy(root, kind)
    shutil.copyfile(_foreign_onnx(trained_store, kind), newer / file)
    rehash(newer, file)
    stored = ModelStore(root).load(kind)  # the checksums hold: it is the contract check that refuses it
    with pytest.raises(ModelStoreError) as e:
        open_runtime(stored)
    assert file in str(e.value) and "contract" in str(e.value)
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert newer.name in p.models.load_errors[kind] and "contract" in p.models.load_errors[kind]


def test_an_onnx_of_another_shape_never_reaches_a_request_on_hot_reload(store_copy, trained_store):
    """The probe's 500s: hot reload swapped in an lstm whose ONNX takes another input shape."""
    root = store_copy()
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    newer = newer_copy(root, "lstm")
    shutil.copyfile(_foreign_onnx(trained_store, "lstm"), newer / "model.onnx")
    rehash(newer, "model.onnx")
    assert p.maybe_reload(force=True, wait=True)
    for _ in range(3):
        assert served(p) == originals(trained_store)  # every request answered, the lstm among them
    assert newer.name in p.models.load_errors["lstm"]


def _lgb_like_graph(width: int, how: str) -> bytes:
    """A graph declaring lgb's signature, [n, F+1] -> probabilities [n, 2], that does not keep it."""
    from onnx import TensorProto, helper

    if how == "matmul":  # multiplies by a [F, 2] matrix: ONNX Runtime's shape inference refuses it
        nodes = [helper.make_node("MatMul", ["input", "w"], ["logits"])]
        init = [helper.make_tensor("w", TensorProto.FLOAT, [width - 1, 2], [0.0] * ((width - 1) * 2))]
    else:  # reshapes the batch: opens fine, then gives other rows ([-1, 2]) or fails at run ([-1, 3])
        cols = 2 if how == "rows" else 3
        nodes = [helper.make_node("Reshape", ["input", "shape"], ["logits"])]
        init = [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, cols])]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"]))
    graph = helper.make_graph(nodes, "wrong", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("how,message", [("matmul", "cannot be opened"), ("rows", "comes out as"),
                                         ("run", "does not run on inputs of the contract's shapes")])
def test_a_graph_with_the_right_signature_that_cannot_keep_it_is_refused(store_copy, trained_store, how, message):
    """What would be an ONNX Runtime error (``Invalid rank``, a bad reshape) or a wrong answer on
    every request is a load error: the contract check runs the graph once on a zero batch."""
    root = store_copy()
    newer = newer_copy(root, "lgb_5m")
    width = len(read_manifest(newer)["model"]["inputs"])
    (newer / "model.onnx").write_bytes(_lgb_like_graph(width, how))
    rehash(newer, "model.onnx")
    with pytest.raises(ModelStoreError, match="model.onnx") as e:
        open_runtime(ModelStore(root).load("lgb_5m"))
    assert message in str(e.value)
    p = predictor(root, trained_store)
    assert served(p) == originals(trained_store)
    assert newer.name in p.models.load_errors["lgb_5m"]
    assert str(root) not in p.models.load_errors["lgb_5m"]  # ONNX Runtime's own text names the path: made relative


@pytest.mark.parametrize("kind,file", [("lgb_30m", "model.onnx"), ("lstm", "model.onnx"), ("ppo", "policy.onnx")])
def test_an_empty_onnx_with_a_matching_hash_is_refused(store_copy, trained_store, kind, file):
    root = store_copy()
    newer = newer_copy(root, kind)
    (newer / file).write_bytes(b"")
    rehash(newer, file)
    ModelStore(root).load(kind)  # the checksums hold: it is the ONNX check that refuses it
    p = predictor(root, trained_store)  # serve and predict start
    assert served(p) == originals(trained_store)
    assert f"{kind}/{newer.name}/{file}" in p.models.load_errors[kind]


def test_an_only_version_that_is_bad_leaves_its_kind_out_and_the_others_serving(store_copy, trained_store):
    root = store_copy()
    folder = root / "lstm" / originals(trained_store)["lstm"]
    (folder / "model.onnx").write_bytes(b"")
    rehash(folder, "model.onnx")
    p = predictor(root, trained_store)
    assert set(served(p)) == {"lgb_5m", "lgb_30m", "ppo"}
    out = p.ensemble_predict(request(p))
    assert any(w.startswith("lstm skipped: lstm") and "model.onnx" in w for w in out["warnings"])


# ----------------------------------------------------------------------------- copies in progress, leftovers


def test_a_copy_that_writes_the_manifest_first_is_retried_once_complete(store_copy, trained_store):
    root = store_copy()
    p = predictor(root, trained_store)
    src = root / "lstm" / originals(trained_store)["lstm"]
    newer = newer_copy(root, "lstm", files=False)  # the manifest is there, the files are not yet
    assert p.maybe_reload(force=True, wait=True)
    assert served(p)["lstm"] == src.name
    assert "missing" in p.models.load_errors["lstm"]
    assert not p.maybe_reload(force=True, wait=True)  # nothing changed: not retried, not re-hashed
    names = sorted(q.name for q in src.iterdir() if q.name != MANIFEST)
    shutil.copyfile(src / names[0], newer / names[0])  # part of the copy
    p.maybe_reload(force=True, wait=True)
    assert served(p)["lstm"] == src.name
    for name in names[1:]:  # the rest of the copy
        shutil.copyfile(src / name, newer / name)
    assert p.maybe_reload(force=True, wait=True)
    assert served(p)["lstm"] == newer.name
    assert "lstm" not in p.models.load_errors


def test_a_half_written_manifest_is_retried_once_complete(store_copy, trained_store):
    root = store_copy()
    p = predictor(root, trained_store)
    newer = newer_copy(root, "ppo")
    whole = (newer / MANIFEST).read_bytes()
    (newer / MANIFEST).write_bytes(whole[: len(whole) // 2])
    assert p.maybe_reload(force=True, wait=True)
    assert served(p)["ppo"] == originals(trained_store)["ppo"]
    assert "unreadable manifest" in p.models.load_errors["ppo"]
    (newer / MANIFEST).write_bytes(whole)
    os.utime(newer / MANIFEST, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert p.maybe_reload(force=True, wait=True)
    assert served(p)["ppo"] == newer.name


def test_stale_tmp_folders_go_and_a_fresh_one_stays(store_copy, trained_store):
    root = store_copy()
    stale, fresh = root / ".tmp-lstm-dead", root / ".tmp-lstm-being-written"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"partial")
    hour_ago = time.time() - 3700
    for p in (stale / "model.onnx", stale):
        os.utime(p, (hour_ago, hour_ago))
    store = ModelStore(root)
    store.list()
    assert not stale.exists() and fresh.exists()
    # a writer cleans up too
    stale.mkdir()
    os.utime(stale, (hour_ago, hour_ago))
    with store.writer("lgb_5m", feature_schema={"names": ["close"]}) as w:
        (w.path / "model.txt").write_text("x")
    assert not stale.exists() and fresh.exists()


# ----------------------------------------------------------------------------- models list


def test_models_list_reports_a_broken_manifest_and_lists_the_others(store_copy, trained_store, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from trademl.cli import app

    root = store_copy()
    truncated = newer_copy(root, "lstm")
    whole = (truncated / MANIFEST).read_text()
    (truncated / MANIFEST).write_text(whole[: len(whole) // 3])
    kindless = newer_copy(root, "ppo")
    m = read_manifest(kindless)
    del m["kind"]
    write_manifest(kindless, m, reseal=True)
    not_object = newer_copy(root, "lgb_5m")
    (not_object / MANIFEST).write_text("[1, 2]")

    rows = ModelStore(root).list()
    broken = {r["version"]: r["error"] for r in rows if "error" in r}
    assert set(broken) == {truncated.name, kindless.name, not_object.name}
    assert "unreadable manifest" in broken[truncated.name]
    assert "says kind None" in broken[kindless.name]
    assert "not a JSON object" in broken[not_object.name]
    good = {(r["kind"], r["version"]) for r in rows if "error" not in r}
    assert good == {(k, v) for k, v in originals(trained_store).items()}

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trademl.toml").write_text(f'[paths]\nmodel_root = "{root}"\n')
    listed = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    assert "Traceback" not in listed.output
    for version in [*originals(trained_store).values(), truncated.name, kindless.name, not_object.name]:
        assert version[:15] in listed.output
    assert "not loadable" in listed.output


# ----------------------------------------------------------------------------- the writer's side


def test_adopt_refuses_a_tampered_staged_model_and_seals_its_copy(store_copy, trained_store, tmp_path):
    root = store_copy(kinds={"ppo"})
    staged = ModelStore(root).load("ppo")
    target = ModelStore(tmp_path / "other")
    copied = target.adopt(staged)
    assert read_manifest(copied.path) == read_manifest(staged.path)
    assert target.load("ppo").version == staged.version
    edit_manifest(staged.path, reseal=False, metrics={"made": "up"})
    staged.manifest = read_manifest(staged.path)
    with pytest.raises(ModelStoreError, match="manifest_sha256"):
        ModelStore(tmp_path / "third").adopt(staged)
    assert not (tmp_path / "third" / "ppo").exists()


# ----------------------------------------------------------------------------- over HTTP


def test_the_server_answers_200_through_every_tampered_reload(store_copy, trained_store):
    """The probe's 500s and exits, over HTTP: a foreign-shape ONNX with its sha updated, an empty
    ONNX with a matching hash and a manifest whose files are a list each appear as the newest
    version of a kind in a running server; every request is answered by every kind's good version."""
    from fastapi.testclient import TestClient

    from trademl.serve.app import create_app

    root = store_copy()
    p = predictor(root, trained_store)
    with TestClient(create_app(p)) as client:
        def answered() -> dict:
            r = client.post("/v1/predict", json=request(p))
            assert r.status_code == 200, r.text
            return r.json()["model_versions"]

        assert answered() == originals(trained_store)
        foreign = newer_copy(root, "lstm")
        shutil.copyfile(_foreign_onnx(trained_store, "lstm"), foreign / "model.onnx")
        rehash(foreign, "model.onnx")
        empty = newer_copy(root, "ppo")
        (empty / "policy.onnx").write_bytes(b"")
        rehash(empty, "policy.onnx")
        listed = newer_copy(root, "lgb_30m")
        edit_manifest(listed, reseal=True, files=["model.onnx"])
        assert p.maybe_reload(force=True, wait=True)
        for _ in range(3):
            assert answered() == originals(trained_store)
        good = newer_copy(root, "lgb_5m")  # a good new version of another kind still comes in
        assert p.maybe_reload(force=True, wait=True)
        assert answered() == {**originals(trained_store), "lgb_5m": good.name}
