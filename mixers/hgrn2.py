"""HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion").

A gated linear RNN whose forget gate ``f_t`` also makes its input gate ``1 - f_t``, with the state
expanded by an outer product: per head, with ``E`` (``expand_ratio``) forget channels and ``dv``
input channels,

    S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t,   o_t = (q_t / sqrt(E)) S_t,   f_t = gamma + (1 - gamma) sigmoid(x_t W_f)

(``S (E, dv)``): gated linear attention with keys ``1 - f_t`` tied to the decay, so it runs on the
chunked GLA form of ``mixers/ops/linear_attention.py``. The layer follows fla-org/flash-linear-attention
``HGRN2Attention`` (fla/layers/hgrn2.py, fla 0.6.0) and its model (fla/models/hgrn2): projections
``q`` (swish), ``f`` and ``i`` without bias, ``heads = d_model / expand_ratio`` (at least one: fla's rule
gives none below 128 channels, so narrower models get one head with 128 forget channels), queries
scaled by ``E^-1/2`` (``chunk_gla``'s default scale), an RMSNorm over all channels, the output
projection; no short convolution (fla's ``use_short_conv=False``); linear layers initialised
normal(0, 0.02) as in fla's models. ``lower_bound`` (gamma, 0 by default) is the forget gate's lower
bound: fla's model learns one per layer rising with depth (cumulative softmax over layers, so at
initialisation layer i of L has i / L), and its first layer's is 0; here every layer is a first layer (the backbone passes no bounds), and a
constant bound can be set (``log f = logaddexp(log gamma, log(1 - gamma) + logsigmoid(x W_f))``).

``impl=chunked`` runs the chunkwise-parallel form with secondary chunking; ``impl=recurrent`` the
token-by-token recurrence; ``impl=fla`` fla's ``chunk_gla`` Triton kernel (as fla's layer beyond 64
tokens; ``mixers/ops/fla_kernels.py``, CUDA); ``impl=auto`` fla on CUDA inputs where fla imports (and
heads are at least 16 wide), ``chunked`` otherwise. The default is ``chunked``: fla is opt-in until
its GPU equality tests (tests/mixers/test_hgrn2.py, gpu) have passed on a GPU. Every path has the
same parameters. Decoding holds the state ``(heads, E, dv)``: ``heads E d_model / heads = E d_model``
values per sequence, as fla's ``state_size``.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.base import Mixer
from mixers.linear_attention import chunked_flops
from mixers.ops import fla_kernels
from mixers.ops import flops as F
from mixers.ops.linear_attention import linear_attention_chunked, linear_attention_recurrent, linear_attention_step

IMPLS = ("auto", "chunked", "recurrent", "fla")


@register("hgrn2")
class HGRN2(Mixer):
    """HGRN2: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = "Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion (arXiv 2404.07904)"
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, expand_ratio: int = 128, lower_bound: float = 0.0,
                 norm_eps: float = 1e-5, init_std: float = 0.02, chunk_size: int = 64, subchunk_size: int = 16,
                 impl: str = "chunked"):
        super().__init__(d_model, max_len)
        if expand_ratio < 1:
            raise ValueError(f"hgrn2: expand_ratio must be >= 1, got {expand_ratio}")
        heads = max(1, d_model // expand_ratio)
        if d_model % heads:
            raise ValueError(f"hgrn2: d_model={d_model} is not divisible by its heads={heads} "
                             f"(d_model // expand_ratio={expand_ratio})")
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"hgrn2: lower_bound must lie in [0, 1), got {lower_bound}")
        if impl not in IMPLS:
            raise ValueError(f"hgrn2: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if chunk_size % subchunk_size:
            raise ValueError(f"hgrn2: subchunk_size={subchunk_size} must divide chunk_size={chunk_size}")
        self.heads, self.expand_ratio, self.dv = heads, expand_ratio, d_model // heads
        self.forget_dim = heads * expand_ratio
        self._fla_fits = fla_kernels.fits(key=expand_ratio, value=self.dv)
        if impl == "fla":
            fla_kernels.require_fla("hgrn2", impl)
            fla_kernels.require_fits("hgrn2", impl, key=expand_ratio, value=self.dv)
        self.lower_bound, self.chunk_size, self.subchunk_size, self.impl = lower_bound, chunk_size, subchunk_size, impl
        self.q_proj = nn.Linear(d_model, self.forget_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.forget_dim, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        for module in (self.q_proj, self.f_proj, self.i_proj, self.o_proj):
            nn.init.normal_(module.weight, std=init_std)

    def _path(self, device: torch.device) -> str:
        """The implementation that runs for inputs on ``device``."""
        return fla_kernels.choose_path(self.impl, device, self._fla_fits)

    @property
    def backend(self) -> str:
        return fla_kernels.chunk_backend(self._path(self.o_proj.weight.device))

    def _inputs(self, x: torch.Tensor, pattern: str):
        """Queries (swish, scaled), keys ``1 - f``, values ``i`` and log forget gates ``log f <= 0``, heads split
        by ``pattern``."""
        q = TF.silu(self.q_proj(x)) * self.expand_ratio ** -0.5
        g = TF.logsigmoid(self.f_proj(x))
        if self.lower_bound > 0:  # log(gamma + (1 - gamma) sigmoid)
            g = torch.logaddexp(torch.full_like(g, math.log(self.lower_bound)), math.log1p(-self.lower_bound) + g)
        k = -torch.expm1(g)  # 1 - f
        q, k, g = (rearrange(t, pattern, h=self.heads) for t in (q, k, g))
        return q, k, rearrange(self.i_proj(x), pattern, h=self.heads), g

    def _output(self, o: torch.Tensor, pattern: str) -> torch.Tensor:
        return self.o_proj(self.g_norm(rearrange(o, pattern)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device)
        if path == "fla":
            fla_kernels.require_cuda_input("hgrn2", self.impl, x)
            o, state = fla_kernels.gla(*self._inputs(x, "b n (h e) -> b n h e"))  # fla's layout
            return self._output(o, "b n h e -> b n (h e)"), {"kv": state}
        q, k, v, g = self._inputs(x, "b n (h e) -> b h n e")
        if path == "chunked":
            o, state = linear_attention_chunked(q, k, v, g, self.chunk_size, self.subchunk_size)
        else:
            o, state = linear_attention_recurrent(q, k, v, g)
        return self._output(o, "b h n e -> b n (h e)"), {"kv": state}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v, g = self._inputs(x, "b (h e) -> b h e")
        o, kv = linear_attention_step(q, k, v, g, state["kv"])
        return self._output(o, "b h e -> b (h e)"), {"kv": kv}

    def state_size(self, length: int) -> int:
        """The state ``(heads, expand_ratio, d_model / heads)``."""
        return self.heads * self.expand_ratio * self.dv

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h, e, dv = length, self.d_model, self.heads, self.expand_ratio, self.dv
        f = self.forget_dim
        terms = {
            "matmul": 2 * F.linear(n, d, f) + 2 * F.linear(n, d, d),
            "scan": 0.0,
            # swish (4) and scale on q, log-sigmoid (4), 1 - exp (2), the lower bound (about 4), RMSNorm (about 4)
            "elementwise": n * f * (5.0 + 4.0 + 2.0 + (4.0 if self.lower_bound > 0 else 0.0)) + n * d * 4.0,
        }
        if self.impl != "recurrent":  # fla's chunk_gla: the same chunked form (chunks of 64)
            for key, value in chunked_flops(n, h, e, dv, self.chunk_size, True, self.subchunk_size).items():
                terms[key] = terms.get(key, 0.0) + value
        else:  # per step: decay the state, add k^T v, read out q S
            terms["scan"] += 5.0 * n * h * e * dv
        return terms
