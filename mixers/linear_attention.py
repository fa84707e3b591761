"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

q, k, v projections into ``heads`` heads, a positive feature map phi on queries and keys (elu + 1,
the paper's choice; or relu), and the normalised causal product

    o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),   S_t = sum_{j <= t} phi(k_j)^T v_j,   z_t = sum_{j <= t} phi(k_j)

then an output projection. Projections carry biases, as in the authors' fast-transformers
``AttentionLayer``. The normaliser is computed with the values by appending a column of ones to v.
``impl=chunked`` runs the chunkwise-parallel form of ``mixers/ops/linear_attention.py``;
``impl=recurrent`` the token-by-token recurrence it is tested against; ``impl=fla`` fla's
``chunk_linear_attn`` Triton kernel for the numerator with the same normaliser formed beside it
(``mixers/ops/fla_kernels.py``; CUDA); ``impl=auto`` fla on CUDA inputs where fla imports (and heads are at
least 16 wide) for sequences up to ``fla_max_len`` tokens, ``chunked`` otherwise. fla's kernel carries the
state from chunk to chunk in a loop over the length, parallel only over batch, heads and state tiles, so
at a fixed token count its time grows with the length; our chunked path sums the chunk states at once.
Measured on an H200 (d_model 512, 4 heads, 131,072 tokens a step, bf16, forward and backward): fla
9.2 / 20.9 / 58.4 ms against the chunked path's 19.0 / 19.0 / 19.4 ms at n = 1k / 16k / 65k; the
crossover lies between 1k and 16k (about 10k-14k interpolating), so the default 8192 keeps fla where it
was measured faster. The default is ``chunked``: fla is opt-in until its GPU equality tests
(tests/mixers/test_fla.py) have passed on a GPU. Every path has the same parameters and computes the
same function. Decoding
carries (S, z): a fixed-size state.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.base import Mixer
from mixers.ops import fla_kernels
from mixers.ops import flops as F
from mixers.ops.linear_attention import linear_attention_chunked, linear_attention_recurrent, linear_attention_step

IMPLS = ("auto", "chunked", "recurrent", "fla")
FEATURE_MAPS = {"elu": lambda x: TF.elu(x) + 1.0, "relu": TF.relu}


def normalised(o: torch.Tensor, eps: float) -> torch.Tensor:
    """Split ``o (..., dv + 1)`` computed with a ones column into numerator / (denominator + eps)."""
    return o[..., :-1] / (o[..., -1:] + eps)


