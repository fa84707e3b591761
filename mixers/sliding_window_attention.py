"""Causal sliding-window attention (local attention as in Longformer, Beltagy et al. 2020, and
Mistral 7B, Jiang et al. 2023) with rotary position embeddings.

The layer of ``mixers/attention.py`` (q, k, v projections, rotate-half RoPE at absolute positions,
output projection; its helpers are reused) with each query attending to the ``window`` most recent
positions, itself included. ``impl=blocked`` computes it in O(n * window) through
``mixers/ops/sliding_window.py``; ``impl=dense`` masks the full score matrix (the O(n^2)
reference). Decoding keeps the last ``window - 1`` keys and values: a cache that stops growing.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.attention import rotary_qkv
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.sliding_window import sliding_window_blocked, sliding_window_dense


def window_pairs(length: int, window: int) -> float:
    """Query-key pairs inside the causal band: ``sum_t min(t + 1, window)``."""
    w = min(window, length)
    return w * (w + 1) / 2 + (length - w) * window


@register("sliding_window_attention")
class SlidingWindowAttention(Mixer):
    """Causal multi-head attention over a sliding window: ``(batch, n, d_model) -> (batch, n, d_model)``."""

    time_complexity = "O(n w)"
    memory_complexity = "O(n w)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(w)"
    state_exponent = 0.0
    paper = "Beltagy et al. 2020, Longformer (arXiv 2004.05150); Jiang et al. 2023, Mistral 7B (arXiv 2310.06825)"
    backends = ("torch-sdpa-blocked", "torch-sdpa-dense")

    def __init__(self, d_model: int, max_len: int, window: int = 64, heads: int = 4, rope_base: float = 10000.0,
                 bias: bool = False, impl: str = "blocked"):
        super().__init__(d_model, max_len)
        if heads < 1 or d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"sliding_window_attention: d_model={d_model} must split into heads={heads} of even size")
        if window < 1:
            raise ValueError(f"sliding_window_attention: window must be >= 1, got {window}")
        if impl not in ("blocked", "dense"):
            raise ValueError(f"sliding_window_attention: impl must be 'blocked' or 'dense', got {impl!r}")
        self.window, self.heads, self.head_dim, self.rope_base = window, heads, d_model // heads, rope_base
        self.bias, self.impl = bias, impl
        self.declare(impl=impl)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @property
    def backend(self) -> str:
        return f"torch-sdpa-{self.impl}"

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q, k and v ``(batch, heads, n, head_dim)`` for ``x`` at positions ``start..start+n-1``."""
        return rotary_qkv(self.qkv, x, start, self.heads, self.head_dim, self.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True  # with a KV cache of the last window - 1 positions

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x, 0)
        attend = sliding_window_blocked if self.impl == "blocked" else sliding_window_dense
        y = attend(q, k, v, self.window)
        state = {"k": self._window(k), "v": self._window(v), "position": torch.tensor(x.shape[1])}
        return self.out_proj(rearrange(y, "b h n e -> b n (h e)")), state

    def _window(self, t: torch.Tensor) -> torch.Tensor:
        """The last ``window - 1`` positions of ``t (batch, heads, n, head_dim)``: what the next query sees."""
        return t[:, :, max(0, t.shape[2] - (self.window - 1)):]

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        position = int(state["position"])
        q, k, v = self._qkv(x[:, None], position)
        k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)  # at most `window` positions
        y = TF.scaled_dot_product_attention(q, k, v)
        new = {"k": self._window(k), "v": self._window(v), "position": torch.tensor(position + 1)}
        return self.out_proj(rearrange(y, "b h 1 e -> b (h e)")), new

    def state_size(self, length: int) -> int:
        return 2 * min(length, self.window - 1) * self.d_model  # keys and values of the window

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d = length, self.d_model
        pairs = float(n * n) if self.impl == "dense" else window_pairs(n, self.window)  # dense: the full masked matrix
        return {
            "matmul": F.linear(n, d, 3 * d) + F.linear(n, d, d),
            # q.k scores and weighted values over the query-key pairs in the window (what a
            # sliding-window kernel computes; the blocked path also forms the masked half-blocks)
            "attention": 2 * (2.0 * pairs * d),
            # RoPE on q and k, softmax (about 5 per score), biases
            "elementwise": 6.0 * n * d + 5.0 * pairs * self.heads + (4.0 * n * d if self.bias else 0.0),
        }
