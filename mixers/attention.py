"""Multi-head causal self-attention with rotary position embeddings (Su et al. 2021).

q, k, v projections, RoPE (rotate-half form) on q and k, ``F.scaled_dot_product_attention`` with
``is_causal=True`` (PyTorch picks flash, memory-efficient or math kernels), output projection.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F


def rotary_cos_sin(length: int, head_dim: int, base: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(length, head_dim)`` for rotate-half RoPE."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (length, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x (batch, heads, length, head_dim)`` rotated position-wise by the tables."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rotary_qkv(qkv: nn.Linear, x: torch.Tensor, start: int, heads: int, head_dim: int,
               rope_base: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v ``(batch, heads, n, head_dim)`` from the fused projection ``qkv`` of ``x (batch, n, d_model)``,
    q and k rotated for positions ``start..start+n-1``."""
    n = x.shape[1]
    q, k, v = rearrange(qkv(x), "b n (three h e) -> three b h n e", three=3, h=heads)
    cos, sin = rotary_cos_sin(start + n, head_dim, rope_base, x.device, q.dtype)
    cos, sin = cos[start:], sin[start:]
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


@register("attention")
class CausalSelfAttention(Mixer):
    """Causal multi-head attention: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n^2)"
    memory_complexity = "O(n) with flash kernels, O(n^2) on the math path"
    time_exponent = 2.0
    memory_exponent = 1.0  # PyTorch's SDPA runs flash kernels on CPU and GPU
    state_complexity = "O(n)"
    state_exponent = 1.0
    paper = "Vaswani et al. 2017, Attention Is All You Need (arXiv 1706.03762); RoPE: Su et al. 2021 (arXiv 2104.09864)"
    backends = ("torch-sdpa-cpu", "torch-sdpa-cuda")

    def __init__(self, d_model: int, max_len: int, heads: int = 4, rope_base: float = 10000.0, bias: bool = False):
        super().__init__(d_model, max_len)
        if heads < 1 or d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"attention: d_model={d_model} must split into heads={heads} of even size")
        self.heads, self.head_dim, self.rope_base = heads, d_model // heads, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.bias = bias

    @property
    def backend(self) -> str:
        return f"torch-sdpa-{self.qkv.weight.device.type}"

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q, k and v ``(batch, heads, n, head_dim)`` for ``x`` at positions ``start..start+n-1``."""
        return rotary_qkv(self.qkv, x, start, self.heads, self.head_dim, self.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True  # with a KV cache

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x, 0)
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, h, n, e)
        return self.out_proj(rearrange(y, "b h n e -> b n (h e)")), {"k": k, "v": v}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x[:, None], state["k"].shape[2])
        k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        y = TF.scaled_dot_product_attention(q, k, v)  # one query attends to every cached position
        return self.out_proj(rearrange(y, "b h 1 e -> b (h e)")), {"k": k, "v": v}

    def state_size(self, length: int) -> int:
        return 2 * length * self.d_model  # keys and values

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d = length, self.d_model
        pairs = n * (n + 1) / 2  # unmasked query-key pairs
        return {
            "matmul": F.linear(n, d, 3 * d) + F.linear(n, d, d),
            # q.k scores and probability-weighted values over the causal pairs, all heads
            "attention": 2 * (2.0 * pairs * d),
            # RoPE on q and k (3 per element), softmax (about 5 per score: max, sub, exp, sum, div), biases
            "elementwise": 6.0 * n * d + 5.0 * pairs * self.heads + (4.0 * n * d if self.bias else 0.0),
        }
