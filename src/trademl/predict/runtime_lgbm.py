"""The LightGBM win models at serving time: ONNX Runtime and numpy only (no lightgbm, no torch).

``LGBMRuntime.load(stored_model)`` opens the ``lgb_5m`` / ``lgb_30m`` model's
``model.onnx`` and its isotonic ``calibration.json``; ``predict_win(X, side)`` appends the
side column (+1 long, -1 short) to the raw features, runs the trees and maps the raw
probability through the calibration, giving the calibrated win probability.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

from trademl.errors import DataError, ModelStoreError, SchemaError
from trademl.models.calibration import IsotonicCalibrator


def _session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the converted graph declares its label output as [1]: ORT warns every call
    return so


class LGBMRuntime:
    def __init__(self, session: ort.InferenceSession, feature_names, horizon: int, calibrator: IsotonicCalibrator,
                 input_name: str = "input", output_name: str = "probabilities", version: str = "", kind: str = ""):
        self.session = session
        self.feature_names = list(feature_names)
        self.horizon = int(horizon)
        self.calibrator = calibrator
        self.version = version
        self.kind = kind
        self._input = input_name
        self._output = output_name

    @classmethod
    def load(cls, stored_model, threads: int | None = None) -> "LGBMRuntime":
        """From a StoredModel of kind lgb_<h>m (the store has verified its checksums)."""
        where = str(stored_model.path)
        if not stored_model.kind.startswith("lgb_"):
            raise ModelStoreError(f"expected an lgb_5m/lgb_30m model, got {stored_model.kind!r}", where=where)
        info = stored_model.manifest.get("model", {})
        names = stored_model.feature_names
        inputs = list(info.get("inputs", []))
        if inputs != names + [info.get("side_column", "side")]:
            raise SchemaError("the model's inputs are not its feature schema plus the side column", where=where)
        try:
            calibration = json.loads(stored_model.file("calibration.json").read_text())
        except json.JSONDecodeError as e:
            raise ModelStoreError(f"calibration.json is not JSON: {e}", where=where) from None
        calibrator = IsotonicCalibrator.from_dict(calibration, where=f"{where}/calibration.json")
        threads = threads or int(os.environ.get("TRADEML_ORT_THREADS", "1"))
        try:
            session = ort.InferenceSession(
                str(stored_model.file("model.onnx")), _session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own types for a broken graph
            raise ModelStoreError(f"model.onnx cannot be opened: {e}", where=where) from None
        width = session.get_inputs()[0].shape[-1]
        if isinstance(width, int) and width != len(inputs):
            raise SchemaError(f"model.onnx takes {width} inputs, the manifest names {len(inputs)}", where=where)
        return cls(session, names, info["horizon"], calibrator, info.get("onnx_input", "input"),
                   info.get("onnx_output", "probabilities"), stored_model.version, stored_model.kind)

    def raw_probability(self, X, side) -> np.ndarray:
        """Uncalibrated tree probability of a win for rows X [n, F] traded on ``side`` (+1/-1)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise DataError(
                f"expected features of shape [n, {len(self.feature_names)}], got {list(X.shape)}",
                where=f"{self.kind or 'lgb'} input",
            )
        side = np.broadcast_to(np.asarray(side, dtype=np.float32), (X.shape[0],))
        if not np.all((side == 1) | (side == -1)):
            raise DataError("side must be +1 (long) or -1 (short)", where=f"{self.kind or 'lgb'} input")
        rows = np.ascontiguousarray(np.column_stack([X, side]), dtype=np.float32)
        return self.session.run([self._output], {self._input: rows})[0][:, 1].astype(np.float64)

    def predict_win(self, X, side) -> np.ndarray:
        """Calibrated win probability [n]."""
        return self.calibrator.apply(self.raw_probability(X, side))
