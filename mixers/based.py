"""Based (Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff"): linear attention with a 2nd-order Taylor feature map, plus a small sliding-window attention.

Linear-attention branch, as the authors' reference (HazyResearch/zoology ``Based``): queries and keys
projected to ``feature_dim`` (16) per head, values to d_model / heads per head (no biases), the
feature map ``phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]`` with d = feature_dim (so
``phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)``, the Taylor expansion of exp(q.k / sqrt(d))),
held as its ``1 + d + d (d + 1) / 2`` distinct features (153 for d = 16: each product x_i x_j once,
weighted so the kernel is unchanged, as fla's Based kernels do; zoology's map repeats x_i x_j and
x_j x_i: 273; state size and FLOPs count the 153), normalised causal linear attention ``phi(q_t) S_t / (phi(q_t) . z_t + eps)`` through the chunked
form of ``mixers/ops/linear_attention.py`` (``impl=recurrent``: the token-by-token reference), and an
output projection. On CUDA, fla's kernels compute the same kernel value and normaliser from the
projected q, k (``mixers/ops/fla_kernels.py``): ``impl=fla`` through the distinct Taylor features
(as fla's ``TaylorFeatureMap``) and fla's chunked linear-attention kernel (O(n)), ``fla_parallel``
fla's ``parallel_based`` (O(n^2) work, the default of fla's ``BasedLinearAttention``),
``fla_fused_chunk`` fla's ``fused_chunk_based`` (feature_dim <= 16); ``impl=auto`` is ``fla`` on
CUDA inputs where fla imports (and heads are at least 16 wide), ``chunked`` otherwise. The default
is ``chunked``: fla is opt-in until its GPU equality tests (tests/mixers/test_fla.py) have passed on
a GPU. Every path
has the same parameters; the decoding state after a prefill is formed with this file's features.

Sliding-window branch: ``mixers/sliding_window_attention.py`` with ``window`` (64) positions.
The paper builds a model from separate layers (Taylor linear attention, sliding-window attention
and gated convolutions, interleaved); this harness gives every layer the same mixer, so here one
layer holds both attention branches side by side on the same input and sums their outputs
(``window: 0`` keeps the linear-attention branch alone, zoology's ``Based`` layer). Decoding carries
the linear-attention state (fixed size) and the window's KV cache.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from mixers import register
from mixers.base import Mixer
from mixers.linear_attention import chunked_flops, normalised
from mixers.ops import fla_kernels
from mixers.ops import flops as F
from mixers.ops.linear_attention import linear_attention_chunked, linear_attention_recurrent, linear_attention_step
from mixers.sliding_window_attention import SlidingWindowAttention


def taylor_feature_count(d: int) -> int:
    """Distinct 2nd-order Taylor features of a ``d``-vector: ``1 + d + d (d + 1) / 2`` (153 for d = 16)."""
    return 1 + d + d * (d + 1) // 2


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """``x (..., d)`` -> ``(..., 1 + d + d (d + 1) / 2)`` with ``phi(x) . phi(y) = 1 + x.y / sqrt(d) + (x.y)^2 / (2 d)``.

    The quadratic part keeps each product ``x_i x_j`` once (``i <= j``): ``(x.y)^2 = sum_i x_i^2 y_i^2
    + 2 sum_{i<j} x_i x_j y_i y_j``, so the diagonal is scaled by ``1 / sqrt(2 d)`` and the rest by
    ``1 / sqrt(d)``: the same kernel as the ``d^2`` features of ``vec(x x^T) / sqrt(2 d)``
    (``taylor_features_full``, zoology's map), in 153 features instead of 273 for d = 16 (as fla's Based).
    """
    d = x.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=x.device)
    # the scales in x's dtype (torch.where of Python floats would round them to float32 first)
    scale = torch.full(rows.shape, 1.0 / math.sqrt(d), dtype=x.dtype, device=x.device)
    scale[rows == cols] = 1.0 / math.sqrt(2.0 * d)
    quadratic = x[..., rows] * x[..., cols] * scale
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, quadratic], dim=-1)


def taylor_features_full(x: torch.Tensor) -> torch.Tensor:
    """The reference map with every ordered pair: ``x (..., d)`` -> ``(..., 1 + d + d^2)``, the same kernel."""
    d = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2.0) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, outer], dim=-1)


IMPLS = ("auto", "chunked", "recurrent", "fla", "fla_parallel", "fla_fused_chunk")
FLA_OPS = {"fla": fla_kernels.based_chunk, "fla_parallel": fla_kernels.based_parallel,
           "fla_fused_chunk": fla_kernels.based_fused_chunk}
FLA_MAX_FEATURE_DIM = {"fla_parallel": 128, "fla_fused_chunk": 16}  # what fla's kernels accept
FLA_BACKENDS = {"fla": "fla-chunk", "fla_parallel": "fla-parallel", "fla_fused_chunk": "fla-fused_chunk"}


@register("based")
class Based(Mixer):
    """Taylor linear attention + sliding-window attention: ``(batch, n, d_model) -> (batch, n, d_model)``."""

    time_complexity = "O(n w)"
    memory_complexity = "O(n w)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(w)"
    state_exponent = 0.0
    paper = "Arora et al. 2024, Simple linear attention language models balance the recall-throughput tradeoff (arXiv 2402.18668)"
    backends = ("fla-chunk+sdpa-blocked", "fla-parallel+sdpa-blocked", "fla-fused_chunk+sdpa-blocked",
                "torch-chunked+sdpa-blocked", "torch-recurrent+sdpa-blocked")

    def __init__(self, d_model: int, max_len: int, feature_dim: int = 16, heads: int = 4, eps: float = 1e-12,
                 window: int = 64, rope_base: float = 10000.0, chunk_size: int = 64, impl: str = "chunked"):
        super().__init__(d_model, max_len)
        if heads < 1 or d_model % heads:
            raise ValueError(f"based: d_model={d_model} is not divisible by heads={heads}")
        if impl not in IMPLS:
            raise ValueError(f"based: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self._fla_fits = fla_kernels.fits(value=d_model // heads)  # its chunk kernel's keys: 1 + f + f (f + 1) / 2
        if impl in FLA_OPS:
            fla_kernels.require_fla("based", impl)
        if impl == "fla":
            fla_kernels.require_fits("based", impl, value=d_model // heads)
        if feature_dim > FLA_MAX_FEATURE_DIM.get(impl, feature_dim):
            raise ValueError(f"based: impl={impl} takes feature_dim <= {FLA_MAX_FEATURE_DIM[impl]} (fla's kernel), "
                             f"got feature_dim={feature_dim}")
        self.feature_dim, self.heads, self.head_dim, self.eps = feature_dim, heads, d_model // heads, eps
        self.window, self.chunk_size, self.impl = window, chunk_size, impl
        self.declare(window=window, impl=impl)
        if window == 0:  # linear attention alone
            self.state_complexity = "O(1)"
        self.q_proj = nn.Linear(d_model, feature_dim * heads, bias=False)
        self.k_proj = nn.Linear(d_model, feature_dim * heads, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.window_attention = (SlidingWindowAttention(d_model, max_len, window=window, heads=heads,
                                                        rope_base=rope_base) if window > 0 else None)

    @classmethod
    def declared_complexity(cls, window: int = 64, impl: str = "auto", **_) -> dict:
        declared = super().declared_complexity()
        if window == 0:  # linear attention alone
            declared.update(time_complexity="O(n)", memory_complexity="O(n)")
        if impl == "fla_parallel":  # every (query, key) pair's kernel value: quadratic work, linear memory
            declared.update(time_complexity="O(n^2)", time_exponent=2.0)
        return declared

    def _path(self, device: torch.device) -> str:
        """The implementation of the linear-attention branch that runs for inputs on ``device``."""
        return fla_kernels.choose_path(self.impl, device, self._fla_fits)

    @property
    def backend(self) -> str:
        path = self._path(self.o_proj.weight.device)
        return FLA_BACKENDS.get(path, f"torch-{path}") + ("+sdpa-blocked" if self.window_attention is not None else "")

    def _fla_linear(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """The linear-attention branch through fla's kernel ``path``: ``x (b, n, d)`` -> ``(b, n, d)``."""
        fla_kernels.require_cuda_input("based", self.impl, x)
        q, k, v = (rearrange(proj(x), "b n (h e) -> b n h e", h=self.heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.o_proj(rearrange(FLA_OPS[path](q, k, v, self.eps), "b n h e -> b n (h e)"))

    def _features(self, x: torch.Tensor, pattern: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k) ``(..., heads, 1 + f + f (f + 1) / 2)`` and v with a ones column, heads split by ``pattern``."""
        q = taylor_features(rearrange(self.q_proj(x), pattern, h=self.heads))
        k = taylor_features(rearrange(self.k_proj(x), pattern, h=self.heads))
        v = rearrange(self.v_proj(x), pattern, h=self.heads)
        return q, k, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        path = self._path(x.device)
        if path in FLA_OPS:  # training: no decoding state
            y = self._fla_linear(x, path)
            return y if self.window_attention is None else y + self.window_attention(x)
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device)
        q, k, v = self._features(x, "b n (h e) -> b h n e")
        if path in FLA_OPS:  # fla's output; the state S, z from these features (one product)
            y = self._fla_linear(x, path)
            ct = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
            kv = (k.to(ct).transpose(-1, -2) @ v.to(ct)).to(v.dtype)
        else:
            if path == "chunked":
                o, kv = linear_attention_chunked(q, k, v, chunk_size=self.chunk_size)
            else:
                o, kv = linear_attention_recurrent(q, k, v)
            y = self.o_proj(rearrange(normalised(o, self.eps), "b h n e -> b n (h e)"))
        state = {"kv": kv}
        if self.window_attention is not None:
            y_window, state["window"] = self.window_attention.prefill(x)
            y = y + y_window
        return y, state

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._features(x, "b (h e) -> b h e")
        o, kv = linear_attention_step(q, k, v, None, state["kv"])
        y = self.o_proj(rearrange(normalised(o, self.eps), "b h e -> b (h e)"))
        new = {"kv": kv}
        if self.window_attention is not None:
            y_window, new["window"] = self.window_attention.step(x, state["window"])
            y = y + y_window
        return y, new

    def state_size(self, length: int) -> int:
        linear = self.heads * taylor_feature_count(self.feature_dim) * (self.head_dim + 1)  # S and z
        return linear + (self.window_attention.state_size(length) if self.window_attention is not None else 0)

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h, f = length, self.d_model, self.heads, self.feature_dim
        D = taylor_feature_count(f)
        terms = {"matmul": 2 * F.linear(n, d, f * h) + 2 * F.linear(n, d, d), "scan": 0.0,
                 # Taylor features of q and k (the f (f + 1) / 2 products and their scaling, the
                 # linear term's scaling), normalisation
                 "elementwise": 2.0 * n * h * (f * (f + 1.0) + f) + 2.0 * n * d}
        if self.impl == "fla_parallel":  # every causal pair: q.k, 1 + s + s^2 / 2 (4), kernel x [v, 1]
            pairs = h * n * (n + 1) / 2.0
            terms["attention"] = pairs * (2.0 * f + 2.0 * (self.head_dim + 1))
            terms["elementwise"] += 4.0 * pairs
        elif self.impl != "recurrent":  # chunked, and fla's chunked kernels
            for key, value in chunked_flops(n, h, D, self.head_dim + 1, self.chunk_size, gated=False).items():
                terms[key] = terms.get(key, 0.0) + value
        else:
            terms["scan"] += 4.0 * n * h * D * (self.head_dim + 1)
        if self.window_attention is not None:
            for key, value in self.window_attention.flop_terms(n).items():
                terms[key] = terms.get(key, 0.0) + value
            terms["elementwise"] += n * d  # the sum of the branches
        return terms
