"""Structured generalized linear token mixing: the solve ``Y = (I - B)^{-1} A X`` for a diagonal A
and a B whose non-zeros sit at translation-invariant offsets ``f(k)`` below the diagonal.

Per head, with input weights ``a_t``, coefficients ``beta_{t,k}`` and inputs ``v_t (p,)``:

    y_t = a_t v_t + sum_k beta_{t,k} y_{t - f(k)}          (y_s = 0 for s < 0)

i.e. ``A = diag(a)`` and ``B[t, t - f(k)] = beta_{t,k}``. Offsets: ``f(k) = 2^k`` (``power2``) or
``f(k) = k^2 + 1`` (``square``), k = 0, 1, ...

The cache-efficient lattice variants (``power2_cache``, ``square_cache``) read, for offset k, the
output at ``t - f(k)`` rounded down to the lattice of multiples of ``f(k)``:
``s_k(t) = f(k) (floor(t / f(k)) - 1)`` (a lag between ``f(k)`` and ``2 f(k) - 1``; reached, as in
the plain pattern, from ``t >= f(k)``). Every later step reads, at level k, one of the two
multiples of ``f(k)`` at or after ``s_k(t)``, so a decoder keeps at most ``2 K`` outputs
(``lattice_keep``), not the last ``f(K - 1)``. ``sources`` gives the read positions of either kind;
``gltm_dense`` and ``gltm_sequential`` take them; ``gltm_blocked`` solves the lattice by blocks too
(``blocked_solve_sources``: gathers at any read positions, an in-block system of any shape, and
an adjoint that scatters each block's terms back to the positions it read).

- ``gltm_dense``: the reference, builds the (length x length) matrices and calls
  ``torch.linalg.solve_triangular`` (O(n^2) memory).
- ``gltm_sequential``: forward substitution one position at a time (the decoding step).
- ``gltm_blocked``: the fast path, forward substitution by blocks of ``block_size`` positions
  (``blocked_solve``), and the same solve backwards in time for the gradients:
  the terms reaching earlier blocks are gathered from their outputs in one index and summed by one
  batched product; the terms inside the block form a small unit lower triangular system, solved
  with dense products ((I - L)^{-1} = prod (I + L^(2^j)): batched LAPACK solves of many small
  systems are slow on CPU). O(n K p + n Q^2 log Q) work for K offsets and blocks of Q.

Shapes: ``a (batch, heads, length)``, ``beta (batch, heads, length, K)``, ``v (batch, heads, length, p)``
-> ``y (batch, heads, length, p)``. All three compute in one dtype, float32 for half-precision
inputs (mixed dtypes arise under autocast, where the softmax of the weights runs in float32).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as TF

PATTERNS = {"power2": lambda k: 2 ** k, "square": lambda k: k * k + 1,
            "power2_cache": lambda k: 2 ** k, "square_cache": lambda k: k * k + 1}
LATTICE = ("power2_cache", "square_cache")  # read positions rounded down to multiples of f(k)


def offsets(pattern: str, max_len: int) -> list[int]:
    """The offsets ``f(0), f(1), ...`` below ``max_len`` (at least the first): the pattern of B."""
    f = PATTERNS[pattern]
    out = [f(0)]
    while f(len(out)) < max_len:
        out.append(f(len(out)))
    return out


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The common dtype of ``tensors``, float32 in place of half precision."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sources(offs: list[int], positions: torch.Tensor, lattice: bool = False) -> torch.Tensor:
    """The position each of ``positions (m,)`` reads through each offset: ``(m, K)``, ``t - f(k)`` (or
    its lattice rounding ``f(k) (floor(t / f(k)) - 1)``), -1 where ``f(k) > t`` (no term)."""
    t, f = positions[:, None], torch.tensor(offs, dtype=torch.long, device=positions.device)[None, :]
    read = f * (t // f - 1) if lattice else t - f
    return torch.where(f <= t, read, -1)


def lattice_keep(offs: list[int], positions: torch.Tensor, next_position: int) -> torch.Tensor:
    """Which of the computed ``positions (m,)`` a lattice decoder must keep before it computes
    ``next_position`` and every later one: those that some offset still reads, ``(m,)`` bool."""
    f = torch.tensor(offs, dtype=torch.long, device=positions.device)[None, :]
    earliest = f * (next_position // f - 1)  # the first lattice read of level k from next_position on
    return ((positions[:, None] % f == 0) & (positions[:, None] >= earliest)).any(-1)


def gltm_dense(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, offs: list[int],
               lattice: bool = False) -> torch.Tensor:
    """Reference: ``(I - B) Y = A V`` with dense triangular matrices, one per batch and head; B's
    entries at ``sources`` (the plain pattern, or its lattice rounding)."""
    ct = compute_dtype(a, beta, v)
    a, beta, v = a.to(ct), beta.to(ct), v.to(ct)
    n = v.shape[2]
    B = v.new_zeros(*v.shape[:2], n, n)
    read = sources(offs, torch.arange(n, device=v.device), lattice)  # (n, K)
    for k in range(len(offs)):  # B[t, s_k(t)] += beta[t, k] where offset k reaches (lattice reads may coincide)
        rows = (read[:, k] >= 0).nonzero()[:, 0]
        if len(rows):
            B[..., rows, read[rows, k]] += beta[:, :, rows, k]
    eye = torch.eye(n, dtype=v.dtype, device=v.device)
    return torch.linalg.solve_triangular(eye - B, a[..., None] * v, upper=False, unitriangular=True)


def gltm_step(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, history: torch.Tensor,
              offs: list[int]) -> torch.Tensor:
    """One position: ``a (b, h)``, ``beta (b, h, K)``, ``v (b, h, p)`` and the outputs so far
    ``history (b, h, t, p)`` (at least the last ``max(offs)``) -> ``y_t (b, h, p)``."""
    ct = compute_dtype(a, beta, v, history)
    a, beta, v, history = a.to(ct), beta.to(ct), v.to(ct), history.to(ct)
    y = a[..., None] * v
    t = history.shape[2]
    for k, f in enumerate(offs):
        if f <= t:
            y = y + beta[..., k, None] * history[:, :, t - f]
    return y


def gltm_sequential(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, offs: list[int],
                    lattice: bool = False) -> torch.Tensor:
    """Forward substitution one position at a time (``length`` sequential steps)."""
    ct = compute_dtype(a, beta, v)
    a, beta, v = a.to(ct), beta.to(ct), v.to(ct)
    read = sources(offs, torch.arange(v.shape[2]), lattice).tolist()
    outputs: list[torch.Tensor] = []
    for t, (a_t, beta_t, v_t) in enumerate(zip(a.unbind(2), beta.unbind(2), v.unbind(2))):
        y = a_t[..., None] * v_t
        for k, s in enumerate(read[t]):
            if s >= 0:
                y = y + beta_t[..., k, None] * outputs[s]
        outputs.append(y)
    return torch.stack(outputs, dim=2)


def unit_lower_solve(L: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(I - L)^{-1} rhs`` for strictly lower triangular ``L (..., Q, Q)``: L is nilpotent, so
    ``(I - L)^{-1} = (I + L)(I + L^2)(I + L^4)...`` (log2 Q factors), all dense products."""
    y, power, reach = rhs, L, 1
    while True:
        y = y + power @ y
        reach *= 2
        if reach >= L.shape[-1]:
            return y
        power = power @ power


