"""RWKV-7 "Goose" time mixing (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution").

Per head, with the state ``S (dk, dv)`` (the paper's (dv, dk) state transposed), the generalised
delta rule of ``mixers/ops/dplr_delta_rule.py``:

    S_t = (diag(w_t) - kappa_t^T (a_t * kappa_t)) S_{t-1} + k_t^T v_t,   o_t = r_t S_t

The layer follows fla-org/flash-linear-attention ``RWKV7Attention`` (fla/layers/rwkv7.py, with
``LoRA`` of fla/layers/rwkv6.py, ``token_shift`` of fla/modules/token_shift.py and the output
correction of fla/ops/rwkv7/gate_output_correction.py; fla 0.6.0), as used in its first layer
(``layer_idx=0``):

- token shift: ``x_* = x + (x_{t-1} - x_t) * mu_*`` with six learned mixes ``x_r, x_w, x_k, x_v, x_a,
  x_g`` (``x_{-1} = 0``);
- ``r, k, v`` projections (no bias); heads of ``head_dim`` (64) channels, ``d_model / head_dim`` heads;
- decay ``w_t = exp(-e^-0.5 sigmoid(w_lora(x_w)))`` in ``(e^-e^-0.5, 1)``, ``w_lora`` low rank with tanh;
- in-context learning rate ``a_t = sigmoid(a_lora(x_a))`` (low rank, no activation inside);
- removal key ``kappa_t = normalise(k_t * k_k)`` per head (L2), key ``k_t <- k_t (1 + (a_t - 1) k_a)``;
- output: GroupNorm per head (eps ``head_dim * norm_eps``), plus the bonus ``((r_t * k_t * r_k) . 1) v_t``
  per head, times the gate ``g_t = g_lora(x_g)`` (low rank, sigmoid inside, no bias), output projection.

The value residual (``v <- lerp(v, v_first, sigmoid(v_lora(x_v)))`` in fla's later layers, mixing in
the first layer's values) is left out: every layer here is the first layer of its own stack (the
backbone passes no values between layers). Low-rank widths default (None) to fla's rule:
``max(32, round(c sqrt(d_model) f / 32) 32)`` with c = 2.5 (decay, a; f = head_dim / 64) and 5
(gate, f = 1). The initialisation is fla's ``_initialize_weights`` at layer 0 of ``init_layers``
layers: the token-shift mixes ``1 - (i / d)^p``, the decay and ``a`` biases with fla's zigzag
pattern over head channels, ``k_k = 0.71 - 0.1 lin``, ``k_a = 1.02``, ``r_k = -0.04``, orthogonal
``r, v`` (gain 1) and ``k`` (gain 0.1), LoRA down-projections zero and up-projections orthogonal
(gain 0.1), GroupNorm scale ``(1 / init_layers)^0.7``, and ``o_proj`` zero (``zero_output_init``;
BlinkDL's RWKV-LM zeroes it too). Weight decay as the authors train it (BlinkDL's RWKV-LM, RWKV-v7
``configure_optimizers``): only the r, k, v, o matrices; the LoRA factors and ``r_k`` are marked
exempt. (RWKV-LM also trains the decay bias at twice the learning rate; not reproduced here: a
``param._optim`` learning rate is absolute, not relative to the run's schedule.)

``impl=chunked`` runs the chunkwise-parallel form (``dplr_chunked``); ``impl=recurrent`` the
token-by-token recurrence; ``impl=fla`` fla's ``chunk_rwkv7`` Triton kernel (``mixers/ops/fla_kernels.py``,
CUDA); ``impl=auto`` fla on CUDA inputs where fla imports (and heads are at least 16 wide),
``chunked`` otherwise. The default is ``chunked``: fla is opt-in until its GPU equality tests
(tests/mixers/test_rwkv7.py, gpu) have passed on a GPU. Every path has the same parameters.
Decoding holds the state ``(heads, dk, dv)`` and the previous token's input ``(d_model,)`` (the token
shift): ``d_model^2 / heads + d_model`` values per sequence.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.base import Mixer
from mixers.ops import fla_kernels
from mixers.ops import flops as F
from mixers.ops.dplr_delta_rule import chunked_flops, dplr_chunked, dplr_recurrent, dplr_step, recurrent_flops

IMPLS = ("auto", "chunked", "recurrent", "fla")
DECAY_BOUND = math.exp(-0.5)  # |log w_t| < e^-0.5: the decay's lower bound, e^-e^-0.5 ~ 0.545
MAX_CHUNK_LOG_DECAY = 80.0  # exp(80) stays finite in float32: the chunked form's factors exp(+-G)
MIXES = ("r", "w", "k", "v", "a", "g")  # the token-shift mixes, in fla's order


def fla_low_rank(d_model: int, scale: float, factor: float) -> int:
    """fla's default LoRA width: ``max(32, round(scale sqrt(d_model) factor / 32) * 32)``."""
    return max(32, int(round(scale * d_model ** 0.5 * factor / 32) * 32))


