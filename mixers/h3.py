"""H3, Hungry Hungry Hippos (Fu et al. 2023, "Hungry Hungry Hippos: Towards Language Modeling with State
Space Models"): Zoology's gated-convolution baseline.

    q, k, v = x W_q, x W_k, x W_v                                  # (n, d) each, with biases
    k'  = shift_SSM(k) + D_k k                                     # per channel, N taps
    kv  = k' (x) v   within heads of ``head_dim`` channels          # (n, H, head_dim, head_dim)
    y   = sum_{d1} q_{d1} (diag_SSM(kv) + D kv)_{d1 d2}            # S4D per head (H = d / head_dim)
    out = y W_o + b_o

The layer follows its authors' code, HazyResearch/zoology ``zoology/mixers/h3/h3.py`` (from
HazyResearch/safari ``src/models/sequence/h3.py``) at its defaults: ``d_state`` N = 64, ``head_dim`` 1;
the shift SSM (``SSKernel(mode='shift')``: ``B = e_1``, ``C`` as ``nn.Conv1d``'s init) is H3's own short
convolution, the diagonal SSM is S4D-Lin (``measure='diag-lin'``: ``A_n = -1/2 + i pi n``, ``B = 1``, ``C``
complex normal, bilinear discretisation, ``log dt`` uniform in [log 0.001, log 0.1]); the skips
``D_k, D`` are standard normal; the output's channels are ordered ``(d2, h)`` as theirs. The SSMs' A, B
and dt train without weight decay (and at ``ssm_lr`` if set: Safari's H3 configs use min(0.001, lr);
Zoology's leave it unset) as their ``OptimModule.register`` marks them; the shift SSM's C is the short
convolution's filter and, like every convolution filter here, gets no decay either. Zoology's MQAR
experiments run ``d_state = d_model / 4``, ``head_dim = 2`` (``zoology/experiments/models_repo.py``).

``impl=fft`` (the default, as the authors' non-fused path) computes both SSMs' kernels from the
parameters (``mixers/ops/ssm_conv.py``) and convolves with FFTs of twice the length, O(n log n);
``impl=recurrent`` runs both recurrences token by token (the reference), O(n N). No fla kernel exists
for H3 (fla has no H3 layer or op); the authors' fused ``fftconv`` CUDA extension is not used.
Decoding carries both SSMs' states: ``N`` reals per channel for the shift SSM and ``N / 2`` complex
values per head and (d1, d2) pair for the diagonal SSM.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.ssm_conv import diag_discretised, diag_kernel, diag_kernel_blocks, diag_state, diag_step, shift_kernel, shift_state, shift_step
from mixers.ops.toeplitz import causal_toeplitz_fft

IMPLS = ("fft", "recurrent")


@register("h3")
class H3(Mixer):
    """H3: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n log n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = "Fu et al. 2023, Hungry Hungry Hippos: Towards Language Modeling with State Space Models (arXiv 2212.14052)"
    backends = ("torch-fft", "torch-recurrent")

    def __init__(self, d_model: int, max_len: int, d_state: int = 64, head_dim: int = 1, dt_min: float = 0.001,
                 dt_max: float = 0.1, ssm_lr: float | None = None, impl: str = "fft"):
        super().__init__(d_model, max_len)
        if head_dim < 1 or d_model % head_dim:
            raise ValueError(f"h3: head_dim={head_dim} must divide d_model={d_model}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"h3: d_state={d_state} must be even and >= 2 (the diagonal SSM's conjugate pairs)")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"h3: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if impl not in IMPLS:
            raise ValueError(f"h3: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.d_state, self.head_dim, self.heads, self.impl = d_state, head_dim, d_model // head_dim, impl
        H, N = self.heads, d_state
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        # shift SSM on k, one per channel
        shift_B = torch.zeros(d_model, N)
        shift_B[:, 0] = 1.0
        self.shift_B = nn.Parameter(shift_B)
        self.shift_C = nn.Parameter(torch.empty(d_model, N))
        nn.init.kaiming_uniform_(self.shift_C, a=math.sqrt(5))  # as nn.Conv1d's weight (fan-in N)
        self.shift_D = nn.Parameter(torch.randn(d_model))
        # diagonal SSM (S4D-Lin) on kv, one per head; complex B and C stored as (..., 2) reals
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.inv_A_real = nn.Parameter(torch.full((H, N // 2), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(N // 2, dtype=torch.float32).repeat(H, 1))
        self.B = nn.Parameter(torch.view_as_real(torch.ones(H, N // 2, dtype=torch.cfloat)).clone())
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)).clone())  # C * B, B = 1
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(d_model, d_model)
        for p in (self.shift_B, self.log_dt, self.inv_A_real, self.A_imag, self.B):
            p._optim = {"weight_decay": 0.0, **({} if ssm_lr is None else {"lr": ssm_lr})}

    @property
    def backend(self) -> str:
        return f"torch-{self.impl}"

    def per_offset_kernels(self) -> set[str]:
        return {"shift_C"}

    def _diag(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The diagonal SSM's complex ``dA, dB, C (H, N / 2)``, in float32 at least."""
        ct = torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32
        B, C = (torch.view_as_complex(p.to(ct)) for p in (self.B, self.C))
        dA, dB = diag_discretised(self.log_dt.to(ct), self.inv_A_real.to(ct), self.A_imag.to(ct), B)
        return dA, dB, C

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (..., d_model)`` -> q, k, v ``(..., d_model)``."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _outer(self, k: torch.Tensor, v: torch.Tensor, axis: str) -> torch.Tensor:
        """``k, v (b, d, ...)`` -> ``kv (b, d1, d2, H, ...)`` within heads (channel ``h * head_dim + d1``)."""
        e = self.head_dim
        return (rearrange(k, f"b (h d1) {axis} -> b d1 1 h {axis}", d1=e)
                * rearrange(v, f"b (h d2) {axis} -> b 1 d2 h {axis}", d2=e))

    def _read(self, y: torch.Tensor, q: torch.Tensor, axis: str) -> torch.Tensor:
        """``y (b, d1, d2, H, ...)`` read out with ``q (b, d, ...)`` -> ``(b, d, ...)``, channels ordered ``(d2, h)``."""
        q = rearrange(q, f"b (h d1) {axis} -> b d1 1 h {axis}", d1=self.head_dim)
        return rearrange((q * y).sum(1), f"b d h {axis} -> b (d h) {axis}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self._mix(x, keep_state=False)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self._mix(x, keep_state=True)

    def _mix(self, x: torch.Tensor, keep_state: bool) -> tuple[torch.Tensor, dict]:
        if self.impl == "recurrent":
            state = self.initial_state(x.shape[0], x.device)
            outputs = []
            for t in range(x.shape[1]):
                y, state = self.step(x[:, t], state)
                outputs.append(y)
            return torch.stack(outputs, dim=1), state
        n = x.shape[1]
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # (b, d, n)
        with torch.autocast(x.device.type, enabled=False):  # kernels from parameters, in float32 at least
            k_kernel = shift_kernel(self.shift_B, self.shift_C, n)  # (d, n)
            dA, dB, C = self._diag()
            kv_kernel = diag_kernel(dA, dB, C, n)  # (H, n)
        shifted = causal_toeplitz_fft(k, k_kernel) + self.shift_D[:, None] * k
        kv = self._outer(shifted, v, "l")  # (b, d1, d2, H, n)
        y = causal_toeplitz_fft(kv, kv_kernel) + self.D[:, None] * kv
        out = self.out_proj(self._read(y, q, "l").transpose(1, 2))
        state = {}
        if keep_state:
            state = {"shift": shift_state(self.shift_B, k), "diag": diag_state(dA, dB, kv)}
        return out, state

    def initial_state(self, batch: int, device) -> dict:
        """The zero state before the first token."""
        dtype = self.shift_C.dtype
        ct = torch.complex128 if dtype == torch.float64 else torch.complex64
        return {"shift": torch.zeros(batch, self.d_model, self.d_state, device=device, dtype=dtype),
                "diag": torch.zeros(batch, self.head_dim, self.head_dim, self.heads, self.d_state // 2, device=device,
                                    dtype=ct)}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x)  # (b, d)
        shifted, shift = shift_step(self.shift_B, self.shift_C, k, state["shift"])
        kv = self._outer(shifted + self.shift_D * k, v, "")  # (b, d1, d2, H)
        dA, dB, C = self._diag()
        y, diag = diag_step(dA, dB, C, kv, state["diag"])
        y = y.to(kv.dtype) + self.D * kv
        return self.out_proj(self._read(y, q, "")), {"shift": shift.to(state["shift"].dtype), "diag": diag}

    def state_size(self, length: int) -> int:
        # shift: N reals per channel; diagonal: N / 2 complex (2 reals) per head and (d1, d2) pair
        return self.d_model * self.d_state + self.head_dim * self.head_dim * self.heads * self.d_state

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, e, N = length, self.d_model, self.head_dim, self.d_state
        pairs = e * d  # kv channels: head_dim^2 per head
        terms = {
            "matmul": 4 * F.linear(n, d, d),
            "fft": 0.0,
            "scan": 0.0,
            # 4 biases; shift skip (2); kv product; kv skip (2); q product and sum over d1 (2)
            "elementwise": 4.0 * n * d + 2.0 * n * d + n * pairs + 2.0 * n * pairs + 2.0 * n * pairs,
        }
        if self.impl == "fft":
            terms["fft"] = F.fft_causal_conv(n, d) + F.fft_causal_conv(n, pairs)
        else:  # per token: shift state (B u, C x: 4 N per channel); diagonal state (about 18 per complex mode)
            terms["scan"] = n * (4.0 * d * N + 18.0 * pairs * (N // 2))
        return terms

    def parameter_flop_terms(self, length: int) -> dict[str, float]:
        """The shift kernel (a correlation of B and C), the S4D Vandermonde kernel and both kernels' FFTs."""
        if self.impl != "fft":
            return {}
        n, d, H, N = length, self.d_model, self.heads, self.d_state
        blocks, block = diag_kernel_blocks(n)
        modes = H * (N // 2)
        return {
            "matmul": 2.0 * d * N * N + 2 * 2.0 * modes * blocks * block,
            # discretisation (about 30 per mode); powers (complex multiply and exp: about 8 per mode and
            # power, block + blocks of them) and the block weights (a complex multiply, 6)
            "elementwise": 30.0 * modes + 8.0 * modes * (block + blocks) + 6.0 * modes * blocks,
            "fft": F.real_fft(F.fft_size(n), d + H),
        }