def chunked_flops(n: int, heads: int, dk: int, dv: int, chunk: int, gated: bool, subchunk: int = 0) -> dict[str, float]:
    """Dense products (``matmul``) and the rest of ``linear_attention_chunked`` per sequence, as computed:
    the length padded to whole chunks, masked scores included."""
    Q = min(chunk, n)
    if gated:
        c = min(subchunk, Q)
        Q = -(-Q // c) * c
    C = -(-n // Q)
    per_chunk = 2.0 * Q * Q * (dk + dv) + 2.0 * Q * dk * dv * 2  # scores, scores x v; chunk states, q . entering
    terms = {"matmul": C * heads * per_chunk, "scan": C * heads * dk * dv * (3.0 if gated else 1.0)}
    if gated:
        c = min(subchunk, Q)
        S = Q // c
        terms["matmul"] += C * heads * 2.0 * S * c * c * dv  # within-sub-chunk scores x v
        # rescaled q and k (exp, multiply), pairwise decays and products within sub-chunks, decay cumsum
        terms["elementwise"] = C * heads * (2.0 * Q * dk * (2 + S) + 4.0 * S * c * c * dk + Q * dk * 3)
    return terms


@register("linear_attention")
class LinearAttention(Mixer):
    """Causal linear attention: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = "Katharopoulos et al. 2020, Transformers are RNNs (arXiv 2006.16236)"
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, heads: int = 4, feature_map: str = "elu", eps: float = 1e-6,
                 bias: bool = True, chunk_size: int = 64, impl: str = "chunked", fla_max_len: int = 8192):
        super().__init__(d_model, max_len)
        if heads < 1 or d_model % heads:
            raise ValueError(f"linear_attention: d_model={d_model} is not divisible by heads={heads}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attention: feature_map must be one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")
        if impl not in IMPLS:
            raise ValueError(f"linear_attention: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if fla_max_len < 1:
            raise ValueError(f"linear_attention: fla_max_len must be >= 1, got {fla_max_len}")
        self._fla_fits = fla_kernels.fits(head=d_model // heads)
        if impl == "fla":
            fla_kernels.require_fla("linear_attention", impl)
            fla_kernels.require_fits("linear_attention", impl, head=d_model // heads)
        self.heads, self.head_dim, self.eps, self.bias = heads, d_model // heads, eps, bias
        self.feature_map, self.chunk_size, self.impl, self.fla_max_len = feature_map, chunk_size, impl, fla_max_len
        self.phi = FEATURE_MAPS[feature_map]
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _path(self, device: torch.device, length: int | None = None) -> str:
        """The implementation that runs for inputs on ``device`` of ``length`` tokens (None: any length up
        to ``fla_max_len``)."""
        short = length is None or length <= self.fla_max_len
        return fla_kernels.choose_path(self.impl, device, short and self._fla_fits)

    @property
    def backend(self) -> str:
        name = self.backend_at(None)
        if self.impl == "auto" and name == "fla-chunk":
            name += f"(n<={self.fla_max_len}, else torch-chunked)"
        return name

    def backend_at(self, length: int | None) -> str:
        path = self._path(self.out_proj.weight.device, length)
        return "fla-chunk" if path == "fla" else f"torch-{path}"

    def _features(self, x: torch.Tensor, pattern: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k) and v with a ones column, split into heads by ``pattern``."""
        q, k, v = rearrange(self.qkv(x), pattern, three=3, h=self.heads)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return self.phi(q), self.phi(k), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device, x.shape[1])
        if path == "fla":
            fla_kernels.require_cuda_input("linear_attention", self.impl, x)
            q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b n h e", three=3, h=self.heads)
            o, state = fla_kernels.linear_attention(self.phi(q), self.phi(k), v, self.eps)  # fla's layout
            return self.out_proj(rearrange(o, "b n h e -> b n (h e)")), {"kv": state}
        q, k, v = self._features(x, "b n (three h e) -> three b h n e")  # (b, h, n, e), v (b, h, n, e + 1)
        if path == "chunked":
            o, state = linear_attention_chunked(q, k, v, chunk_size=self.chunk_size)
        else:
            o, state = linear_attention_recurrent(q, k, v)
        y = rearrange(normalised(o, self.eps), "b h n e -> b n (h e)")
        return self.out_proj(y), {"kv": state}  # (b, h, e, e + 1): S and z

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._features(x, "b (three h e) -> three b h e")
        o, kv = linear_attention_step(q, k, v, None, state["kv"])
        return self.out_proj(rearrange(normalised(o, self.eps), "b h e -> b (h e)")), {"kv": kv}

    def state_size(self, length: int) -> int:
        return self.heads * self.head_dim * (self.head_dim + 1)

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h, e = length, self.d_model, self.heads, self.head_dim
        terms = {"matmul": F.linear(n, d, 3 * d) + F.linear(n, d, d), "scan": 0.0,
                 # feature map (elu + 1: about 3 per element) on q and k, normalisation, biases
                 "elementwise": 6.0 * n * d + 2.0 * n * d + (4.0 * n * d if self.bias else 0.0)}
        if self.impl != "recurrent":  # fla's chunk_linear_attn: the same chunked form (chunks of 64)
            for key, value in chunked_flops(n, h, e, e + 1, self.chunk_size, gated=False).items():
                terms[key] = terms.get(key, 0.0) + value
        else:  # per step: state update k^T v and read-out q S, per head
            terms["scan"] += 4.0 * n * h * e * (e + 1)
        return terms
