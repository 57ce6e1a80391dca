"""The guide's LSTM: bidirectional, attention pooling over time, three heads.

Input: normalised feature windows [batch, T, F]. The bidirectional LSTM reads each window
in both directions (the window is entirely in the past of its last bar, so reading it
backwards looks at nothing in the future). An attention layer scores every time step
and pools the outputs with those weights; the output at the last step (the newest bar) is
concatenated to the pooled vector, because with uniform initial attention the newest bar
weighs only 1/T and, among 40 noisy features, the net overfits before attention finds it
(on the planted-edge market this skip took out-of-sample accuracy from +2 to +7 points
over the majority class). Three heads read that context vector:

- signal: logits over (hold, buy, sell), the label coding 0/1/2 of ``signal_h``, trained
  with class-weighted cross-entropy and served as calibrated probabilities;
- movement: the expected forward log return, in units of ``movement_scale`` (the std of
  the training targets) so that the Huber loss sees numbers near 1;
- risk: a logit whose sigmoid is the risk score in [0, 1].

The other architectures of ``[lstm] architecture`` live in ``trademl.models.sequence_nets``
with the same three outputs; ``ServingHead`` and ``export_onnx`` take any of them.

``ServingHead`` wraps the network for export: softmax probabilities, movement back in
log-return units, sigmoid risk, so ONNX Runtime returns the final numbers.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

OUTPUT_NAMES = ("signal_probs", "movement", "risk")
INPUT_NAME = "sequence"


class LSTMSignalNet(nn.Module):
    causal = False  # bidirectional over the window (the window itself is all past: no look-ahead)

    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(
            n_features,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            # PyTorch applies dropout between stacked layers only; with one layer it warns.
            dropout=dropout if num_layers > 1 else 0.0,
        )
        width = 2 * hidden_size
        self.attention = nn.Linear(width, 1)
        width = 2 * width  # attention-pooled outputs + the last step's outputs
        self.dropout = nn.Dropout(dropout)
        self.signal_head = nn.Linear(width, 3)
        self.movement_head = nn.Linear(width, 1)
        self.risk_head = nn.Linear(width, 1)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """The per-position outputs of both directions, [n, T, 2H]."""
        return self.lstm(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(signal logits [n, 3], scaled movement [n], risk logit [n])."""
        steps = self.steps(x)
        weights = torch.softmax(self.attention(steps).squeeze(-1), dim=1)  # [n, T]
        pooled = self.dropout(torch.cat([(steps * weights.unsqueeze(-1)).sum(dim=1), steps[:, -1]], dim=1))  # [n, 4H]
        return (
            self.signal_head(pooled),
            self.movement_head(pooled).squeeze(-1),
            self.risk_head(pooled).squeeze(-1),
        )


def prior_correction(class_weights) -> torch.Tensor:
    """log of the class weights, to subtract from the logits at serving time.

    Cross-entropy weighted by w_c learns p_w(c|x) proportional to w_c p(c|x): good for
    gradients on a rare class (hold), but it over-states that class. Subtracting log w_c
    recovers calibrated probabilities, whose argmax is the most likely class. A class absent
    from training (weight 0) gets no correction.
    """
    w = torch.as_tensor(class_weights, dtype=torch.float32)
    return torch.where(w > 0, torch.log(torch.clamp(w, min=1e-12)), torch.zeros_like(w))


class ServingHead(nn.Module):
    """The trained net with its outputs in final units: what model.onnx computes.

    signal probabilities calibrated back to the class frequencies (``prior_correction``),
    movement in log-return units, risk through the sigmoid.
    """

    def __init__(self, net: nn.Module, movement_scale: float, class_weights=(1.0, 1.0, 1.0)):
        super().__init__()
        self.net = net
        self.register_buffer("movement_scale", torch.tensor(float(movement_scale), dtype=torch.float32))
        self.register_buffer("log_class_weights", prior_correction(class_weights))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, movement, risk_logit = self.net(x)
        probs = torch.softmax(logits - self.log_class_weights, dim=-1)
        return probs, movement * self.movement_scale, torch.sigmoid(risk_logit)


def export_onnx(net: nn.Module, movement_scale: float, class_weights, sequence_length: int, n_features: int, path: Path) -> None:
    """Write model.onnx with a dynamic batch axis, through the classic TorchScript exporter.

    torch 2.13 defaults to the torch.export-based exporter, which needs the extra
    ``onnxscript`` package; the classic path (``dynamo=False``) maps nn.LSTM to the ONNX
    LSTM operator directly and needs nothing more. The file is written to memory first and
    then to disk in one go, so a failed export leaves no partial file.
    """
    head = ServingHead(net, movement_scale, class_weights).eval()
    example = torch.zeros(1, sequence_length, n_features)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The deprecation notice for the classic exporter, and its note that LSTM batch
        # sizes other than the traced one need h0/c0 inputs (not so here: no initial state
        # is passed, ONNX Runtime zero-fills it for any batch; the tests check batch > 1).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
            opset_version=17,
        )
    tmp = Path(path).with_suffix(".onnx.part")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
