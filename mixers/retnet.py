"""Multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large
Language Models").

Linear attention with a fixed decay per head: per head ``h``, with rotary-rotated queries and keys

    S_t = gamma_h S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(dk),   gamma_h = 1 - 2^(-5 - h)

(the paper's decays, Sec. 2.2 / its ``torchscale`` code, and those fla's ``chunk_retention`` fixes for
head ``h`` of ``heads``). The layer follows fla-org/flash-linear-attention ``fla/layers/multiscale_retention.py``
(``MultiScaleRetention``, fla 0.6.0) at its defaults: key dimension ``expand_k * d_model`` (1), value
dimension ``expand_v * d_model`` (2), 8 heads, no short convolution (``use_short_conv=False``), no feature
map, rotate-half rotary embeddings on q and k (``RotaryEmbedding(head_k_dim)``, base 10000: the paper's
``e^(i n theta)`` rotation, eq. (3); the xPos-like per-position scale is the decay gamma itself), a
per-head RMSNorm with a learned scale (the paper's GroupNorm over heads, as fla's ``FusedRMSNormGated``), the swish output gate ``swish(x W_g)``, and an
output projection; linear layers without bias, initialised normal(0, 0.02) as fla's models
(``fla/models/modeling_utils.py``, ``initializer_range``).

``impl=chunked`` runs the chunkwise-parallel form of ``mixers/ops/linear_attention.py`` with the constant
log decay ``log gamma_h`` on every key channel; ``impl=recurrent`` the token-by-token recurrence above;
``impl=fla`` fla's ``chunk_retention`` Triton kernel (``mixers/ops/fla_kernels.py``; CUDA), ``impl=auto``
fla on CUDA inputs where fla imports (and heads are at least 16 wide), ``chunked`` otherwise. The default
is ``chunked``: fla is opt-in until its GPU equality tests (tests/mixers/test_retnet.py, gpu) have
passed on a GPU. Every path has the same parameters and computes the same function. Decoding carries
the (dk, dv) state of every head, and the position (for the rotary angle), which is not a stored value.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.attention import apply_rotary, rotary_cos_sin
from mixers.base import Mixer
from mixers.linear_attention import chunked_flops
from mixers.ops import fla_kernels
from mixers.ops import flops as F
from mixers.ops.linear_attention import linear_attention_chunked, linear_attention_recurrent, linear_attention_step

IMPLS = ("auto", "chunked", "recurrent", "fla")


def retention_log_decays(heads: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``log(1 - 2^(-5 - h))`` for heads ``h = 0 .. heads - 1`` ``(heads,)``: the paper's fixed decays."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(heads, device=device, dtype=torch.float64))).to(dtype)


@register("retnet")
class MultiScaleRetention(Mixer):
    """Multi-scale retention: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = "Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models (arXiv 2307.08621)"
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, heads: int = 8, expand_k: float = 1.0, expand_v: float = 2.0,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5, init_std: float = 0.02, chunk_size: int = 64,
                 subchunk_size: int = 16, impl: str = "chunked"):
        super().__init__(d_model, max_len)
        key_dim, value_dim = d_model * expand_k, d_model * expand_v
        if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
            raise ValueError(f"retnet: d_model * expand_k ({key_dim}) and d_model * expand_v ({value_dim}) must be integers")
        key_dim, value_dim = round(key_dim), round(value_dim)
        if heads < 1 or key_dim % heads or value_dim % heads:
            raise ValueError(f"retnet: key dim {key_dim} and value dim {value_dim} must be divisible by heads={heads}")
        if (key_dim // heads) % 2:
            raise ValueError(f"retnet: the per-head key width {key_dim // heads} must be even (rotary pairs channels)")
        if impl not in IMPLS:
            raise ValueError(f"retnet: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if chunk_size < 1 or subchunk_size < 1 or chunk_size % subchunk_size:
            raise ValueError(f"retnet: subchunk_size={subchunk_size} must divide chunk_size={chunk_size}")
        self._fla_fits = fla_kernels.fits(key=key_dim // heads, value=value_dim // heads)
        if impl == "fla":
            fla_kernels.require_fla("retnet", impl)
            fla_kernels.require_fits("retnet", impl, key=key_dim // heads, value=value_dim // heads)
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.dk, self.dv = key_dim // heads, value_dim // heads
        self.rope_base, self.chunk_size, self.subchunk_size, self.impl = rope_base, chunk_size, subchunk_size, impl
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate
        self.norm = nn.RMSNorm(self.dv, eps=norm_eps)  # per head, with a learned scale
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)

    def _path(self, device: torch.device) -> str:
        """The implementation that runs for inputs on ``device``."""
        return fla_kernels.choose_path(self.impl, device, self._fla_fits)

    @property
    def backend(self) -> str:
        return fla_kernels.chunk_backend(self._path(self.o_proj.weight.device))

    def _inputs(self, x: torch.Tensor, start: int, pattern: str):
        """q (rotated, scaled by dk^-1/2), k (rotated), v and the output gate, heads split by ``pattern``
        (the position axis second to last after the split, or absent for one token), at positions from ``start``."""
        q = rearrange(self.q_proj(x), pattern, h=self.heads)
        k = rearrange(self.k_proj(x), pattern, h=self.heads)
        v = rearrange(self.v_proj(x), pattern, h=self.heads)
        n = x.shape[1] if x.dim() == 3 else 1
        cos, sin = rotary_cos_sin(start + n, self.dk, self.rope_base, x.device, q.dtype)
        cos, sin = cos[start:], sin[start:]  # (n, dk)
        if x.dim() == 2:
            cos, sin = cos[0], sin[0]
        elif pattern.endswith("b n h e"):  # fla's layout: positions before heads
            cos, sin = cos[:, None], sin[:, None]
        return apply_rotary(q, cos, sin) * self.dk ** -0.5, apply_rotary(k, cos, sin), v, self.g_proj(x)

    def _log_decays(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``log gamma_h`` broadcast to ``shape`` with heads at axis 1 (our layout)."""
        g = retention_log_decays(self.heads, like.device, like.dtype)
        return g.view(1, -1, *([1] * (len(shape) - 2))).expand(shape)

    def _output(self, o: torch.Tensor, gate: torch.Tensor, pattern: str) -> torch.Tensor:
        """RMSNorm per head, swish output gate, output projection."""
        return self.o_proj(rearrange(self.norm(o), pattern) * TF.silu(gate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        n = x.shape[1]
        path = self._path(x.device)
        if path == "fla":
            fla_kernels.require_cuda_input("retnet", self.impl, x)
            q, k, v, gate = self._inputs(x, 0, "b n (h e) -> b n h e")  # fla's layout
            o, state = fla_kernels.retention(q, k, v)
            return self._output(o, gate, "b n h e -> b n (h e)"), {"kv": state, "position": n}
        q, k, v, gate = self._inputs(x, 0, "b n (h e) -> b h n e")
        g = self._log_decays(q, k.shape)
        if path == "chunked":
            o, state = linear_attention_chunked(q, k, v, g, self.chunk_size, self.subchunk_size)
        else:
            o, state = linear_attention_recurrent(q, k, v, g)
        return self._output(o, gate, "b h n e -> b n (h e)"), {"kv": state, "position": n}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v, gate = self._inputs(x, state["position"], "b (h e) -> b h e")
        o, kv = linear_attention_step(q, k, v, self._log_decays(q, k.shape), state["kv"])
        return self._output(o, gate, "b h e -> b (h e)"), {"kv": kv, "position": state["position"] + 1}

    def state_size(self, length: int) -> int:
        return self.heads * self.dk * self.dv

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d = length, self.d_model
        kd, vd = self.key_dim, self.value_dim
        terms = {
            "matmul": F.linear(n, d, 2 * kd + 2 * vd) + F.linear(n, vd, d),
            "scan": 0.0,
            # rotary on q and k (3 per element), q scale; RMSNorm (about 4), swish gate (5)
            "elementwise": n * kd * 7.0 + n * vd * 9.0,
        }
        if self.impl != "recurrent":  # fla's chunk_retention: the same chunked form (chunks of 64)
            for key, value in chunked_flops(n, self.heads, self.dk, self.dv, self.chunk_size, True,
                                            self.subchunk_size).items():
                terms[key] = terms.get(key, 0.0) + value
        else:  # per step: decay the state, add k^T v, read out q S
            terms["scan"] += 5.0 * n * self.heads * self.dk * self.dv
        return terms
