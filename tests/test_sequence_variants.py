"""The sequence architectures of kind lstm ([lstm] architecture): the guide's BiLSTM with
attention, gru, transformer (causal mask), cnn_lstm and tcn.

Each one: ONNX Runtime equals PyTorch to 1e-5 on random windows with one graph contract for
all; the newest and the oldest bar of a window both move the outputs; the causal ones keep
position k independent of later positions (the BiLSTM, bidirectional over the window, does
not, and says so); a tiny training stores a model LSTMRuntime serves, and a killed run
resumes to the same weights; the slow tests: each beats the majority class on a planted
edge and invents nothing on a random walk. Data and configs: tests/test_lstm.py's helpers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from test_lstm import HORIZON, assert_movement_matches, save_dataset, small_config, synthetic_dataset
from trademl.errors import TradeMLError
from trademl.models.base import ModelInputs
from trademl.models.kinds.lstm import LSTMRuntime
from trademl.models.lstm import INT8_TOLERANCE, sequence_task, train_lstm
from trademl.models.lstm_model import ServingHead, export_onnx
from trademl.models.lstm_train import Batcher, resolve_device
from trademl.models.sequence_nets import ARCHITECTURES, build_net, tcn_blocks
from trademl.models.store import ModelStore

T, F = 12, 5
CAUSAL = ("gru", "transformer", "cnn_lstm", "tcn")


def random_net(arch: str, num_layers: int = 2):
    torch.manual_seed(0)
    settings = dict(architecture=arch, HIDDEN_SIZE=16, NUM_LAYERS=num_layers, DROPOUT=0.1, SEQUENCE_LENGTH=T,
                    attention_heads=4)
    return build_net(F, settings).eval()


def outputs(net, x):
    with torch.no_grad():
        return [t.numpy() for t in net(x)]


def test_every_architecture_has_a_config_name_and_only_those():
    assert ARCHITECTURES == ("bilstm_attention", "gru", "transformer", "cnn_lstm", "tcn")
    assert not random_net("bilstm_attention").causal
    assert all(random_net(a).causal for a in CAUSAL)
    with pytest.raises(TradeMLError, match="unknown architecture 'lstm9'.*one of bilstm_attention, gru"):
        build_net(F, dict(architecture="lstm9", HIDDEN_SIZE=16, NUM_LAYERS=1, DROPOUT=0.0, SEQUENCE_LENGTH=T))
    with pytest.raises(TradeMLError, match="HIDDEN_SIZE 18 is not divisible by attention_heads 4"):
        build_net(F, dict(architecture="transformer", HIDDEN_SIZE=18, NUM_LAYERS=1, DROPOUT=0.0, SEQUENCE_LENGTH=T,
                          attention_heads=4))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_onnx_equals_pytorch_with_one_contract_for_all(arch, tmp_path):
    net = random_net(arch)
    weights = [2.5, 0.6, 0.7]
    export_onnx(net, 0.003, weights, T, F, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    # what LSTMRuntime relies on: one input [batch, T, F], three outputs, the same for every architecture
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("sequence", [T, F])]
    assert [(o.name, len(o.shape)) for o in session.get_outputs()] == [("signal_probs", 2), ("movement", 1), ("risk", 1)]
    head = ServingHead(net, 0.003, weights).eval()
    g = torch.Generator().manual_seed(1)
    for batch in (1, 17):  # the traced batch and another
        x = torch.randn(batch, T, F, generator=g) * 2
        expected = outputs(head, x)
        got = session.run(None, {"sequence": x.numpy()})
        for e, o in zip(expected, got):
            assert o.shape == e.shape
            np.testing.assert_allclose(o, e, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[0].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_newest_and_oldest_bar_move_the_outputs_and_nothing_else_does(arch):
    net = random_net(arch)
    x = torch.randn(6, T, F, generator=torch.Generator().manual_seed(2))
    base = outputs(net, x)
    assert all(np.array_equal(a, b) for a, b in zip(base, outputs(net, x.clone())))  # unchanged window: same outputs
    for position in (-1, 0):  # the newest bar, and the oldest (the tcn's receptive field covers the window)
        moved = x.clone()
        moved[:, position] += 1.0
        changed = np.abs(outputs(net, moved)[0] - base[0]).max(axis=1)
        assert np.all(changed > 1e-6), (position, changed)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_position_k_depends_on_later_positions_only_where_the_net_is_not_causal(arch):
    net, k = random_net(arch), 5
    x = torch.randn(3, T, F, generator=torch.Generator().manual_seed(3))
    later = x.clone()
    later[:, k + 1:] = torch.randn(3, T - k - 1, F, generator=torch.Generator().manual_seed(4)) * 10
    with torch.no_grad():
        a, b = net.steps(x), net.steps(later)
    assert not torch.allclose(a[:, k + 1:], b[:, k + 1:])
    if net.causal:
        torch.testing.assert_close(a[:, : k + 1], b[:, : k + 1], rtol=0, atol=1e-6)
    else:  # the BiLSTM reads the window backwards too: every position sees the newest bar
        assert (a[:, : k + 1] - b[:, : k + 1]).abs().amax(dim=(1, 2)).min() > 1e-4


def test_tcn_depth_covers_the_window():
    # receptive field 1 + 2 (3 - 1) (2^blocks - 1): 5, 13, 29, 61
    assert [tcn_blocks(t) for t in (2, 5, 6, 8, 13, 14, 60, 61, 62)] == [1, 1, 2, 2, 2, 3, 4, 4, 5]
    assert len(random_net("tcn").blocks) == tcn_blocks(T) == 2


@pytest.fixture(scope="module")
def tiny_dataset():
    return synthetic_dataset(3_000, edge_ic=0.2, seed=11)


class Killed(KeyboardInterrupt):
    pass


def kill_after_final_epoch_1(stage, record):
    if stage == "final" and record["epoch"] == 1:
        raise Killed  # as Ctrl-C once the epoch's checkpoint is written


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_training_stores_a_served_model_and_resumes_to_the_same_weights(arch, tiny_dataset, tmp_path):
    ds = tiny_dataset
    cfg = small_config(tmp_path, architecture=arch, HIDDEN_SIZE=16, EPOCHS=2, PATIENCE=10)
    straight = train_lstm(ds, cfg, checkpoint_dir=tmp_path / "a")
    store = ModelStore(cfg.paths.model_root)
    stored = store.latest("lstm")
    assert stored.manifest["architecture"] == stored.manifest["config"]["architecture"] == arch
    assert stored.manifest["metrics"]["headline"]["architecture"] == arch
    assert stored.manifest["onnx_max_abs_diff"] <= 1e-5
    state = torch.load(stored.file("model.pt"), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in straight.net.state_dict().items())

    # served through the unchanged LSTMRuntime: its votes are the PyTorch net's probabilities, to
    # 1e-5 from a float graph, within INT8_TOLERANCE from the int8 one the LSTM-based nets serve
    precision = stored.manifest["onnx_graph"]["precision"]
    assert precision == ("int8" if arch in ("bilstm_attention", "cnn_lstm") else "float32")
    atol = 1e-5 if precision == "float32" else INT8_TOLERANCE
    runtime = LSTMRuntime.load(stored)
    task, ends = sequence_task(ds, cfg)
    rows = ends[-40:]
    votes = runtime.predict(ModelInputs.of_dataset(ds, rows))
    head = ServingHead(straight.net, straight.movement_scale, stored.manifest["metrics"]["final"]["class_weights"])
    probs, movement, risk = outputs(head.eval(), Batcher(task, straight.normalizer, straight.movement_scale).inputs(rows))
    np.testing.assert_allclose(votes.vote, probs, atol=atol)
    assert_movement_matches(votes.outputs["movement"], movement, atol)
    np.testing.assert_allclose(votes.outputs["risk"], risk, atol=atol)

    with pytest.raises(Killed):
        train_lstm(ds, cfg, checkpoint_dir=tmp_path / "b", store_root=tmp_path / "store_b",
                   on_epoch_end=kill_after_final_epoch_1)
    torch.manual_seed(12345)  # only the checkpoint may steer the rest of the run
    resumed = train_lstm(ds, cfg, checkpoint_dir=tmp_path / "b", store_root=tmp_path / "store_b", resume=True)
    last_a, last_b = (torch.load(tmp_path / d / "final.pt", weights_only=True) for d in ("a", "b"))
    assert last_a["epoch"] == last_b["epoch"] == 2 and last_a["history"] == last_b["history"]
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in last_a["model"])
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_auto_is_cuda_only_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(TradeMLError, match="device is 'cuda' but torch sees no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu").type == "cpu"


def test_cli_arch_trains_that_architecture_and_models_list_and_predict_serve_it(tmp_path):
    from trademl.cli import app

    ds = synthetic_dataset(3_000, edge_ic=0.2, seed=12)
    folder = save_dataset(ds, tmp_path / "dataset")
    toml = tmp_path / "trademl.toml"
    toml.write_text("[lstm]\nSEQUENCE_LENGTH = 8\nHIDDEN_SIZE = 8\nNUM_LAYERS = 1\nEPOCHS = 1\nN_FOLDS = 1\n"
                    f"TORCH_THREADS = 1\n[paths]\nmodel_root = '{tmp_path / 'models'}'\n")
    runner, wide = CliRunner(), {"COLUMNS": "250"}
    args = ["train", "lstm", str(folder), "--config", str(toml), "--checkpoint-dir", str(tmp_path / "ckpt")]
    done = runner.invoke(app, [*args, "--arch", "tcn"], env=wide)
    assert done.exit_code == 0, done.output
    stored = ModelStore(tmp_path / "models").latest("lstm")
    assert stored.manifest["architecture"] == "tcn" and "architecture tcn" in done.output
    listed = runner.invoke(app, ["models", "list", "--config", str(toml)], env=wide)
    assert listed.exit_code == 0 and "tcn" in listed.output, listed.output
    bad = runner.invoke(app, [*args, "--arch", "lstm9"], env=wide)
    assert bad.exit_code == 2 and "architecture" in bad.output and "'gru'" in bad.output, bad.output
    assert "Traceback" not in bad.output
    assert len(ModelStore(tmp_path / "models").versions("lstm")) == 1

    # `trademl predict` serves it as kind lstm: the figures are LSTMRuntime's on the request's window
    request = ds.snapshot(-1, history=8)
    done = subprocess.run([str(Path(sys.executable).parent / "trademl"), "predict", "--model-root", str(tmp_path / "models")],
                          input=json.dumps(request).encode(), capture_output=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["models_used"] == ["lstm"]
    heads = LSTMRuntime.load(stored).heads(np.asarray(request["sequence"], np.float32))
    assert out["lstm_buy_prob"] == pytest.approx(float(heads["buy"][0]), abs=1e-6)
    assert out["lstm_expected_movement"] == pytest.approx(float(heads["movement"][0]), abs=1e-9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: device 'cuda' is valid here")
def test_training_on_cuda_without_a_gpu_is_a_clear_error(tiny_dataset, tmp_path):
    cfg = small_config(tmp_path, device="cuda")
    with pytest.raises(TradeMLError, match=r"\[lstm\] device: device is 'cuda' but torch sees no CUDA GPU"):
        train_lstm(tiny_dataset, cfg, checkpoint_dir=tmp_path / "ckpt")


@pytest.fixture(scope="module")
def edge_dataset():
    return synthetic_dataset(24_000, edge_ic=0.3, seed=1)  # test_lstm.py's planted-edge market


# The guide's bilstm_attention has these two learning tests in tests/test_lstm.py, on the same
# markets; here the four others (the suite's time is better spent than on running it twice).
NEW_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a != "bilstm_attention")


@pytest.fixture(scope="module")
def random_walk_dataset():
    return synthetic_dataset(24_000, edge_ic=0.0, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_planted_edge_beats_majority_class(arch, edge_dataset, tmp_path):
    # 3 epochs, not small_config's 5 (each epoch of the final fit is ~2 s here): every architecture
    # has found the edge by then, out of fold. Measured on this market (seed 1) accuracy over the
    # majority 0.068-0.104 and movement corr 0.19-0.27; on another (seed 5) 0.091-0.103 and 0.23-0.27.
    cfg = small_config(tmp_path, architecture=arch, EPOCHS=3)
    cv = train_lstm(edge_dataset, cfg, checkpoint_dir=tmp_path / "ckpt").metrics["cv"]
    print(f"{arch}: accuracy {cv['accuracy']:.4f} majority {cv['majority_accuracy']:.4f} corr {cv['movement_corr']:.3f}")
    assert cv["n_test"] > 4_000
    # test_lstm.py's margin for the guide's LSTM: 4 points over the training majority class, out of fold
    assert cv["accuracy"] >= cv["majority_accuracy"] + 0.04, cv
    assert cv["movement_corr"] >= 0.1, cv


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_random_walk_gives_majority_accuracy(arch, random_walk_dataset, tmp_path):
    ds = random_walk_dataset
    cv = train_lstm(ds, small_config(tmp_path, architecture=arch), checkpoint_dir=tmp_path / "ckpt").metrics["cv"]
    print(f"{arch} (no edge): accuracy {cv['accuracy']:.4f} majority {cv['majority_accuracy']:.4f}")
    n = cv["n_test"]
    assert cv["accuracy"] <= cv["majority_accuracy"] + 3 * math.sqrt(0.25 / (n / HORIZON)), cv
    assert abs(cv["movement_corr"]) <= 3 / math.sqrt(n / HORIZON), cv
