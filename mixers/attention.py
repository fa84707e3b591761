"""Multi-head causal self-attention, with rotary position embeddings (Su et al. 2021) by default.

q, k, v projections, RoPE (rotate-half form) on q and k, ``F.scaled_dot_product_attention`` with
``is_causal=True`` (PyTorch picks flash, memory-efficient or math kernels), output projection.

``position`` picks how attention sees position, as Jelassi et al. 2024 ("Repeat After Me") compare it
(sjelassi/transformers_ssm_copy):

- ``rope``: rotary embeddings on q and k (the default).
- ``nope``: no position information at all (causal masking alone; Kazemnejad et al. 2023).
- ``hard_alibi``: NoPE, except that the first ``masked_heads`` heads see a hard window: head ``h``
  attends only to the ``h + 1`` most recent positions (``t - h .. t``), the hard limit of ALiBi's
  linear bias; the other heads attend to the whole causal past. Jelassi et al. mask half the heads.
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


POSITIONS = ("rope", "nope", "hard_alibi")


def hard_alibi_mask(heads: int, masked_heads: int, queries: int, keys: int, device) -> torch.Tensor:
    """Boolean attention mask ``(heads, queries, keys)``, True where a query may attend: the last
    ``queries`` positions of ``keys`` query every key at or before them; head ``h < masked_heads`` only
    the keys ``t - h .. t`` (a window of ``h + 1``)."""
    t = torch.arange(keys - queries, keys, device=device)[:, None]  # query positions
    s = torch.arange(keys, device=device)[None, :]
    lag = t - s  # (queries, keys)
    window = torch.full((heads, 1, 1), keys, device=device)  # unmasked heads: the whole causal past
    window[:masked_heads, 0, 0] = torch.arange(masked_heads, device=device)
    return (lag >= 0) & (lag <= window)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hard-ALiBi's masked heads: head ``h`` of ``q (batch, m, queries, e)`` attends to the keys at lags
    ``0..h`` of ``k, v (batch, m, keys, e)``, the queries being the last ``queries`` positions of the keys.
    Computed on windows of ``m`` keys (``O(n m)``, not ``O(n^2)``): ``(batch, m, queries, e)``."""
    m, queries, keys = q.shape[1], q.shape[2], k.shape[2]
    start = keys - queries
    pad = (0, 0, m - 1, 0)  # m - 1 zero keys before position 0, masked below
    k_windows = TF.pad(k, pad).unfold(2, m, 1)[:, :, start:]  # (b, m, queries, e, w): keys t - m + 1 .. t
    v_windows = TF.pad(v, pad).unfold(2, m, 1)[:, :, start:]
    scores = torch.einsum("bhne,bhnew->bhnw", q, k_windows) / q.shape[-1] ** 0.5
    lag = m - 1 - torch.arange(m, device=q.device)  # window slot w holds the key at lag m - 1 - w
    position = torch.arange(start, keys, device=q.device)[:, None]  # (queries, 1)
    allowed = (lag[None, None, :] <= torch.arange(m, device=q.device)[:, None, None]) & (lag <= position)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhnw,bhnew->bhne", weights, v_windows)


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

    def __init__(self, d_model: int, max_len: int, heads: int = 4, rope_base: float = 10000.0, bias: bool = False,
                 position: str = "rope", masked_heads: int = 2):
        super().__init__(d_model, max_len)
        if heads < 1 or d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"attention: d_model={d_model} must split into heads={heads} of even size")
        if position not in POSITIONS:
            raise ValueError(f"attention: position must be one of {', '.join(POSITIONS)}, got {position!r}")
        if position == "hard_alibi" and not 0 <= masked_heads <= heads:
            raise ValueError(f"attention: masked_heads must be in [0, heads={heads}], got {masked_heads}")
        self.heads, self.head_dim, self.rope_base = heads, d_model // heads, rope_base
        self.position, self.masked_heads = position, masked_heads if position == "hard_alibi" else 0
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.bias = bias

    @property
    def backend(self) -> str:
        return f"torch-sdpa-{self.qkv.weight.device.type}"

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v ``(batch, heads, n, head_dim)`` for ``x`` at positions ``start..start+n-1`` (q and k
        rotated with RoPE)."""
        if self.position == "rope":
            return rotary_qkv(self.qkv, x, start, self.heads, self.head_dim, self.rope_base)
        return tuple(rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The last ``q.shape[2]`` positions of ``k``/``v`` attend causally: ``(batch, heads, queries, head_dim)``;
        Hard-ALiBi's masked heads within their windows (``hard_alibi_mask``)."""
        m = self.masked_heads
        if m:
            windowed = windowed_attention(q[:, :m], k[:, :m], v[:, :m])
            if m == self.heads:
                return windowed
            return torch.cat([windowed, self._attend_causal(q[:, m:], k[:, m:], v[:, m:])], dim=1)
        return self._attend_causal(q, k, v)

    @staticmethod
    def _attend_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[2] == 1:  # one query attends to every cached position
            return TF.scaled_dot_product_attention(q, k, v)
        return TF.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True  # with a KV cache

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x, 0)
        y = self._attend(q, k, v)  # (b, h, n, e)
        return self.out_proj(rearrange(y, "b h n e -> b n (h e)")), {"k": k, "v": v}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x[:, None], state["k"].shape[2])
        k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        y = self._attend(q, k, v)
        return self.out_proj(rearrange(y, "b h 1 e -> b (h e)")), {"k": k, "v": v}

    def state_size(self, length: int) -> int:
        return 2 * length * self.d_model  # keys and values

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, m, e = length, self.d_model, self.masked_heads, self.head_dim
        pairs = n * (n + 1) / 2  # unmasked query-key pairs
        windowed = n * m  # Hard-ALiBi's masked heads: scores on windows of m keys, per head
        return {
            # projections; the masked heads' scores and values on their windows (einsums)
            "matmul": F.linear(n, d, 3 * d) + F.linear(n, d, d) + 2 * (2.0 * windowed * e * m),
            # q.k scores and probability-weighted values over the causal pairs, every unmasked head
            "attention": 2 * (2.0 * pairs * e * (self.heads - m)),
            # RoPE on q and k (3 per element), softmax (about 5 per score: max, sub, exp, sum, div), biases
            "elementwise": (6.0 * n * d if self.position == "rope" else 0.0) + 5.0 * pairs * (self.heads - m)
            + 5.0 * windowed * m + (4.0 * n * d if self.bias else 0.0),
        }