class LowRank(nn.Module):
    """``x -> W2 act(W1 x) (+ bias)``: ``(..., d_in) -> (..., d_out)`` through ``rank`` channels; fla's ``LoRA``
    layout (``lora.0``, ``lora.2``) and init (``W1 = 0``, ``W2`` orthogonal with gain 0.1 (times
    ``sqrt(rank / d_out)`` when the rank is wider), bias 0)."""

    ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity}

    def __init__(self, d_in: int, d_out: int, rank: int, activation: str, bias: bool = True):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(d_in, rank, bias=False), self.ACTIVATIONS[activation](),
                                  nn.Linear(rank, d_out, bias=bias))
        with torch.no_grad():
            nn.init.zeros_(self.lora[0].weight)
            gain = math.sqrt(rank / d_out) if rank > d_out else 1.0
            nn.init.orthogonal_(self.lora[2].weight, gain=0.1 * gain)
            if bias:
                nn.init.zeros_(self.lora[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora(x)


@register("rwkv7")
class RWKV7(Mixer):
    """RWKV-7 time mixing: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = 'Peng et al. 2025, RWKV-7 "Goose" with Expressive Dynamic State Evolution (arXiv 2503.14456)'
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, head_dim: int = 64, decay_low_rank_dim: int | None = None,
                 a_low_rank_dim: int | None = None, gate_low_rank_dim: int | None = None, norm_eps: float = 1e-5,
                 init_layers: int = 2, zero_output_init: bool = True, chunk_size: int = 64, impl: str = "chunked"):
        super().__init__(d_model, max_len)
        if head_dim < 2 or d_model % head_dim:
            raise ValueError(f"rwkv7: head_dim={head_dim} must be >= 2 and divide d_model={d_model} "
                             f"(heads = d_model / head_dim)")
        if impl not in IMPLS:
            raise ValueError(f"rwkv7: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if not 1 <= chunk_size <= MAX_CHUNK_LOG_DECAY / DECAY_BOUND:
            raise ValueError(f"rwkv7: chunk_size={chunk_size} must lie in 1..{int(MAX_CHUNK_LOG_DECAY / DECAY_BOUND)} "
                             f"(a chunk's log decay must stay above -{MAX_CHUNK_LOG_DECAY:.0f})")
        if init_layers < 1:
            raise ValueError(f"rwkv7: init_layers must be >= 1, got {init_layers}")
        self._fla_fits = fla_kernels.fits(head=head_dim)
        if impl == "fla":
            fla_kernels.require_fla("rwkv7", impl)
            fla_kernels.require_fits("rwkv7", impl, head=head_dim)
        factor = head_dim / 64
        ranks = {"decay": decay_low_rank_dim or fla_low_rank(d_model, 2.5, factor),
                 "a": a_low_rank_dim or fla_low_rank(d_model, 2.5, factor),
                 "gate": gate_low_rank_dim or fla_low_rank(d_model, 5.0, 1.0)}
        for name, rank in ranks.items():
            if rank < 1:
                raise ValueError(f"rwkv7: {name}_low_rank_dim must be >= 1, got {rank}")
        self.head_dim, self.heads = head_dim, d_model // head_dim
        self.ranks, self.init_layers, self.zero_output_init = ranks, init_layers, zero_output_init
        self.chunk_size, self.impl = chunk_size, impl
        for mix in MIXES:
            self.register_parameter(f"x_{mix}", nn.Parameter(torch.zeros(d_model)))
        self.k_k = nn.Parameter(torch.zeros(d_model))
        self.k_a = nn.Parameter(torch.zeros(d_model))
        self.r_k = nn.Parameter(torch.zeros(self.heads, head_dim))
        self.r_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.w_lora = LowRank(d_model, d_model, ranks["decay"], "tanh")
        self.a_lora = LowRank(d_model, d_model, ranks["a"], "none")
        self.g_lora = LowRank(d_model, d_model, ranks["gate"], "sigmoid", bias=False)
        self.g_norm = nn.GroupNorm(self.heads, d_model, eps=head_dim * norm_eps)
        # the authors train without weight decay all but the r, k, v, o matrices (BlinkDL's RWKV-LM decays
        # only 2-D ``.weight`` parameters: not its LoRA factors w1, w2, a1, a2, g1, g2, nor r_k)
        for p in (self.r_k, *(lr.lora[i].weight for lr in (self.w_lora, self.a_lora, self.g_lora) for i in (0, 2))):
            p._no_weight_decay = True
        self._initialise()

    @torch.no_grad()
    def _initialise(self) -> None:
        """fla's ``RWKV7Attention._initialize_weights`` at ``layer_idx = 0`` of ``init_layers`` layers."""
        d, hd = self.d_model, self.head_dim
        i = torch.arange(d, dtype=torch.float64)
        ddd = i / d
        linear = i / (d - 1) - 0.5 if d > 1 else torch.zeros(d, dtype=torch.float64)
        zigzag = ((i % hd) - (hd - 1) / 2) / ((hd - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (i / max(d - 1, 1))  # -6 + 6 (i / (d - 1))^(1 + ratio_0_to_1^0.3), ratio 0 at layer 0
        for mix, power in zip(MIXES, (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):  # 1 - ddd^(p ratio_1_to_almost0), ratio 1
            getattr(self, f"x_{mix}").copy_(1.0 - ddd ** power)
        self.k_k.copy_(0.71 - linear * 0.1)
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.w_lora.lora[2].bias.copy_(www + 0.5 + zigzag * 2.5)
        self.a_lora.lora[2].bias.copy_(-0.19 + zigzag * 0.3 + linear * 0.4)
        self.g_norm.weight.fill_((1 / self.init_layers) ** 0.7)
        self.g_norm.bias.zero_()
        nn.init.orthogonal_(self.r_proj.weight)
        nn.init.orthogonal_(self.k_proj.weight, gain=0.1)
        nn.init.orthogonal_(self.v_proj.weight)
        if self.zero_output_init:
            self.o_proj.weight.zero_()
        else:  # a non-zero output at initialisation (tests): orthogonal, as r and v
            nn.init.orthogonal_(self.o_proj.weight)

    def _path(self, device: torch.device) -> str:
        """The implementation that runs for inputs on ``device``."""
        return fla_kernels.choose_path(self.impl, device, self._fla_fits)

    @property
    def backend(self) -> str:
        return fla_kernels.chunk_backend(self._path(self.o_proj.weight.device))

    def _inputs(self, x: torch.Tensor, previous: torch.Tensor, pattern: str):
        """From ``x (..., d_model)`` and the inputs one token earlier ``previous`` (same shape): r, w (log
        decay), k (updated), v, the removal pair (-kappa, kappa * a), the bonus weight ``r . (k * r_k)`` per head
        and the gate, heads split by ``pattern``."""
        delta = previous - x
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, delta, getattr(self, f"x_{mix}")) for mix in MIXES)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        w = -DECAY_BOUND * torch.sigmoid(self.w_lora(xw))  # log w_t in (-e^-0.5, 0)
        a = torch.sigmoid(self.a_lora(xa))
        gate = self.g_lora(xg)
        kappa = TF.normalize(rearrange(k * self.k_k, pattern, h=self.heads), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * self.k_a)
        bonus = rearrange(r * k * self.r_k.flatten(), pattern, h=self.heads).sum(-1, keepdim=True)
        r, w, k, v, a = (rearrange(t, pattern, h=self.heads) for t in (r, w, k, v, a))
        return r, w, k, v, -kappa, kappa * a, bonus, gate

    def _output(self, o: torch.Tensor, v: torch.Tensor, bonus: torch.Tensor, gate: torch.Tensor,
                pattern: str) -> torch.Tensor:
        """GroupNorm per head, plus ``bonus * v``, times the gate, the output projection; ``o, v, bonus`` with
        heads split (``pattern`` merges them), ``gate (..., d_model)``."""
        merged = rearrange(o, pattern)
        normed = self.g_norm(merged.reshape(-1, self.d_model)).reshape(merged.shape)
        return self.o_proj((normed + rearrange(bonus * v, pattern)) * gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device)
        previous = TF.pad(x, (0, 0, 1, -1))  # x_{t-1}, zero before the first token
        if path == "fla":
            fla_kernels.require_cuda_input("rwkv7", self.impl, x)
            pattern = "b n (h e) -> b n h e"  # fla's layout
            r, w, k, v, a, b, bonus, gate = self._inputs(x, previous, pattern)
            o, state = fla_kernels.rwkv7(r, w, k, v, a, b, DECAY_BOUND)
            return self._output(o, v, bonus, gate, "b n h e -> b n (h e)"), {"kv": state, "shift": x[:, -1]}
        r, w, k, v, a, b, bonus, gate = self._inputs(x, previous, "b n (h e) -> b h n e")
        if path == "chunked":
            o, state = dplr_chunked(r, k, v, a, b, w, self.chunk_size)
        else:
            o, state = dplr_recurrent(r, k, v, a, b, w)
        return self._output(o, v, bonus, gate, "b h n e -> b n (h e)"), {"kv": state, "shift": x[:, -1]}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        r, w, k, v, a, b, bonus, gate = self._inputs(x, state["shift"], "b (h e) -> b h e")
        o, kv = dplr_step(r, k, v, a, b, w, state["kv"])
        return self._output(o, v, bonus, gate, "b h e -> b (h e)"), {"kv": kv, "shift": x}

    def state_size(self, length: int) -> int:
        """The state ``(heads, head_dim, head_dim)`` and the token shift's previous input ``(d_model,)``."""
        return self.heads * self.head_dim * self.head_dim + self.d_model

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h, e = length, self.d_model, self.heads, self.head_dim
        lora = sum(F.linear(n, d, r) + F.linear(n, r, d) for r in self.ranks.values())
        terms = {
            "matmul": 4 * F.linear(n, d, d) + lora,
            "scan": 0.0,
            # token shift (1 + 6 x 2), LoRA activations and biases (~4 each), decay sigmoid and scale (5),
            # a's sigmoid (4), kappa (k * k_k, norm: ~4), key update (4), GroupNorm (~5), bonus (4), gate (1)
            "elementwise": n * d * (13.0 + 3 * 4 + 5 + 4 + 4 + 4 + 5 + 4 + 1) + n * h * e * 2.0,
        }
        if self.impl != "recurrent":  # fla's chunk_rwkv7: a chunked form too
            for key, value in chunked_flops(n, h, e, e, self.chunk_size).items():
                terms[key] = terms.get(key, 0.0) + value
        else:
            terms["scan"] += recurrent_flops(n, h, e, e)
        return terms
