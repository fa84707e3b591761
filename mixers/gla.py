"""Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training").

Linear attention with a data-dependent decay per key channel: per head

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t,   alpha_t = sigmoid(x_t W1 W2 + b)^(1/16)

The layer follows the paper and its reference implementation (fla-org/flash-linear-attention
``GatedLinearAttention``): key dimension ``expand_k * d_model`` (0.5), value dimension
``expand_v * d_model`` (1), 4 heads, queries scaled by ``head_k_dim^-1/2``, a low-rank (16) gate
projection whose log-sigmoid is divided by ``gate_logit_normalizer`` (16), a per-head RMSNorm of
the output then an output gate ``swish(x W_r)``, and an output projection; linear layers without
bias except the gate's second, initialised normal(0, 0.02) as in fla's GLA models.
``impl=chunked`` runs the chunkwise-parallel form with secondary chunking of
``mixers/ops/linear_attention.py``; ``impl=recurrent`` the token-by-token recurrence; ``impl=fla``
fla's ``chunk_gla`` Triton kernel (``mixers/ops/fla_kernels.py``; CUDA, fla picks its own chunk of
at most 64 tokens); ``impl=auto`` fla on CUDA inputs where fla imports (and heads are at least 16
wide), ``chunked`` otherwise. The default is ``chunked``: fla is opt-in until its GPU equality tests
(tests/mixers/test_fla.py) have passed on a GPU. Every
path has the same parameters (state dicts load across them) and computes the same function.
"""
from __future__ import annotations

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


@register("gla")
class GatedLinearAttention(Mixer):
    """Gated linear attention: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = "Yang et al. 2024, Gated Linear Attention Transformers with Hardware-Efficient Training (arXiv 2312.06635)"
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0, norm_eps: float = 1e-5,
                 init_std: float = 0.02, chunk_size: int = 64, subchunk_size: int = 16, impl: str = "chunked"):
        super().__init__(d_model, max_len)
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if heads < 1 or key_dim % heads or value_dim % heads:
            raise ValueError(f"gla: key dim {key_dim} and value dim {value_dim} must be divisible by heads={heads}")
        if impl not in IMPLS:
            raise ValueError(f"gla: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self._fla_fits = fla_kernels.fits(key=key_dim // heads, value=value_dim // heads)
        if impl == "fla":
            fla_kernels.require_fla("gla", impl)
            fla_kernels.require_fits("gla", impl, key=key_dim // heads, value=value_dim // heads)
        if chunk_size % subchunk_size:
            raise ValueError(f"gla: subchunk_size={subchunk_size} must divide chunk_size={chunk_size}")
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.dk, self.dv = key_dim // heads, value_dim // heads
        self.gate_low_rank_dim, self.gate_logit_normalizer = gate_low_rank_dim, gate_logit_normalizer
        self.chunk_size, self.subchunk_size, self.impl = chunk_size, subchunk_size, impl
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True))  # forget gate, low rank
        self.norm = nn.RMSNorm(self.dv, eps=norm_eps)  # per head, with a learned scale
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _path(self, device: torch.device) -> str:
        """The implementation that runs for inputs on ``device``."""
        return fla_kernels.choose_path(self.impl, device, self._fla_fits)

    @property
    def backend(self) -> str:
        return fla_kernels.chunk_backend(self._path(self.o_proj.weight.device))

    def _inputs(self, x: torch.Tensor, pattern: str):
        """q (scaled), k, v, log decays g <= 0 and the output gate, heads split by ``pattern``."""
        q = rearrange(self.q_proj(x), pattern, h=self.heads) * self.dk ** -0.5
        k = rearrange(self.k_proj(x), pattern, h=self.heads)
        v = rearrange(self.v_proj(x), pattern, h=self.heads)
        g = rearrange(TF.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer, pattern, h=self.heads)
        return q, k, v, g, self.g_proj(x)

    def _output(self, o: torch.Tensor, gate: torch.Tensor, pattern: str) -> torch.Tensor:
        """RMSNorm per head, swish output gate, output projection."""
        return self.o_proj(rearrange(self.norm(o), pattern) * TF.silu(gate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device)
        if path == "fla":
            fla_kernels.require_cuda_input("gla", self.impl, x)
            q, k, v, g, gate = self._inputs(x, "b n (h e) -> b n h e")  # fla's layout
            o, state = fla_kernels.gla(q, k, v, g)
            return self._output(o, gate, "b n h e -> b n (h e)"), {"kv": state}
        q, k, v, g, gate = self._inputs(x, "b n (h e) -> b h n e")
        if path == "chunked":
            o, state = linear_attention_chunked(q, k, v, g, self.chunk_size, self.subchunk_size)
        else:
            o, state = linear_attention_recurrent(q, k, v, g)
        return self._output(o, gate, "b h n e -> b n (h e)"), {"kv": state}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v, g, gate = self._inputs(x, "b (h e) -> b h e")
        o, kv = linear_attention_step(q, k, v, g, state["kv"])
        return self._output(o, gate, "b h e -> b (h e)"), {"kv": kv}

    def state_size(self, length: int) -> int:
        return self.heads * self.dk * self.dv

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, r = length, self.d_model, self.gate_low_rank_dim
        kd, vd = self.key_dim, self.value_dim
        terms = {
            "matmul": F.linear(n, d, 2 * kd + 2 * vd) + F.linear(n, d, r) + F.linear(n, r, kd) + F.linear(n, vd, d),
            "scan": 0.0,
            # q scale, gate bias + log-sigmoid (4) + normaliser, RMSNorm (about 4), swish gate (5)
            "elementwise": n * kd * 7.0 + n * vd * 9.0,
        }
        if self.impl != "recurrent":  # fla's chunk_gla: the same chunked form (chunks of 64)
            for key, value in chunked_flops(n, self.heads, self.dk, self.dv, self.chunk_size, True,
                                            self.subchunk_size).items():
                terms[key] = terms.get(key, 0.0) + value
        else:  # per step: decay the state, add k^T v, read out q S
            terms["scan"] += 5.0 * n * self.heads * self.dk * self.dv
        return terms
