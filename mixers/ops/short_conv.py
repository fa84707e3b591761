"""A short depthwise causal convolution with an optional SiLU, as fla's ``ShortConvolution``
(fla-org/flash-linear-attention, ``fla/modules/convolution.py``; DeltaNet, Gated DeltaNet, ...).

``y_t = act(sum_{i < K} w_i x_{t - K + 1 + i} + b)`` per channel, zeros before the start: an
``nn.Conv1d(groups=channels, padding=K - 1)`` whose last ``K - 1`` outputs are dropped (the same
weight layout, ``(channels, 1, K)``, oldest tap first, so fla's state dicts load). Inputs are
``(batch, length, channels)``; the decoding state is the last ``K - 1`` inputs, ``(batch, channels, K - 1)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as TF

from mixers.ops import flops as F


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution of ``kernel_size`` taps: ``(batch, n, channels) -> (batch, n, channels)``."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = False, activation: bool = True):
        if kernel_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)
        self.channels, self.activation = channels, activation

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return TF.silu(y) if self.activation else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        return self._act(super().forward(x.transpose(1, 2))[..., :n].transpose(1, 2))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` and the last ``K - 1`` inputs ``(batch, channels, K - 1)`` (zeros before the start)."""
        past = TF.pad(x.transpose(1, 2), (self.kernel_size[0] - 1, 0))[..., x.shape[1]:]
        return self.forward(x), past

    def step(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token ``x (batch, channels)`` after ``past (batch, channels, K - 1)``: ``(y, new past)``."""
        window = torch.cat([past, x[:, :, None]], dim=-1)  # (batch, channels, K)
        y = (window * self.weight[:, 0, :]).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return self._act(y), window[:, :, 1:]

    def flop_terms(self, length: int) -> dict[str, float]:
        """The convolution as ``nn.Conv1d`` computes it, then the bias and the SiLU (4) per output."""
        n, c = length, self.channels
        return {"matmul": F.causal_depthwise_conv(n, c, self.kernel_size[0]),
                "elementwise": n * c * ((1.0 if self.bias is not None else 0.0) + (4.0 if self.activation else 0.0))}

    def state_size(self) -> int:
        """Values held per sequence to decode: the last ``K - 1`` inputs of every channel."""
        return self.channels * (self.kernel_size[0] - 1)