def blocked_solve(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, offs: list[int] | tuple[int, ...],
                  block_size: int) -> torch.Tensor:
    """The solve of ``gltm_blocked`` without autograd (it writes a buffer in place), in ``length /
    block_size`` sequential block steps; inputs in one dtype.

    The outputs go into a buffer with ``max(offs)`` zero rows in front, so the sources of every
    term of a block are one gather (rows of this block are still zero there: their terms are the
    block's own system). That system is solved by ``unit_lower_solve``: products only.
    """
    b, h, n, p = v.shape
    if not offs:  # B = 0
        return a[..., None] * v
    Q = min(block_size, n)
    pad = (-n) % Q
    if pad:  # padding comes after every real position: it changes nothing before it
        a, beta, v = TF.pad(a, (0, pad)), TF.pad(beta, (0, 0, 0, pad)), TF.pad(v, (0, 0, 0, pad))
    blocks, K, front = (n + pad) // Q, len(offs), max(offs)
    rhs = (a[..., None] * v).unflatten(2, (blocks, Q)).unbind(2)  # A V per block, (b, h, Q, p) each
    coef = beta.unflatten(2, (blocks, Q)).unbind(2)  # (b, h, Q, K) each
    f = torch.tensor(offs, device=v.device)
    rows = torch.arange(Q, device=v.device)
    # within a block, row i depends on row i - f for offsets f < Q: a fixed scatter of the coefficients
    inner = [k for k, o in enumerate(offs) if o < Q]
    if inner:
        in_rows = torch.cat([rows[offs[k]:] for k in inner])
        in_cols = torch.cat([rows[: Q - offs[k]] for k in inner])
    y = v.new_zeros(b, h, front + n + pad, p)  # y_t at row front + t; rows before front stay zero
    for c in range(blocks):
        sources = (front + c * Q + rows[:, None] - f[None, :]).flatten()  # (Q K,): t - f(k)
        history = y.index_select(2, sources).unflatten(2, (Q, K))  # (b, h, Q, K, p)
        known = rhs[c] + (coef[c][..., None, :] @ history)[..., 0, :]  # A v + sum_k beta_{t,k} y_{t-f(k)}
        if inner:  # the block's own system, with L strictly lower triangular: B restricted to the block
            L = v.new_zeros(b, h, Q, Q)
            L[..., in_rows, in_cols] = torch.cat([coef[c][:, :, offs[k]:, k] for k in inner], dim=-1)
            known = unit_lower_solve(L, known)
        y.index_copy_(2, front + c * Q + rows, known)  # in place: a copy of y per block would be O(n^2)
    return y[:, :, front:front + n]


