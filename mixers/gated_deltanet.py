"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with
Delta Rule"): the delta rule with Mamba2's data-dependent decay per head,

    S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = q_t S_t,
    alpha_t = exp(-exp(A_log) softplus(x_t W_a + dt_bias)),   beta_t = sigmoid(x_t W_b)

The layer follows the reference implementation (fla-org/flash-linear-attention 0.6.0,
``fla/layers/gated_deltanet.py``, ``GatedDeltaNet``, its gate as ``fla/ops/gated_delta_rule/gate.py``
``naive_gdn_gate``): 6 heads whose key width is ``head_dim`` (fla: 256 at hidden size 2048, i.e.
``num_heads * head_dim = 0.75 hidden_size``, which ``expand_k`` 0.75 keeps at any width) and value width
``expand_v * head_dim`` (2); q, k, v projections without bias, each through a short causal
convolution (4 taps, no bias) with a SiLU; q, k L2-normalised per head, queries scaled by
``head_dim^-1/2``; beta and the decay's input from bias-free projections to one value per head;
``A`` drawn uniform in (0, 16) and stored as ``A_log``, ``dt_bias`` the inverse softplus of a
log-uniform draw in [0.001, 0.1] (floored at 1e-4), both without weight decay, as Mamba2 and fla's
``GatedDeltaNetPreTrainedModel._init_weights``; the output RMSNorm per head then the output gate
``swish(x W_g)`` (fla's ``FusedRMSNormGated``) and the output projection; linear and convolution
weights normal(0, 0.02). fla's parameter names, so its layer's state dicts load.
``allow_neg_eigval`` doubles beta (eigenvalues of the transition in (-1, 1]).

Paths as ``mixers/deltanet.py`` (``chunked`` the default, ``recurrent`` the reference, ``fla``
fla's ``chunk_gated_delta_rule`` on CUDA, opt-in until its GPU equality tests pass). fla's layer
fuses the gate, the L2 norms and beta's sigmoid into its kernel; here they are formed before it, the
same function on every path.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.deltanet import DeltaNet
from mixers.ops import flops as F


@register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    paper = ("Yang, Kautz, Hatamizadeh 2024, Gated Delta Networks: Improving Mamba2 with Delta Rule "
             "(arXiv 2412.06464)")
    gated = True

    def __init__(self, d_model: int, max_len: int, heads: int = 6, expand_k: float = 0.75, expand_v: float = 2.0,
                 use_gate: bool = True, use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
                 allow_neg_eigval: bool = False, a_init_min: float = 0.0, a_init_max: float = 16.0,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, norm_eps: float = 1e-5,
                 init_std: float = 0.02, chunk_size: int = 64, impl: str = "chunked"):
        key_dim = int(d_model * expand_k)
        if heads < 1 or key_dim % heads:
            raise ValueError(f"gated_deltanet: key dim {key_dim} (d_model * expand_k) must be divisible by heads={heads}")
        if not 0 <= a_init_min < a_init_max:
            raise ValueError(f"gated_deltanet: need 0 <= a_init_min < a_init_max, got {a_init_min}, {a_init_max}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"gated_deltanet: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self._init = (a_init_min, a_init_max, dt_min, dt_max, dt_init_floor)
        # value width expand_v per key width: the value dim is expand_v * key_dim
        super().__init__(d_model, max_len, heads=heads, expand_k=expand_k, expand_v=expand_k * expand_v,
                         use_beta=True, use_gate=use_gate, use_short_conv=use_short_conv, conv_size=conv_size,
                         conv_bias=conv_bias, allow_neg_eigval=allow_neg_eigval, qk_activation="silu", qk_norm="l2",
                         norm_eps=norm_eps, init_std=init_std, chunk_size=chunk_size, impl=impl)

    def _decay_parameters(self) -> None:
        low, high, dt_min, dt_max, floor = self._init
        self.a_proj = nn.Linear(self.d_model, self.heads, bias=False)
        A = torch.empty(self.heads).uniform_(low, high)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        dt = torch.exp(torch.rand(self.heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_bias._no_weight_decay = True

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """``log alpha = -exp(A_log) softplus(x W_a + dt_bias)``, ``(..., heads)``, in float32 for 16-bit inputs
        (as fla's gate), else in the inputs' precision."""
        ct = torch.promote_types(x.dtype, torch.float32)
        return -torch.exp(self.A_log.to(ct)) * TF.softplus(self.a_proj(x).to(ct) + self.dt_bias.to(ct))

    def _decay_flop_terms(self, length: int) -> dict[str, float]:
        """The decay's projection, then bias, softplus (4), exp-scale and sign per head and token."""
        return {"matmul": F.linear(length, self.d_model, self.heads), "elementwise": 7.0 * length * self.heads}
