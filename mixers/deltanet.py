"""DeltaNet: linear attention with the delta rule (Schlag et al. 2021, "Linear Transformers Are
Secretly Fast Weight Programmers"; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length").

Per head the state is a fast-weight matrix that each token corrects towards its value:

    S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = q_t S_t,   beta_t = sigmoid(x_t W_b)

The layer follows the reference implementation (fla-org/flash-linear-attention 0.6.0,
``fla/layers/delta_net.py``, ``DeltaNet``): key and value dimensions ``expand_k * d_model`` and
``expand_v * d_model`` (1, 1), 4 heads; q, k, v projections without bias, each through a short
depthwise causal convolution (``conv_size`` 4, no bias) with a SiLU (``mixers/ops/short_conv.py``);
q and k L2-normalised per head (``x / sqrt(|x|^2 + 1e-6)``, fla's ``l2norm``), queries scaled by
``head_k_dim^-1/2``; beta from a bias-free projection to one logit per head (doubled with
``allow_neg_eigval``); a per-head RMSNorm of the output (with a learned scale; with ``use_gate``
an output gate ``swish(x W_g)`` after it, fla's ``FusedRMSNormGated``) and an output projection.
Linear and convolution weights are initialised normal(0, 0.02), as fla's models
(``fla/models/modeling_utils.py``, ``FLAPreTrainedModel._init_weights``); the parameter names are
fla's, so its layer's state dicts load. ``qk_activation`` (silu, relu, elu = elu + 1, identity) and
``qk_norm`` (l2, sum) are fla's options (a non-SiLU activation follows a convolution without one).

``impl=chunked`` runs the chunkwise-parallel WY / UT-transform form of ``mixers/ops/delta_rule.py``;
``impl=recurrent`` the token-by-token recurrence it is tested against; ``impl=fla`` fla's
``chunk_delta_rule`` Triton kernel (``mixers/ops/fla_kernels.py``: CUDA; fla picks its chunk of 64
tokens; q and k come normalised and scaled, so the kernel's own normalisation and scale are off);
``impl=auto`` fla on CUDA inputs where fla imports (and heads are at least 16 wide), ``chunked``
otherwise. The default is ``chunked``: fla is opt-in until its GPU equality tests
(tests/mixers/test_delta_rule.py, ``gpu``) have passed on a GPU. Every path has the same parameters
and computes the same function. Decoding carries the state and each convolution's last
``conv_size - 1`` inputs: a fixed-size state.
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
from mixers.ops.delta_rule import chunked_flops, delta_rule_chunked, delta_rule_recurrent, delta_rule_step
from mixers.ops.short_conv import ShortConvolution

IMPLS = ("auto", "chunked", "recurrent", "fla")
QK_ACTIVATIONS = {"silu": TF.silu, "relu": TF.relu, "elu": lambda x: TF.elu(x) + 1.0, "identity": lambda x: x}
QK_NORMS = ("l2", "sum")
L2_EPS = 1e-6  # fla's l2norm: x / sqrt(sum x^2 + eps)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x (..., e) / sqrt(|x|^2 + 1e-6)``, as fla's ``l2norm``."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def sum_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x (..., e) / max(sum |x|, 1e-6)``, as fla's ``sum_norm``."""
    return TF.normalize(x, p=1, dim=-1, eps=1e-6)