class _BlockedSolve(torch.autograd.Function):
    """``blocked_solve`` with its adjoint as the backward: saves the inputs and ``y`` (O(n (K + p))),
    not autograd's per-block gathers, whose gradients would each be a buffer as long as the sequence.

    With ``ybar`` the gradient reaching each output through all later ones,
    ``ybar_s = g_s + sum_k beta_{s + f(k), k} ybar_{s + f(k)}``: the same kind of solve run backwards
    in time (coefficients shifted by their offset). Then ``grad beta_{t,k} = ybar_t . y_{t - f(k)}``,
    ``grad a_t = ybar_t . v_t`` and ``grad v_t = a_t ybar_t``.
    """

    @staticmethod
    def forward(ctx, a, beta, v, offs, block_size):
        y = blocked_solve(a, beta, v, offs, block_size)
        ctx.save_for_backward(a, beta, v, y)
        ctx.offs, ctx.block_size = offs, block_size
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        a, beta, v, y = ctx.saved_tensors
        n = v.shape[2]
        live = [(k, f) for k, f in enumerate(ctx.offs) if f < n]
        shifted = torch.zeros_like(beta)  # shifted[s, k] = beta[s + f(k), k]
        for k, f in live:
            shifted[:, :, : n - f, k] = beta[:, :, f:, k]
        ybar = blocked_solve(torch.ones_like(a), shifted.flip(2), grad_y.flip(2), ctx.offs, ctx.block_size).flip(2)
        grad_beta = torch.zeros_like(beta)
        for k, f in live:
            grad_beta[:, :, f:, k] = (ybar[:, :, f:] * y[:, :, : n - f]).sum(-1)
        return (ybar * v).sum(-1), grad_beta, a[..., None] * ybar, None, None


def _block_system(coef: torch.Tensor, read: torch.Tensor, start: int, Q: int) -> torch.Tensor | None:
    """The terms of a block that read inside it, as ``L (b, h, Q, Q)`` (``L[i, j]``: row i reads row j;
    coinciding reads add up); None when no term stays inside. ``coef (b, h, Q, K)``, ``read (Q, K)``."""
    inside = read >= start
    if not bool(inside.any()):
        return None
    rows, ks = inside.nonzero(as_tuple=True)
    L = coef.new_zeros(*coef.shape[:2], Q * Q)
    L.index_add_(2, rows * Q + read[rows, ks] - start, coef[:, :, rows, ks])
    return L.unflatten(2, (Q, Q))


