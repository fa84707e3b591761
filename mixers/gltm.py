"""Structured generalized linear token mixing (Fagnou, Caillon, Delattre & Allauzen 2026, "Trading
Complexity for Expressivity Through Structured Generalized Linear Token Mixing", arXiv 2605.31367).

READING, NOT A TRANSCRIPTION. Only the abstract and secondary summaries of the paper could be read
(no text of its method, no code). What they state: a causal linear token mixing
``Y = (I - B)^{-1} A X`` where A is the direct influence of inputs on outputs in one step and B the
recurrent propagation through past outputs, each output depending on several past outputs at
translation-invariant offsets f(k); the two patterns f(k) = 2^k (O(n log n) time, O(log n)
cache) and f(k) = k^2 + 1 (O(n sqrt n) time, O(sqrt n) cache). What this module chooses, per head
(B and A shared by the head's channels, as attention shares its matrix across a head):

- A diagonal: ``(A X)_t = a_t v_t``, the input's direct contribution at its own step (as in SSMs
  and linear RNNs); ``v = x W_v``.
- B at offsets f(0) = 1, f(1), ... below ``max_len``: ``y_t = a_t v_t + sum_k beta_{t,k} y_{t-f(k)}``.
- Data-dependent weights: ``[a_t, beta_{t,0..}] = softmax(x_t W_c + b_c)`` per head over the input
  and the offsets that reach a position (f(k) <= t), a convex combination: every row of B sums below
  1 and the solve is stable (with one offset it is a normalised gated linear recurrence,
  y_t = (1 - z_t) y_{t-1} + z_t v_t).
- An output projection: ``out = y W_o``, as attention's (no output gate: the layer stays the
  framework's linear token mixing between two linear maps, as attention is).

Time O(n K d) with K = log2(n) or sqrt(n) offsets, for the coefficients and the solve, plus the
projections. ``max_len`` bounds the pattern (the coefficient projection has a row per offset below
it): longer inputs run with those offsets. Decoding reads K past outputs per token; with the plain
patterns each past output is read again f(k) steps later for every k, so a decoder keeps the last
``f(K - 1)`` outputs: an O(n) cache up to max_len, as the paper says of these patterns too. The
O(log n) / O(sqrt n) cache belongs to its cache-efficient variants, a different model, read here as
``pattern: power2_cache`` / ``square_cache``: offset k reads the output at ``t - f(k)`` rounded
down to the lattice of multiples of ``f(k)`` (a lag in ``[f(k), 2 f(k) - 1]``), so a decoder keeps
at most two outputs per offset, ``2 K`` (``mixers/ops/gltm.py``; the blocked solve handles their
position-dependent lags with the same cost).

``impl=blocked`` solves by blocks (``mixers/ops/gltm.py``, the fast path); ``impl=dense`` with a
dense ``torch.linalg.solve_triangular`` (the O(n^2) reference it is tested against).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as TF

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.gltm import (LATTICE, PATTERNS, blocked_steps, gltm_blocked, gltm_dense, gltm_step, lattice_keep,
                             offsets, solve_products, sources)

# the method's training cost by pattern
COMPLEXITY = {"power2": ("O(n log n)", 1.0), "square": ("O(n sqrt n)", 1.5),
              "power2_cache": ("O(n log n)", 1.0), "square_cache": ("O(n sqrt n)", 1.5)}


@register("gltm")
class GeneralizedLinearTokenMixing(Mixer):
    """Structured generalized linear token mixing: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    time_complexity, time_exponent = COMPLEXITY["power2"]
    memory_complexity, memory_exponent = COMPLEXITY["power2"]
    state_complexity = "O(n) kept, O(log n) / O(sqrt n) read per token"
    state_exponent = 1.0
    paper = ("Fagnou et al. 2026, Trading Complexity for Expressivity Through Structured Generalized Linear "
             "Token Mixing (arXiv 2605.31367)")
    backends = ("torch-blocked-solve", "torch-dense-solve")

    def __init__(self, d_model: int, max_len: int, pattern: str = "power2", heads: int = 4, block_size: int = 16,
                 impl: str = "blocked"):
        super().__init__(d_model, max_len)
        if pattern not in PATTERNS:
            raise ValueError(f"gltm: pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        if heads < 1 or d_model % heads:
            raise ValueError(f"gltm: d_model={d_model} is not divisible by heads={heads}")
        if impl not in ("blocked", "dense"):
            raise ValueError(f"gltm: impl must be 'blocked' or 'dense', got {impl!r}")
        self.lattice = pattern in LATTICE
        self.pattern, self.heads, self.head_dim, self.block_size, self.impl = pattern, heads, d_model // heads, block_size, impl
        self.offsets = offsets(pattern, max_len)
        self.declare(pattern=pattern, impl=impl)
        read = "O(log n)" if pattern.startswith("power2") else "O(sqrt n)"
        self.state_complexity = f"{read} kept and read per token" if self.lattice else f"O(n) kept, {read} read per token"
        self.state_exponent = 0.0 if self.lattice else 1.0  # logarithmic / square-root growth shown as 0
        K = len(self.offsets)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.coef_proj = nn.Linear(d_model, (K + 1) * heads, bias=True)  # rows (k h): a, then beta_k, per head
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    @classmethod
    def declared_complexity(cls, pattern: str = "power2", impl: str = "blocked", **_) -> dict:
        if impl == "dense":
            return super().declared_complexity(impl=impl)
        complexity, exponent = COMPLEXITY[pattern]  # time and memory alike
        return {"time_complexity": complexity, "time_exponent": exponent,
                "memory_complexity": complexity, "memory_exponent": exponent}

    @property
    def backend(self) -> str:
        return f"torch-{self.impl}-solve"

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pattern={self.pattern}, offsets={self.offsets}"

    def reaching(self, position: int) -> int:
        """How many offsets reach back from ``position`` to a position >= 0: f(k) <= position."""
        return sum(f <= position for f in self.offsets)

    def _logits(self, x: torch.Tensor, K: int) -> torch.Tensor:
        """Logits of a and of the first ``K`` offsets, ``(..., (K + 1) heads)`` in (k h) order."""
        rows = (K + 1) * self.heads
        return TF.linear(x, self.coef_proj.weight[:rows], self.coef_proj.bias[:rows])

    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """``x (b, n, d)`` -> input weights ``a (b, h, n)``, coefficients ``beta (b, h, n, K)`` (zero where
        f(k) > t), values ``(b, h, n, p)`` and the K offsets below n that they use."""
        n = x.shape[1]
        K = self.reaching(n - 1)
        logits = rearrange(self._logits(x, K), "b n (k h) -> b h n k", h=self.heads)
        t = torch.arange(n, device=x.device)[:, None]
        f = torch.tensor([0] + self.offsets[:K], device=x.device)[None, :]  # a: always available
        w = logits.masked_fill(f > t, float("-inf")).softmax(-1)
        v = rearrange(self.v_proj(x), "b n (h e) -> b h n e", h=self.heads)
        return w[..., 0], w[..., 1:], v, self.offsets[:K]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        return self.prefill(x)[0]

    supports_decode = True

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        a, beta, v, offs = self._weights(x)  # a (b, h, n), beta (b, h, n, K), v (b, h, n, p)
        if self.impl == "blocked":
            y = gltm_blocked(a, beta, v, offs, self.block_size, self.lattice)
        else:
            y = gltm_dense(a, beta, v, offs, self.lattice)
        out = self.out_proj(rearrange(y, "b h n e -> b n (h e)").to(x.dtype))  # the solve ran in float32 for half inputs
        n = x.shape[1]
        if self.lattice:  # only the outputs a later step reads
            kept = lattice_keep(self.offsets, torch.arange(n, device=x.device), n).nonzero()[:, 0]
            return out, {"positions": kept, "values": y[:, :, kept], "position": torch.tensor(n)}
        return out, {"history": y[:, :, max(0, n - self.offsets[-1]):], "position": torch.tensor(n)}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        t = int(state["position"])
        K = self.reaching(t)
        w = rearrange(self._logits(x, K), "b (k h) -> b h k", h=self.heads).softmax(-1)
        v = rearrange(self.v_proj(x), "b (h e) -> b h e", h=self.heads)
        if self.lattice:
            return self._lattice_step(w, v, state, t, K, x.dtype)
        y = gltm_step(w[..., 0], w[..., 1:], v, state["history"], self.offsets[:K])
        history = torch.cat([state["history"], y[:, :, None]], dim=2)[:, :, -self.offsets[-1]:]
        out = self.out_proj(rearrange(y, "b h e -> b (h e)").to(x.dtype))
        return out, {"history": history, "position": torch.tensor(t + 1)}

    def _lattice_step(self, w: torch.Tensor, v: torch.Tensor, state: dict, t: int, K: int,
                      dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
        """One lattice step: the K read positions are looked up among the kept ones (at most 2 K)."""
        positions, values = state["positions"], state["values"]  # (C,), (b, h, C, p)
        read = sources(self.offsets[:K], torch.tensor([t], device=positions.device), lattice=True)[0]  # (K,)
        slot = (positions[None, :] == read[:, None]).float().argmax(-1)  # every read position is kept
        terms = (w[..., 1:, None] * values[:, :, slot]).sum(2) if K else 0.0
        y = w[..., 0, None] * v.to(w.dtype) + terms
        positions = torch.cat([positions, positions.new_tensor([t])])
        values = torch.cat([values, y[:, :, None].to(values.dtype)], dim=2)
        keep = lattice_keep(self.offsets, positions, t + 1)
        out = self.out_proj(rearrange(y, "b h e -> b (h e)").to(dtype))
        return out, {"positions": positions[keep], "values": values[:, :, keep], "position": torch.tensor(t + 1)}

    def state_size(self, length: int) -> int:
        """Plain patterns: the last ``f(K - 1)`` outputs, every one of them read by a later step.
        Lattice patterns: the outputs a later step reads, at most two per offset (``2 K``)."""
        if self.lattice:
            return int(lattice_keep(self.offsets, torch.arange(length), length).sum()) * self.d_model
        return min(length, self.offsets[-1]) * self.d_model

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, h, p = length, self.d_model, self.heads, self.head_dim
        K = self.reaching(n - 1)  # offsets below n: the coefficients and terms computed
        terms = {
            "matmul": F.linear(n, d, 2 * d) + F.linear(n, d, h * (K + 1)),
            "scan": 0.0,
            # coefficient bias, mask and softmax (about 7 per logit), a v
            "elementwise": 7.0 * n * h * (K + 1) + n * d,
        }
        if K == 0:
            return terms
        if self.impl == "blocked":
            Q, blocks = blocked_steps(n, self.block_size)
            L = Q * blocks
            terms["matmul"] += 2.0 * L * K * d  # beta . gathered outputs, every offset (in-block ones read zeros)
            terms["elementwise"] += L * d  # rhs + gathered terms
            if Q > 1:  # each block's own system: (I + L)(I + L^2)... applied to the rhs, squarings of L
                applications, squarings = solve_products(Q)
                terms["matmul"] += blocks * h * (applications * 2.0 * Q * Q * p + squarings * 2.0 * Q ** 3)
                terms["elementwise"] += applications * L * d
        else:  # the dense matrices I - B, and their triangular solve
            terms["elementwise"] += n * n * h
            terms["scan"] += h * n * (n - 1) * p
        return terms