def check_impl(mixer: str, impl: str, dk: int, dv: int) -> bool:
    """Validate ``impl``; whether heads of ``dk`` x ``dv`` suit fla's kernels (raising for a forced fla that cannot run)."""
    if impl not in IMPLS:
        raise ValueError(f"{mixer}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "fla":
        fla_kernels.require_fla(mixer, impl)
        fla_kernels.require_fits(mixer, impl, key=dk, value=dv)
    return fla_kernels.fits(key=dk, value=dv)


@register("deltanet")
class DeltaNet(Mixer):
    """DeltaNet: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = ("Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length "
             "(arXiv 2406.06484); Schlag et al. 2021 (arXiv 2102.11174)")
    backends = ("fla-chunk", "torch-chunked", "torch-recurrent")
    gated = False  # a decay per head and step (Gated DeltaNet)

    def __init__(self, d_model: int, max_len: int, heads: int = 4, expand_k: float = 1.0, expand_v: float = 1.0,
                 use_beta: bool = True, use_gate: bool = False, use_short_conv: bool = True, conv_size: int = 4,
                 conv_bias: bool = False, allow_neg_eigval: bool = False, qk_activation: str = "silu",
                 qk_norm: str = "l2", norm_eps: float = 1e-5, init_std: float = 0.02, chunk_size: int = 64,
                 impl: str = "chunked"):
        super().__init__(d_model, max_len)
        name = type(self).registry_name
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if heads < 1 or key_dim < 1 or key_dim % heads or value_dim % heads:
            raise ValueError(f"{name}: key dim {key_dim} and value dim {value_dim} must be divisible by heads={heads}")
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"{name}: qk_activation must be one of {', '.join(QK_ACTIVATIONS)}, got {qk_activation!r}")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"{name}: qk_norm must be one of {', '.join(QK_NORMS)}, got {qk_norm!r}")
        if chunk_size < 1:
            raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
        if use_short_conv and conv_size < 1:
            raise ValueError(f"{name}: conv_size must be >= 1 with use_short_conv, got {conv_size}")
        self._fla_fits = check_impl(name, impl, key_dim // heads, value_dim // heads)
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.dk, self.dv = key_dim // heads, value_dim // heads
        self.use_beta, self.use_gate, self.use_short_conv = use_beta, use_gate, use_short_conv
        self.conv_size, self.allow_neg_eigval = conv_size, allow_neg_eigval
        self.qk_activation, self.qk_norm = qk_activation, qk_norm
        self.chunk_size, self.impl = chunk_size, impl
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        if use_beta:
            self.b_proj = nn.Linear(d_model, heads, bias=False)
        self._decay_parameters()
        if use_short_conv:
            qk_silu = qk_activation == "silu"
            self.q_conv1d = ShortConvolution(key_dim, conv_size, bias=conv_bias, activation=qk_silu)
            self.k_conv1d = ShortConvolution(key_dim, conv_size, bias=conv_bias, activation=qk_silu)
            self.v_conv1d = ShortConvolution(value_dim, conv_size, bias=conv_bias, activation=True)
        if use_gate:
            self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.o_norm = nn.RMSNorm(self.dv, eps=norm_eps)  # per head, with a learned scale
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---- what Gated DeltaNet adds: a decay per head and step ------------------------------------
    def _decay_parameters(self) -> None:
        """No decay: DeltaNet's state is kept whole between tokens."""

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x (..., d_model)`` -> log decays ``(..., heads) <= 0``; None: no decay."""
        return None

    # ---- paths ---------------------------------------------------------------------------------
    def _path(self, device: torch.device) -> str:
        """The implementation that runs for inputs on ``device``; ``auto`` keeps the PyTorch path where fla
        refuses the gated kernel's backward and this mixer always needs it (``gated_delta_backward_refused``)."""
        trainable = not (self.gated and device.type == "cuda"
                         and fla_kernels.gated_delta_backward_refused())
        return fla_kernels.choose_path(self.impl, device, self._fla_fits and trainable)

    @property
    def backend(self) -> str:
        return fla_kernels.chunk_backend(self._path(self.o_proj.weight.device))

    def _qkv(self, x: torch.Tensor, conv_state: dict | None) -> tuple[torch.Tensor, ...]:
        """Projections through the short convolutions (and activations): ``q, k (..., key_dim)``,
        ``v (..., value_dim)`` and the convolutions' new states. ``x`` is ``(batch, n, d_model)`` with
        ``conv_state`` None (a prompt), or one token ``(batch, d_model)`` after ``conv_state``."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new = {}
        if self.use_short_conv:
            convs = {"conv_q": self.q_conv1d, "conv_k": self.k_conv1d, "conv_v": self.v_conv1d}
            outs = []
            for (key, conv), t in zip(convs.items(), (q, k, v)):
                y, new[key] = conv.prefill(t) if conv_state is None else conv.step(t, conv_state[key])
                outs.append(y)
            q, k, v = outs
        elif self.qk_activation == "silu":
            q, k, v = TF.silu(q), TF.silu(k), TF.silu(v)
        else:
            v = TF.silu(v)
        if self.qk_activation != "silu":
            act = QK_ACTIVATIONS[self.qk_activation]
            q, k = act(q), act(k)
        return q, k, v, new

    def _inputs(self, x: torch.Tensor, pattern: str, conv_state: dict | None = None):
        """Normalised, scaled q; normalised k; v; beta and log decays per head; the output gate (None
        without ``use_gate``); the convolutions' states. ``pattern`` splits heads (``... (h e) -> ...``);
        beta and g follow it without the ``e`` axis."""
        q, k, v, new = self._qkv(x, conv_state)
        q, k, v = (rearrange(t, pattern, h=self.heads) for t in (q, k, v))
        norm = l2_normalise if self.qk_norm == "l2" else sum_normalise
        q, k = norm(q) * self.dk ** -0.5, norm(k)
        heads_pattern = pattern.replace("(h e)", "h").replace(" e", "")
        beta = self.b_proj(x).sigmoid() if self.use_beta else x.new_ones(*x.shape[:-1], self.heads)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        beta = rearrange(beta, heads_pattern)
        g = self._log_decay(x)
        g = None if g is None else rearrange(g, heads_pattern)
        gate = rearrange(TF.silu(self.g_proj(x)), pattern, h=self.heads) if self.use_gate else None
        return q, k, v, beta, g, gate, new

    def _output(self, o: torch.Tensor, gate: torch.Tensor | None, pattern: str) -> torch.Tensor:
        """RMSNorm per head (then the swish output gate), heads merged by ``pattern``, output projection."""
        o = self.o_norm(o)
        if gate is not None:
            o = o * gate
        return self.o_proj(rearrange(o, pattern))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        path = self._path(x.device)
        name = type(self).registry_name
        if path == "fla":
            fla_kernels.require_cuda_input(name, self.impl, x)
            q, k, v, beta, g, gate, conv = self._inputs(x, "b n (h e) -> b n h e")  # fla's layout
            o, S = fla_kernels.delta_rule(q, k, v, beta, g)
            return self._output(o, gate, "b n h e -> b n (h e)"), {"S": S, **conv}
        q, k, v, beta, g, gate, conv = self._inputs(x, "b n (h e) -> b h n e")
        if path == "chunked":
            o, S = delta_rule_chunked(q, k, v, beta, g, self.chunk_size)
        else:
            o, S = delta_rule_recurrent(q, k, v, beta, g)
        return self._output(o, gate, "b h n e -> b n (h e)"), {"S": S, **conv}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v, beta, g, gate, conv = self._inputs(x, "b (h e) -> b h e", conv_state=state)
        o, S = delta_rule_step(q, k, v, beta, g, state["S"])
        return self._output(o, gate, "b h e -> b (h e)"), {"S": S, **conv}

    def state_size(self, length: int) -> int:
        """The delta-rule state per head and each short convolution's last ``conv_size - 1`` inputs."""
        conv = (2 * self.key_dim + self.value_dim) * (self.conv_size - 1) if self.use_short_conv else 0
        return self.heads * self.dk * self.dv + conv

    def _decay_flop_terms(self, length: int) -> dict[str, float]:
        return {}

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h = length, self.d_model, self.heads
        kd, vd = self.key_dim, self.value_dim
        out = F.linear(n, d, 2 * kd + vd) + F.linear(n, vd, d) + (F.linear(n, d, h) if self.use_beta else 0.0)
        out += F.linear(n, d, vd) if self.use_gate else 0.0
        # activations without a convolution (4 each), l2 norms (square, sum, rsqrt, multiply: about 4) and the
        # q scale, beta's sigmoid (4), RMSNorm (about 4) and the swish gate (5)
        act = (0.0 if self.use_short_conv and self.qk_activation == "silu" else 4.0 * n * 2 * kd)
        act += 0.0 if self.use_short_conv else 4.0 * n * vd
        terms = {"matmul": out, "scan": 0.0,
                 "elementwise": act + n * kd * 9.0 + n * h * 4.0 + n * vd * (4.0 + (5.0 if self.use_gate else 0.0))}
        if self.use_short_conv:
            for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d):
                for key, value in conv.flop_terms(n).items():
                    terms[key] += value
        for key, value in self._decay_flop_terms(n).items():
            terms[key] = terms.get(key, 0.0) + value
        if self.impl != "recurrent":  # fla's chunk kernels: the same chunked form (chunks of 64)
            for key, value in chunked_flops(n, h, self.dk, self.dv, self.chunk_size).items():
                terms[key] = terms.get(key, 0.0) + value
        else:  # per step: decay, recall k S, the correction, the rank-one update, read-out q S
            terms["scan"] += (7.0 if self.gated else 6.0) * n * h * self.dk * self.dv
        return terms
