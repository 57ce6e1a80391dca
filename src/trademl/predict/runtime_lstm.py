"""The LSTM at serving time: ONNX Runtime and numpy only (no torch, no lightgbm).

``LSTMRuntime.load(stored_model)`` opens ``model.onnx`` with session options tuned for
batch-1 latency and reads ``normalizer.json``; ``predict`` takes RAW feature windows
[n, SEQUENCE_LENGTH, F] in the model's feature order, applies the training-rows
normalisation and returns the three heads as arrays.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

from trademl.errors import DataError, ModelStoreError, SchemaError


def latency_session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread: at batch 1 the LSTM's small matmuls lose more to thread
    hand-offs than they gain from a second core (measured in bench/bench_lstm.py)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


class LSTMRuntime:
    def __init__(self, session: ort.InferenceSession, feature_names, mean, std, sequence_length: int, horizon: int, version: str = ""):
        self.session = session
        self.feature_names = list(feature_names)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.sequence_length = int(sequence_length)
        self.horizon = int(horizon)
        self.version = version
        self._input = session.get_inputs()[0].name
        self._outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def load(cls, stored_model, threads: int | None = None) -> "LSTMRuntime":
        """From a StoredModel of kind "lstm" (already checksum-verified by the store)."""
        where = str(stored_model.path)
        if stored_model.kind != "lstm":
            raise ModelStoreError(f"expected an lstm model, got {stored_model.kind!r}", where=where)
        norm = json.loads(stored_model.file("normalizer.json").read_text())
        names = list(norm["feature_names"])
        if names != stored_model.feature_names:
            raise SchemaError("normalizer.json and the manifest list different features", where=where)
        cfg = stored_model.manifest.get("config", {})
        threads = threads or int(os.environ.get("TRADEML_ORT_THREADS", "1"))
        session = ort.InferenceSession(
            str(stored_model.file("model.onnx")), latency_session_options(threads), providers=["CPUExecutionProvider"]
        )
        return cls(session, names, norm["mean"], norm["std"], cfg["SEQUENCE_LENGTH"], cfg["PREDICTION_HORIZON"], stored_model.version)

    def _check(self, seq: np.ndarray) -> np.ndarray:
        seq = np.asarray(seq, dtype=np.float32)
        if seq.ndim == 2:
            seq = seq[None]
        expected = (self.sequence_length, len(self.feature_names))
        if seq.ndim != 3 or seq.shape[1:] != expected:
            raise DataError(
                f"LSTM input must be [n, {expected[0]}, {expected[1]}] (sequence length, features), got {list(seq.shape)}",
                where="sequence",
            )
        bad = ~np.isfinite(seq)
        if bad.any():
            n, t, f = np.argwhere(bad)[0]
            raise DataError(
                f"non-finite value in window {n}, step {t}, feature {self.feature_names[f]!r}",
                where="sequence",
            )
        return seq

    def predict(self, seq: np.ndarray) -> dict[str, np.ndarray]:
        """RAW windows [n, T, F] (or one [T, F]) -> buy, sell, hold, movement, risk, each [n]."""
        x = (self._check(seq) - self.mean) / self.std
        probs, movement, risk = self.session.run(self._outputs, {self._input: x.astype(np.float32, copy=False)})
        return {
            "hold": probs[:, 0], "buy": probs[:, 1], "sell": probs[:, 2],
            "movement": movement, "risk": risk,
        }
