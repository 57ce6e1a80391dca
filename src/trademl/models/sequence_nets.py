"""The sequence architectures of kind ``lstm``, chosen by ``[lstm] architecture``.

Every architecture maps normalised windows [n, T, F] to the same three outputs (signal
logits [n, 3], scaled movement [n], risk logit [n]), so ``ServingHead``, the ONNX export,
its check against PyTorch and ``LSTMRuntime`` are the same for all of them: the served
graph's inputs and outputs do not depend on the architecture.

- ``bilstm_attention`` (the guide's, ``LSTMSignalNet``): reads the window both ways.
  Bidirectional over the window is not look-ahead (the window ends at the bar predicted
  for), but position k's output depends on later positions, so it is not ``causal``.
- ``gru``: a unidirectional GRU (NUM_LAYERS, HIDDEN_SIZE).
- ``transformer``: a linear embedding to HIDDEN_SIZE, sinusoidal positional encoding,
  NUM_LAYERS pre-norm encoder layers with ``attention_heads`` heads and a causal mask
  (position k attends to positions <= k only), feed-forward width 2 x HIDDEN_SIZE.
- ``cnn_lstm``: two causal 1-D convolutions (kernel 3, HIDDEN_SIZE channels, ReLU), then a
  unidirectional LSTM (NUM_LAYERS).
- ``tcn``: residual blocks of two dilated causal convolutions (kernel 3, dilations 1, 2,
  4, ...), as many blocks as it takes for the newest position to see the whole window.

The four new ones are causal over the window (``causal = True``): ``steps(x)`` gives the
per-position representation [n, T, W], whose position k depends on positions <= k only
(the tests check it). Their heads read the newest position's representation, which sees
the whole window. Heads, dropout and loss are the same as the guide's LSTM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from typing import get_args

import torch
from torch import nn
from torch.nn import functional as F

from trademl.config import SequenceArchitecture
from trademl.errors import TradeMLError

ARCHITECTURES = get_args(SequenceArchitecture)  # the names' one home is the config
KERNEL = 3  # convolution width of cnn_lstm and tcn


class ThreeHeads(nn.Module):
    """Signal logits, scaled movement and risk logit from one context vector [n, W]."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.signal_head = nn.Linear(width, 3)
        self.movement_head = nn.Linear(width, 1)
        self.risk_head = nn.Linear(width, 1)

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.dropout(context)
        return self.signal_head(c), self.movement_head(c).squeeze(-1), self.risk_head(c).squeeze(-1)


class CausalSequenceNet(nn.Module, ABC):
    """Base of the causal architectures: ``steps`` per position, heads on the newest one."""

    causal = True

    @abstractmethod
    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """[n, T, F] -> [n, T, W]: each position's representation, from positions <= it only."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads(self.steps(x)[:, -1])


class GRUSignalNet(CausalSequenceNet):
    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.GRU(n_features, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)  # between stacked layers only
        self.heads = ThreeHeads(hidden_size, dropout)

    def steps(self, x):
        return self.rnn(x)[0]


class CausalConv1d(nn.Module):
    """A 1-D convolution over [n, C, T] padded on the left only: output t sees inputs <= t."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.left = (KERNEL - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, KERNEL, dilation=dilation)

    def forward(self, x):
        return self.conv(F.pad(x, (self.left, 0)))


class CNNLSTMSignalNet(CausalSequenceNet):
    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(n_features, hidden_size)
        self.conv2 = CausalConv1d(hidden_size, hidden_size)
        self.rnn = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.heads = ThreeHeads(hidden_size, dropout)

    def steps(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x.transpose(1, 2)))))
        return self.rnn(h.transpose(1, 2))[0]


def tcn_blocks(sequence_length: int) -> int:
    """Fewest residual blocks (two convolutions of dilation 2^b each) for the newest position
    to see all T positions: receptive field 1 + 2 (KERNEL - 1) (2^blocks - 1) >= T."""
    blocks = 1
    while 1 + 2 * (KERNEL - 1) * (2**blocks - 1) < sequence_length:
        blocks += 1
    return blocks


class TCNBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(c_in, c_out, dilation)
        self.conv2 = CausalConv1d(c_out, c_out, dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.dropout(torch.relu(self.conv1(x)))
        h = self.dropout(torch.relu(self.conv2(h)))
        return torch.relu(h + self.skip(x))


class TCNSignalNet(CausalSequenceNet):
    def __init__(self, n_features: int, hidden_size: int, dropout: float, sequence_length: int):
        super().__init__()
        self.blocks = nn.Sequential(*[
            TCNBlock(n_features if b == 0 else hidden_size, hidden_size, 2**b, dropout)
            for b in range(tcn_blocks(sequence_length))
        ])
        self.heads = ThreeHeads(hidden_size, dropout)

    def steps(self, x):
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


def positional_encoding(length: int, width: int) -> torch.Tensor:
    """The sinusoidal encoding of "Attention is all you need", [length, width]."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10_000.0) / width))
    pe = torch.zeros(length, width)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: width // 2])
    return pe


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position k attends to positions <= k only.

    Written out (not nn.MultiheadAttention) so the classic ONNX exporter sees plain
    MatMul/Softmax ops rather than PyTorch's fused inference fast path.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_width = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        n, t, w = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_width) + mask  # [n, heads, T, T]
        attended = self.dropout(torch.softmax(scores, dim=-1)) @ v
        return self.out(attended.transpose(1, 2).reshape(n, t, w))


class EncoderLayer(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.feed_forward = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout),
                                          nn.Linear(2 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = x + self.dropout(self.attention(self.norm1(x), mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class TransformerSignalNet(CausalSequenceNet):
    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float, sequence_length: int,
                 heads: int):
        super().__init__()
        self.embed = nn.Linear(n_features, hidden_size)
        # not persistent: functions of the shape, recomputed, so model.pt holds weights only
        self.register_buffer("position", positional_encoding(sequence_length, hidden_size), persistent=False)
        future = torch.triu(torch.ones(sequence_length, sequence_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", torch.zeros(sequence_length, sequence_length).masked_fill(future, float("-inf")),
                             persistent=False)
        self.layers = nn.ModuleList([EncoderLayer(hidden_size, heads, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(hidden_size)
        self.heads = ThreeHeads(hidden_size, dropout)

    def steps(self, x):
        h = self.embed(x) + self.position[: x.shape[1]]
        mask = self.mask[: x.shape[1], : x.shape[1]]
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h)


def build_net(n_features: int, settings: dict) -> nn.Module:
    """The untrained net of ``settings["architecture"]`` ([lstm] as a dict) for F features."""
    from trademl.models.lstm_model import LSTMSignalNet

    arch = settings.get("architecture", "bilstm_attention")
    hidden, layers, dropout = settings["HIDDEN_SIZE"], settings["NUM_LAYERS"], settings["DROPOUT"]
    length = settings["SEQUENCE_LENGTH"]
    if arch == "bilstm_attention":
        return LSTMSignalNet(n_features, hidden, layers, dropout)
    if arch == "gru":
        return GRUSignalNet(n_features, hidden, layers, dropout)
    if arch == "cnn_lstm":
        return CNNLSTMSignalNet(n_features, hidden, layers, dropout)
    if arch == "tcn":
        return TCNSignalNet(n_features, hidden, dropout, length)
    if arch == "transformer":
        heads = settings.get("attention_heads", 4)
        if hidden % heads:
            raise TradeMLError(f"HIDDEN_SIZE {hidden} is not divisible by attention_heads {heads}", where="[lstm]",
                               hint="pick HIDDEN_SIZE a multiple of attention_heads")
        return TransformerSignalNet(n_features, hidden, layers, dropout, length, heads)
    raise TradeMLError(f"unknown architecture {arch!r}", where="[lstm] architecture",
                       hint="one of " + ", ".join(ARCHITECTURES))
