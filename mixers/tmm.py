"""Toeplitz MLP Mixer token mixing (Badger & Roland, arXiv 2605.06683).

Attention is replaced by a learned lower-triangular Toeplitz matrix over the sequence: per head a
vector ``w`` of length ``max_len`` gives ``T[i, j] = w[i - j]`` for ``j <= i``, plus a learned bias
per output position. Following the authors' reference code (``ParallelToeplitzHeads``): an input
projection, d_model split into ``heads`` contiguous channel groups, one Toeplitz vector and one
per-position bias per head (shared by that head's channels), concatenation, output projection.
``heads=1, projections=False`` is the paper's flat layer (one vector shared by all channels);
``expanded=True`` is Toeplitz -> SiLU -> Toeplitz with independent weights. Toeplitz weights use
Kaiming-normal initialisation and zero bias, as in the reference code, where the vector's length is
the training context, so its std is sqrt(2 / training length): here sqrt(2 / train_len), ``train_len``
the longest training input (the backbone passes it; ``max_len`` when not given), so that a model
whose ``max_len`` is raised for longer evaluation inputs starts from the authors' kernel scale.
Shorter inputs use the leading part of the kernel and bias. The Toeplitz vectors and the
per-position biases get no weight decay (the authors train without any). The registry's
``tmm_flat`` (``mixers/tmm_flat.py``) is the flat layer alone.

Implementations (``impl``): ``fft`` (O(n log n), any device), ``dense`` (the masked-matrix reference),
``fused`` (the Triton block-Toeplitz kernel of ``mixers/ops/toeplitz_triton.py``, CUDA only) and
``auto``: fused on a CUDA device where Triton imports and channels per head divide by 16, the FFT
path otherwise. ``backend`` names the path that runs.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from einops import rearrange
from torch import nn

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.toeplitz import causal_toeplitz_dense, causal_toeplitz_heads_fft

IMPLS = ("auto", "fused", "fft", "dense")
FUSED_BLOCK = 64  # the fused kernel's bank tile (its K tile); its FLOPs count whole tiles
FUSED_ROWS = 128  # rows per output tile of the fused forward and dx kernels
FUSED_DW_BLOCK = 128  # block products of the fused kernel gradient


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the fused kernel can be compiled here (Triton imports and CUDA is present)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class ToeplitzCausal(nn.Module):
    """Per-head causal Toeplitz product with per-position bias: ``(batch, n, heads * channels)``.

    Head ``h`` owns channels ``[h e, (h + 1) e)``; the caller picks the implementation per call.
    """

    def __init__(self, heads: int, max_len: int, train_len: int | None = None):
        super().__init__()
        # Kaiming normal over a vector of the training length: std sqrt(2 / train_len)
        self.weight = nn.Parameter(torch.randn(heads, max_len) * math.sqrt(2.0 / (train_len or max_len)))
        self.bias = nn.Parameter(torch.zeros(heads, max_len))
        self.heads = heads

    def step(self, history: torch.Tensor) -> torch.Tensor:
        """Output at the last position from the inputs so far ``history (batch, heads, channels, t)``:
        ``sum_s w[t-1-s] history[..., s] + bias[t-1]`` -> ``(batch, heads, channels)``."""
        t = history.shape[-1]
        kernel = self.weight[:, :t].flip(-1)[:, None, :]  # (heads, 1, t)
        return (history * kernel.to(history.dtype)).sum(-1) + self.bias[:, None, t - 1].to(history.dtype)

    def forward(self, x: torch.Tensor, impl: str, block: int = FUSED_BLOCK, rows: int = FUSED_ROWS,
                dw_block: int = FUSED_DW_BLOCK) -> torch.Tensor:
        """``x (batch, n, heads * channels)`` -> same shape, by ``impl`` (``fused``, ``fft`` or ``dense``;
        ``block``, ``rows``, ``dw_block``: the fused kernel's bank tile, output rows per tile and
        kernel-gradient block)."""
        if impl == "fused":
            if not x.is_cuda:  # explicit impl=fused; auto takes the FFT path off CUDA
                raise RuntimeError("tmm: impl=fused runs a Triton kernel, which needs CUDA inputs; use impl=auto or fft on CPU")
            from mixers.ops.toeplitz_triton import toeplitz_fused

            return toeplitz_fused(x, self.weight, self.bias, self.heads, block=block, rows=rows, dw_block=dw_block)
        n = x.shape[1]
        bias = self.bias[:, :n].T.repeat_interleave(x.shape[2] // self.heads, dim=1)  # (n, d)
        if impl == "fft":
            return causal_toeplitz_heads_fft(x, self.weight, self.heads) + bias.to(x.dtype)
        u = rearrange(x, "b n (h e) -> b h e n", h=self.heads)
        y = causal_toeplitz_dense(u, self.weight[:, None, :n])  # one (n x n) matrix per head
        return rearrange(y, "b h e n -> b n (h e)") + bias.to(x.dtype)


def fused_tile_flops(n: int, d: int, block: int = FUSED_BLOCK, rows: int = FUSED_ROWS) -> float:
    """Multiply-adds x 2 the fused forward computes: whole (rows x block) tiles on and below the
    diagonal, times each channel, zeros inside the diagonal tiles included."""
    r, row_blocks, col_blocks = rows // block, -(-n // rows), -(-n // block)
    steps = sum(min(col_blocks, r * i + r) for i in range(row_blocks))
    return 2.0 * d * rows * block * steps


@register("tmm")
class ToeplitzMixer(Mixer):
    """Multi-head Toeplitz token mixing: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity = "O(n log n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(n)"
    state_exponent = 1.0
    paper = "Badger & Roland 2026, Toeplitz MLP Mixer (arXiv 2605.06683)"
    backends = ("triton-fused", "torch-fft", "torch-dense")

    def __init__(
        self,
        d_model: int,
        max_len: int,
        heads: int = 4,
        projections: bool = True,
        expanded: bool = False,
        dropout: float = 0.0,
        impl: str = "auto",
        fused_max_len: int = 16384,
        train_len: int | None = None,
    ):
        super().__init__(d_model, max_len)
        if train_len is not None and not 1 <= train_len <= max_len:
            raise ValueError(f"tmm: train_len must be null (max_len) or in [1, max_len={max_len}], got {train_len}")
        if heads < 1 or d_model % heads:
            raise ValueError(f"tmm: d_model={d_model} is not divisible by heads={heads}")
        if impl not in IMPLS:
            raise ValueError(f"tmm: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
        fusable = (d_model // heads) % 16 == 0
        if impl == "fused" and not (fusable and triton_available()):
            raise ValueError(
                f"tmm: impl=fused needs Triton, a CUDA device and d_model/heads divisible by 16 "
                f"(d_model={d_model}, heads={heads}, triton+cuda={triton_available()}); use impl=auto or fft"
            )
        self.heads, self.projections, self.expanded, self.impl = heads, projections, expanded, impl
        self.declare(impl=impl)
        self._fusable, self.fused_max_len = fusable, fused_max_len
        self.train_len = train_len or max_len
        self.toeplitz = ToeplitzCausal(heads, max_len, train_len)
        if expanded:
            self.toeplitz2 = ToeplitzCausal(heads, max_len, train_len)
            self.dropout = nn.Dropout(dropout)
        if projections:
            self.in_proj = nn.Linear(d_model, d_model)
            self.out_proj = nn.Linear(d_model, d_model)
            for proj in (self.in_proj, self.out_proj):
                nn.init.kaiming_normal_(proj.weight)
                nn.init.zeros_(proj.bias)

    def per_offset_kernels(self) -> set[str]:
        """The Toeplitz vectors (one weight per lag), besides any convolution."""
        return super().per_offset_kernels() | {f"{name}.weight" for name in ("toeplitz", "toeplitz2") if hasattr(self, name)}

    @classmethod
    def declared_complexity(cls, impl: str = "auto", **_) -> dict:
        declared = super().declared_complexity(impl=impl)
        if impl == "fused":  # block-Toeplitz tiles on tensor cores: quadratic work, linear memory
            declared.update(time_complexity="O(n^2)", time_exponent=2.0)
        return declared

    def _path(self, length: int | None = None) -> str:
        """The implementation that runs on the parameters' current device at ``length`` (None: any
        length up to ``fused_max_len``, past which the quadratic tiles lose to the FFT)."""
        if self.impl != "auto":
            return self.impl
        on_cuda = self.toeplitz.weight.is_cuda
        short = length is None or length <= self.fused_max_len
        return "fused" if on_cuda and short and self._fusable and triton_available() else "fft"

    @property
    def backend(self) -> str:
        name = self.backend_at(None)
        if self.impl == "auto" and name == "triton-fused":
            name += f"(n<={self.fused_max_len}, else torch-fft)"
        return name

    def backend_at(self, length: int | None) -> str:
        path = self._path(length)
        return "triton-fused" if path == "fused" else f"torch-{path}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    # Decoding keeps the history of each Toeplitz layer's inputs, as the reference code does: O(n d)
    # per layer, O(t d) work for the token after t.
    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.projections:
            x = self.in_proj(x)
        path = self._path(x.shape[1])
        as_history = lambda t: rearrange(t, "b n (h e) -> b h e n", h=self.heads)  # noqa: E731 (a view)
        state = {"history": as_history(x)}
        y = self.toeplitz(x, path)
        if self.expanded:
            hidden = self.dropout(nn.functional.silu(y))
            state["history2"] = as_history(hidden)
            y = self.toeplitz2(hidden, path)
        return (self.out_proj(y) if self.projections else y), state

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.projections:
            x = self.in_proj(x)
        u = rearrange(x, "b (h e) -> b h e 1", h=self.heads)
        history = torch.cat([state["history"], u], dim=-1)
        if history.shape[-1] > self.max_len:
            raise ValueError(f"tmm: cannot decode past max_len={self.max_len}")
        y = self.toeplitz.step(history)
        new = {"history": history}
        if self.expanded:
            new["history2"] = torch.cat([state["history2"], nn.functional.silu(y)[..., None]], dim=-1)
            y = self.toeplitz2.step(new["history2"])
        y = rearrange(y, "b h e -> b (h e)")
        return (self.out_proj(y) if self.projections else y), new

    def state_size(self, length: int) -> int:
        return (2 if self.expanded else 1) * length * self.d_model

    def _toeplitz_terms(self, n: int) -> dict[str, float]:
        d = self.d_model
        path = self._path(n)
        if path == "fused":
            return {"matmul": fused_tile_flops(n, d), "elementwise": float(n * d)}
        if path == "fft":
            spectral = F.fft_causal_conv(n, d)
            return {"fft": spectral, "elementwise": float(n * d)}  # + per-position bias
        # dense: the full (n x n) masked matrix times each channel, zeros included, as computed.
        return {"matmul": 2.0 * n * n * d, "elementwise": float(n * d)}

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d = length, self.d_model
        terms: dict[str, float] = {"matmul": 0.0, "fft": 0.0, "elementwise": 0.0}
        layers = 2 if self.expanded else 1
        for key, value in self._toeplitz_terms(n).items():
            terms[key] += layers * value
        if self.expanded:
            terms["elementwise"] += 4.0 * n * d  # SiLU
        if self.projections:
            terms["matmul"] += 2 * F.linear(n, d, d)
            terms["elementwise"] += 2.0 * n * d  # projection biases
        return terms

    def parameter_flop_terms(self, length: int) -> dict[str, float]:
        """Once per forward pass, independent of batch: the kernels' spectra (FFT path only)."""
        if self._path(length) != "fft":
            return {}
        layers = 2 if self.expanded else 1
        return {"fft": layers * F.real_fft(F.fft_size(length), self.heads)}
