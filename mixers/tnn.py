"""Toeplitz Neural Network token mixing (Qin et al. 2023, "Toeplitz Neural Network for Sequence
Modeling", OpenNLPLab/Tnn): the gated Toeplitz unit (GTU) around a Toeplitz neural operator (TNO).

GTU (the authors' ``GtuV2``, causal): ``u = silu(x W_u)``, ``v = silu(x W_v)`` with ``expand_ratio *
d_model`` channels (3), ``y = (u * TNO(v)) W_o``; linear layers with bias. TNO: per channel c a
causal Toeplitz product ``TNO(v)[t, c] = sum_{j <= t} a[t - j, c] v[j, c]`` whose coefficients
come from the relative position encoder (RPE), a small MLP of the lag: ``a[0] = RPE(0)`` and
``a[k] = gamma^k RPE(k)`` for lags ``k >= 1``, the exponential decay bias with a fixed ``gamma``
chosen for the sequence length as the authors recommend (tnn-pytorch's README: 0.9 for sequences
shorter than 100 tokens, else 0.99; ``gamma: null`` picks it from ``train_len``, the longest training
input the backbone passes, or ``max_len`` without one; a number fixes it). The RPE follows the reference ``Rpe``: ``Linear(1, rpe_dim)`` on the
raw lag, then ``rpe_layers`` (6) blocks of [SimpleRMSNorm, ReLU, Linear(rpe_dim, rpe_dim)] and a
final [SimpleRMSNorm, ReLU, Linear(rpe_dim, channels)], ``rpe_dim`` 64. These are the settings of
the paper's autoregressive language model (``tnn_v2_decay_99_pre``, whose inputs are 512 tokens:
gamma 0.99). The block's own pre-norm and
residual live in the shared backbone here, as in ``GtuV2``. Only the causal variant (lags 0..n-1).

``max_len`` plays no part but the choice of gamma when no ``train_len`` is given: coefficients are computed for the lags of each input, so any length
runs (length extrapolation, the paper's Sec. 4.4); lags never seen in training get the RPE's
values there, damped by ``gamma^k``. ``impl=fft`` multiplies in O(n log n) with the FFT Toeplitz
product of ``mixers/ops/toeplitz.py``; ``impl=dense`` builds the (n x n) matrix (the reference).
Decoding keeps the history of v: O(n) per layer, as for any long convolution.
"""
from __future__ import annotations

import torch
from torch import nn

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.toeplitz import causal_toeplitz_dense, causal_toeplitz_fft_lean

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


