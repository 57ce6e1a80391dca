"""ONNX Runtime sessions for serving, set up once for every kind.

One intra-op thread by default (``TRADEML_ORT_THREADS`` to change): at batch 1 the models'
small matmuls and trees lose more to thread hand-offs than a second core gives back
(measured in bench/bench_lstm.py), and a server runs many requests side by side anyway.
"""

from __future__ import annotations

import os

from trademl.errors import ModelStoreError


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or int(os.environ.get("TRADEML_ORT_THREADS", "1"))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The converted LightGBM graph declares its label output as [1]: ORT would warn on every call.
    so.log_severity_level = 3
    return so


def open_session(model, threads: int | None = None, *, where: str = "model"):
    """An InferenceSession on a path or bytes; a graph ONNX Runtime cannot open is a ModelStoreError."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a broken graph
        raise ModelStoreError(f"the ONNX model cannot be opened: {e}", where=where) from None