def blocked_solve_sources(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, read: torch.Tensor,
                          block_size: int) -> torch.Tensor:
    """``blocked_solve`` for read positions ``read (n, K)`` of any kind (``sources``; -1: no term), without
    autograd. The outputs go into a buffer behind one zero row (what a -1 reads)."""
    b, h, n, p = v.shape
    Q = min(block_size, n)
    pad = (-n) % Q
    if pad:
        a, beta, v = TF.pad(a, (0, pad)), TF.pad(beta, (0, 0, 0, pad)), TF.pad(v, (0, 0, 0, pad))
        read = TF.pad(read, (0, 0, 0, pad), value=-1)
    K = read.shape[1]
    rhs = a[..., None] * v
    y = v.new_zeros(b, h, 1 + n + pad, p)  # y_t at row 1 + t
    for c in range(0, n + pad, Q):
        r, coef = read[c:c + Q], beta[:, :, c:c + Q]
        history = y.index_select(2, (r + 1).flatten()).unflatten(2, (Q, K))  # rows of this block still zero
        known = rhs[:, :, c:c + Q] + (coef[..., None, :] @ history)[..., 0, :]
        L = _block_system(coef, r, c, Q)
        if L is not None:
            known = unit_lower_solve(L, known)
        y[:, :, 1 + c:1 + c + Q] = known
    return y[:, :, 1:1 + n]


class _BlockedSourcesSolve(torch.autograd.Function):
    """``blocked_solve_sources`` with its adjoint: ``ybar = (I - B)^{-T} g`` by blocks from the last,
    each block's system transposed (``unit_lower_solve`` holds for any nilpotent matrix), the terms
    that read earlier blocks scattered to the positions they read once the block is solved."""

    @staticmethod
    def forward(ctx, a, beta, v, read, block_size):
        y = blocked_solve_sources(a, beta, v, read, block_size)
        ctx.save_for_backward(a, beta, v, read, y)
        ctx.block_size = block_size
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        a, beta, v, read, y = ctx.saved_tensors
        b, h, n, p = v.shape
        Q = min(ctx.block_size, n)
        ybar = torch.zeros_like(grad_y)
        reaching = grad_y.new_zeros(b, h, 1 + n, p)  # row 1 + s: what later outputs pass back to y_s
        for c in reversed(range(0, n, Q)):
            stop = min(c + Q, n)
            r, coef = read[c:stop], beta[:, :, c:stop]
            known = grad_y[:, :, c:stop] + reaching[:, :, 1 + c:1 + stop]
            L = _block_system(coef, r, c, stop - c)
            if L is not None:
                known = unit_lower_solve(L.transpose(-1, -2), known)
            ybar[:, :, c:stop] = known
            before = (r >= 0) & (r < c)
            rows, ks = before.nonzero(as_tuple=True)
            if len(rows):
                reaching.index_add_(2, r[rows, ks] + 1, coef[:, :, rows, ks, None] * known[:, :, rows])
        y_read = torch.cat([y.new_zeros(b, h, 1, p), y], dim=2)[:, :, read + 1]  # (b, h, n, K, p); -1 reads zero
        grad_beta = (ybar[:, :, :, None] * y_read).sum(-1)
        return (ybar * v).sum(-1), grad_beta, a[..., None] * ybar, None, None


def gltm_blocked(a: torch.Tensor, beta: torch.Tensor, v: torch.Tensor, offs: list[int],
                 block_size: int, lattice: bool = False) -> torch.Tensor:
    """Fast path: equal to ``gltm_dense`` (values and gradients) in ``length / block_size``
    sequential block steps, forward and backward; O(n (K + p)) saved for backward."""
    ct = compute_dtype(a, beta, v)
    if lattice:
        read = sources(offs, torch.arange(v.shape[2], device=v.device), lattice=True)
        return _BlockedSourcesSolve.apply(a.to(ct), beta.to(ct), v.to(ct), read, block_size)
    return _BlockedSolve.apply(a.to(ct), beta.to(ct), v.to(ct), tuple(offs), block_size)


def blocked_steps(length: int, block_size: int) -> tuple[int, int]:
    """Block length and number of blocks ``gltm_blocked`` uses for ``length``."""
    Q = min(block_size, length)
    return Q, math.ceil(length / Q)


def solve_products(Q: int) -> tuple[int, int]:
    """``unit_lower_solve`` on (Q x Q): products with the right-hand side, and squarings of L."""
    applications = max(1, math.ceil(math.log2(Q))) if Q > 1 else 1
    return applications, applications - 1