class SimpleRMSNorm(nn.Module):
    """``x / (rms(x) + eps)`` over the last axis, without learned scale (the reference's SimpleRMSNorm)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)


class RelativePositionEncoder(nn.Module):
    """The RPE: lags ``(L, 1)`` -> one Toeplitz coefficient per channel ``(L, channels)``."""

    def __init__(self, channels: int, width: int, layers: int, activation: str, bias: bool):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.pos_proj = nn.Linear(1, width, bias=bias)
        self.layers = nn.ModuleList(nn.Sequential(SimpleRMSNorm(), act(), nn.Linear(width, width, bias=bias))
                                    for _ in range(layers))
        self.out = nn.Sequential(SimpleRMSNorm(), act(), nn.Linear(width, channels, bias=bias))

    def forward(self, lags: torch.Tensor) -> torch.Tensor:
        x = self.pos_proj(lags)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


SHORT_SEQUENCE = 100  # tnn-pytorch's recommendation: gamma 0.9 below this many tokens, 0.99 from it on


def recommended_gamma(length: int) -> float:
    """The authors' decay rate for sequences of ``length`` tokens (tnn-pytorch's README)."""
    return 0.9 if length < SHORT_SEQUENCE else 0.99


@register("tnn")
class ToeplitzNeuralNetwork(Mixer):
    """Gated Toeplitz unit: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n log n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(n)"
    state_exponent = 1.0
    paper = "Qin et al. 2023, Toeplitz Neural Network for Sequence Modeling (arXiv 2305.04749)"
    backends = ("torch-fft", "torch-dense")

    def __init__(self, d_model: int, max_len: int, expand_ratio: float = 3.0, rpe_dim: int = 64, rpe_layers: int = 6,
                 rpe_activation: str = "relu", gamma: float | None = None, bias: bool = True, impl: str = "fft",
                 train_len: int | None = None):
        super().__init__(d_model, max_len)
        if impl not in ("fft", "dense"):
            raise ValueError(f"tnn: impl must be 'fft' or 'dense', got {impl!r}")
        if rpe_activation not in ACTIVATIONS:
            raise ValueError(f"tnn: rpe_activation must be one of {', '.join(ACTIVATIONS)}, got {rpe_activation!r}")
        if train_len is not None and train_len < 1:
            raise ValueError(f"tnn: train_len must be null (max_len) or >= 1, got {train_len}")
        self.train_len = train_len or max_len
        if gamma is None:
            gamma = recommended_gamma(self.train_len)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"tnn: gamma must be in (0, 1], got {gamma}")
        self.channels = int(expand_ratio * d_model)
        self.rpe_dim, self.rpe_layers, self.gamma, self.bias, self.impl = rpe_dim, rpe_layers, gamma, bias, impl
        self.declare(impl=impl)
        self.u_proj = nn.Linear(d_model, self.channels, bias=bias)
        self.v_proj = nn.Linear(d_model, self.channels, bias=bias)
        self.rpe = RelativePositionEncoder(self.channels, rpe_dim, rpe_layers, rpe_activation, bias)
        self.o = nn.Linear(self.channels, d_model, bias=bias)

    @property
    def backend(self) -> str:
        return f"torch-{self.impl}"

    def coefficients(self, length: int) -> torch.Tensor:
        """Toeplitz coefficients for lags ``0..length-1``: ``(channels, length)``."""
        weight = self.o.weight
        lags = torch.arange(length, device=weight.device, dtype=weight.dtype)[:, None]  # (L, 1)
        decay = self.gamma ** lags  # gamma^0 = 1 at lag 0
        return (decay * self.rpe(lags)).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self._mix(x)[0]

    def _mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1]
        u = nn.functional.silu(self.u_proj(x))
        v = nn.functional.silu(self.v_proj(x)).transpose(1, 2)  # (b, channels, n)
        a = self.coefficients(n).to(v.dtype)
        if self.impl == "fft":
            mixed = causal_toeplitz_fft_lean(v, a)  # saves v and a only: spectra recomputed in backward
        else:
            mixed = causal_toeplitz_dense(v, a)
        return self.o(u * mixed.transpose(1, 2)), v

    # Decoding keeps the history of v and the coefficients computed so far (parameters only,
    # extended by doubling): O(t d) work for the token after t.
    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        y, v = self._mix(x)
        return y, {"history": v, "coefficients": self.coefficients(max(1, 2 * x.shape[1]))}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        u = nn.functional.silu(self.u_proj(x))
        v = nn.functional.silu(self.v_proj(x))
        history = torch.cat([state["history"], v[..., None]], dim=-1)  # (b, channels, t)
        t = history.shape[-1]
        a = state["coefficients"]
        if a.shape[-1] < t:
            a = self.coefficients(2 * t)
        mixed = (history * a[:, :t].flip(-1).to(history.dtype)).sum(-1)  # a[t-1-s] against history[s]
        return self.o(u * mixed), {"history": history, "coefficients": a}

    def state_size(self, length: int) -> int:
        return length * self.channels  # the coefficients depend on parameters only and are shared

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, c = length, self.d_model, self.channels
        if self.impl == "fft":
            mix = {"fft": F.fft_causal_conv(n, c)}
        else:  # the full (n x n) matrix times each channel, zeros included, as computed
            mix = {"matmul": 2.0 * n * n * c}
        terms = {"matmul": 2 * F.linear(n, d, c) + F.linear(n, c, d), "fft": 0.0,
                 # two SiLUs, the gate, biases
                 "elementwise": 9.0 * n * c + ((2.0 * c + d) * n if self.bias else 0.0)}
        for key, value in mix.items():
            terms[key] += value
        return terms

    def parameter_flop_terms(self, length: int) -> dict[str, float]:
        """Once per forward pass: the RPE over ``length`` lags, the decay, and the coefficients' FFT."""
        n, w, c, L = length, self.rpe_dim, self.channels, self.rpe_layers
        terms = {
            "matmul": F.linear(n, 1, w) + L * F.linear(n, w, w) + F.linear(n, w, c),
            # SimpleRMSNorm (about 4 per element) and ReLU in each block, biases, decay power and product
            "elementwise": (L + 1) * 5.0 * n * w + ((L + 1) * w + c) * n * (1.0 if self.bias else 0.0) + 2.0 * n * c,
        }
        if self.impl == "fft":
            terms["fft"] = F.real_fft(F.fft_size(n), c)
        return terms
