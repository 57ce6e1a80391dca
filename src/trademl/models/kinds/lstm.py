"""The sequence model (kind ``lstm``): three heads over a window of SEQUENCE_LENGTH feature
rows: signal (hold, buy, sell), expected movement, risk. The network is ``[lstm]
architecture`` (the guide's bidirectional LSTM with attention by default, or gru,
transformer, cnn_lstm, tcn: ``trademl.models.sequence_nets``); every one exports the same
ONNX contract, so this runtime serves them all and never asks which.

Training: ``trademl.models.lstm`` (walk-forward CV, resumable per-epoch checkpoints, ONNX
export checked against PyTorch). Serving: ``LSTMRuntime``: the ONNX graph with the training
rows' normalisation; its vote is the signal head's probabilities as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trademl.errors import DataError, ModelStoreError, SchemaError
from trademl.models.base import ModelInputs, Runtime, TradeModel, Votes, check_onnx_contract, class_vote
from trademl.models.onnx_session import open_session

BATCH = 1024  # windows built at once on long spans: bounded memory
# Windows per ONNX call of the float graph: one thread runs 4-64 windows at ~0.45 ms each and
# 1,024 at ~0.8 ms (guide size, 2026-12-02), and the answers agree with one window alone to ~3e-8.
FLOAT_WINDOWS_PER_CALL = 16
HEADS = ("hold", "buy", "sell", "movement", "risk")


def run_windows(session, x: np.ndarray, per_call: int, outputs=None) -> list[np.ndarray]:
    """The graph's outputs for normalised windows ``x`` [n, T, F], ``per_call`` windows per ONNX
    call (1 for an int8 graph: see ``LSTMRuntime.windows_per_call``)."""
    name = session.get_inputs()[0].name
    calls = [session.run(outputs, {name: x[lo: lo + per_call]}) for lo in range(0, max(len(x), 1), per_call)]
    return calls[0] if len(calls) == 1 else [np.concatenate(part) for part in zip(*calls)]


class LSTMRuntime(Runtime):
    kind_pattern = "lstm"
    order = 20

    def __init__(self, session, feature_names, mean, std, sequence_length: int, horizon: int, version: str = "",
                 int8: bool = False):
        self.session = session
        # Dynamic int8 quantisation scales each call's input by the range of everything in it, so a
        # window scored beside others would get another answer (1e-4 apart) than the same window
        # alone, as the predictor scores it: the int8 graph sees one window per call (0.4 ms at guide
        # size, still faster than the float graph batched), and a backtest decides what serving does.
        self.windows_per_call = 1 if int8 else FLOAT_WINDOWS_PER_CALL
        self.feature_names = list(feature_names)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.sequence_length = int(sequence_length)
        self.history = self.sequence_length
        self.horizon = int(horizon)
        self.version = version
        self.kind = "lstm"
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
        length = cfg.get("SEQUENCE_LENGTH")
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ModelStoreError(f"the manifest's config has no valid SEQUENCE_LENGTH ({length!r})", where=where)
        onnx_file = stored_model.file("model.onnx")
        session = open_session(onnx_file, threads, where=str(onnx_file))
        # the contract: windows [n, SEQUENCE_LENGTH, F] -> signal probabilities [n, 3], movement [n], risk [n]
        check_onnx_contract(session, str(onnx_file), [(None, (None, length, len(names)))],
                            [(None, (None, 3)), (None, (None,)), (None, (None,))])
        int8 = (stored_model.manifest.get("onnx_graph") or {}).get("precision") == "int8"
        return cls(session, names, norm["mean"], norm["std"], length, cfg["PREDICTION_HORIZON"], stored_model.version,
                   int8=int8)

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
            raise DataError(f"non-finite value in window {n}, step {t}, feature {self.feature_names[f]!r}",
                            where="sequence")
        return seq

    def heads(self, seq: np.ndarray) -> dict[str, np.ndarray]:
        """RAW windows [n, T, F] (or one [T, F]) -> hold, buy, sell, movement, risk, each [n]; a
        window's answer does not depend on the windows scored with it (``windows_per_call``)."""
        x = ((self._check(seq) - self.mean) / self.std).astype(np.float32, copy=False)
        probs, movement, risk = run_windows(self.session, x, self.windows_per_call, self._outputs)
        return {"hold": probs[:, 0], "buy": probs[:, 1], "sell": probs[:, 2],
                "movement": np.ravel(movement), "risk": np.clip(np.ravel(risk), 0.0, 1.0)}

    def predict(self, inputs: ModelInputs) -> Votes:
        from trademl.data.sequences import windows_at

        n = len(inputs)
        ok, why = inputs.complete_windows(self.sequence_length, "LSTM")
        out = {k: np.full(n, np.nan) for k in HEADS}
        idx = np.flatnonzero(ok)
        for lo in range(0, len(idx), BATCH):
            chunk = idx[lo: lo + BATCH]
            for k, v in self.heads(windows_at(inputs.X, inputs.at[chunk], self.sequence_length)).items():
                out[k][chunk] = v
        fields = {"lstm_buy_prob": "buy", "lstm_sell_prob": "sell", "lstm_hold_prob": "hold",
                  "lstm_expected_movement": "movement", "lstm_risk_score": "risk"}
        return Votes(self.kind, class_vote(out["hold"], out["buy"], out["sell"]), out, fields, why)


class LSTMModel(TradeModel):
    """The guide's LSTM signal model or a variant (``[lstm]`` settings: architecture, SEQUENCE_LENGTH, ...;
    ``LSTMModel(architecture="tcn")``)."""

    section = "lstm"
    runtime = LSTMRuntime
    default_kinds = ("lstm",)

    def print_report(self, console) -> None:
        from trademl.models.lstm import stored_summary

        console.print(stored_summary(self.stored))

    def _train(self, dataset, staging_root: Path, progress: bool = False, checkpoint_dir=None, resume: bool = False,
               on_epoch_end=None, **_):
        """``_``: options of other kinds (console) that do not apply here."""
        from trademl.models.lstm import train_lstm

        return train_lstm(dataset, self.config, store_root=staging_root, checkpoint_dir=checkpoint_dir, resume=resume,
                          progress=bool(progress), on_epoch_end=on_epoch_end)
