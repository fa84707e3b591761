"""The generalised delta rule with a diagonal-plus-low-rank transition (RWKV-7's state update).

Per head, with queries ``q_t``, keys ``k_t``, the low-rank pair ``a_t, b_t`` and log decays ``g_t <= 0``
of size ``dk``, and values ``v_t`` of size ``dv``, the state ``S (dk, dv)`` evolves as

    S_t = (diag(exp(g_t)) + b_t a_t^T) S_{t-1} + k_t^T v_t          # (dk, dv)
    o_t = q_t S_t                                                   # (dv,)

This is fla's ``dplr`` recurrence (fla/ops/generalized_delta_rule/dplr/naive.py, ``S_t = S_{t-1}
(D_t + alpha_t beta_t^T) + v_t k_t^T`` in its transposed (dv, dk) layout) and RWKV-7's
``S_t = S_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t`` (Peng et al. 2025, eq. 7 written with the
state as (dv, dk)); RWKV-7 takes ``a = -kappa``, ``b = kappa * a_gate`` with ``kappa`` the
normalised removal key. The stored state here is the transpose: (dk, dv), as in
``mixers/ops/linear_attention.py``.

``dplr_recurrent`` runs it one step at a time (the reference, and the decoding step ``dplr_step``);
``dplr_chunked`` is a chunkwise-parallel form (the WY-style form of Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", generalised to a diagonal decay as
fla's ``chunk_dplr_delta_rule``). Inside a chunk of ``C`` tokens, with ``G_t`` the inclusive
cumulative log decay from the chunk start, ``Gamma_t = exp(G_t)`` and ``S_0`` the entering state,
let ``u_t = a_t^T S_{t-1}`` (a ``dv`` row). Then

    S_t = Gamma_t S_0 + sum_{s <= t} (Gamma_t / Gamma_s) (k_s^T v_s + b_s^T u_s)
    u_t = (a_t Gamma_{t-1}) S_0 + sum_{s < t} (a_t Gamma_{t-1} / Gamma_s) . (k_s v_s + b_s u_s)

so ``(I - A_ab) u = A_ak v + (a Gamma_{t-1}) S_0`` with strictly lower-triangular ``A_ab``, ``A_ak``: one
unit-triangular solve per chunk (parallel over chunks), then a short recurrence over chunk states.
Decay ratios are formed as products of ``exp(G_t)`` (<= 1) and ``exp(-G_s)`` (>= 1, at most
``exp(C max|g|)``): every chunk's total log decay must stay above about -80 in float32 (RWKV-7's
decays are bounded, ``|g| <= e^-0.5``, so chunks of up to 128 tokens are safe; its mixer checks this).

Shapes: ``q, k, a, b, g (batch, heads, length, dk)``, ``v (batch, heads, length, dv)`` ->
``o (batch, heads, length, dv)`` and the state after the last position ``(batch, heads, dk, dv)``.
"""
from __future__ import annotations

import torch
from torch.nn import functional as TF


def dplr_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g: torch.Tensor,
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: ``q, k, a, b, g (batch, heads, dk)``, ``v (batch, heads, dv)``, ``state (batch, heads, dk, dv)``
    -> ``o (batch, heads, dv)`` and the new state."""
    removed = (a[..., None] * state).sum(-2)  # a^T S_{t-1}: (batch, heads, dv)
    state = torch.exp(g)[..., None] * state + b[..., None] * removed[..., None, :] + k[..., None] * v[..., None, :]
    return (q[..., None] * state).sum(-2), state


def dplr_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   g: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence one position at a time (``length`` sequential steps)."""
    batch, heads, n, dk = k.shape
    if state is None:
        state = q.new_zeros(batch, heads, dk, v.shape[-1])
    outputs = []
    for step in zip(*(t.unbind(2) for t in (q, k, v, a, b, g))):
        o, state = dplr_step(*step, state)
        outputs.append(o)
    return torch.stack(outputs, dim=2), state


def dplr_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g: torch.Tensor,
                 chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: chunkwise-parallel form, equal to ``dplr_recurrent`` from a zero state.

    Dense products inside chunks of ``chunk_size`` tokens (O(length * chunk_size) work), one
    unit-triangular solve per chunk, ``length / chunk_size`` sequential state updates.
    Half-precision inputs are computed in float32.
    """
    dtype = v.dtype
    ct = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v, a, b, g = (t.to(ct) for t in (q, k, v, a, b, g))
    batch, heads, n, dk = k.shape
    C = min(chunk_size, n)
    pad = (-n) % C
    if pad:  # zero keys, zero low-rank pairs and zero log decay keep the state: padding changes nothing before it
        q, k, v, a, b, g = (TF.pad(t, (0, 0, 0, pad)) for t in (q, k, v, a, b, g))
    qc, kc, vc, ac, bc, gc = (t.unflatten(2, (-1, C)) for t in (q, k, v, a, b, g))  # (batch, heads, N, C, e)
    G = torch.cumsum(gc, dim=3)  # inclusive: log Gamma_t
    into = torch.exp(G)  # Gamma_t <= 1
    q_in, a_in = qc * into, ac * torch.exp(G - gc)  # q_t Gamma_t, a_t Gamma_{t-1}
    out = torch.exp(-G)  # 1 / Gamma_s >= 1
    k_out, b_out = kc * out, bc * out
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    inclusive = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A_ab = (a_in @ b_out.transpose(-1, -2)).masked_fill(~strict, 0.0)  # (batch, heads, N, C, C)
    A_ak = (a_in @ k_out.transpose(-1, -2)).masked_fill(~strict, 0.0)
    A_qk = (q_in @ k_out.transpose(-1, -2)).masked_fill(~inclusive, 0.0)
    A_qb = (q_in @ b_out.transpose(-1, -2)).masked_fill(~inclusive, 0.0)
    T = torch.eye(C, dtype=ct, device=q.device) - A_ab  # unit lower-triangular
    u_local = torch.linalg.solve_triangular(T, A_ak @ vc, upper=False, unitriangular=True)  # (b, h, N, C, dv)
    u_state = torch.linalg.solve_triangular(T, a_in, upper=False, unitriangular=True)  # (b, h, N, C, dk)
    o_local = A_qk @ vc  # the chunk's own keys and values, before the removal terms
    total = G[:, :, :, -1]  # (batch, heads, N, dk): the chunk's log decay
    to_end = torch.exp(total[:, :, :, None] - G)  # Gamma_C / Gamma_s <= 1
    k_end, b_end = (kc * to_end).transpose(-1, -2), (bc * to_end).transpose(-1, -2)  # (b, h, N, dk, C)
    kv_end = k_end @ vc  # (b, h, N, dk, dv)
    state = q.new_zeros(batch, heads, dk, v.shape[-1])
    outputs = []
    for i in range(qc.shape[2]):
        u = u_local[:, :, i] + u_state[:, :, i] @ state  # (b, h, C, dv): a_t^T S_{t-1}
        outputs.append(o_local[:, :, i] + A_qb[:, :, i] @ u + q_in[:, :, i] @ state)
        state = torch.exp(total[:, :, i])[..., None] * state + kv_end[:, :, i] + b_end[:, :, i] @ u
    o = torch.stack(outputs, dim=2).flatten(2, 3)[:, :, :n]
    return o.to(dtype), state.to(dtype)


def chunked_flops(n: int, heads: int, dk: int, dv: int, chunk: int) -> dict[str, float]:
    """Dense products (``matmul``), triangular solves (``scan``) and the rest of ``dplr_chunked`` per
    sequence, as computed: the length padded to whole chunks, masked entries included."""
    C = min(chunk, n)
    N = -(-n // C)
    per_chunk = (4 * 2.0 * C * C * dk  # A_ab, A_ak, A_qk, A_qb
                 + 3 * 2.0 * C * C * dv  # A_ak v, A_qk v, A_qb u
                 + 4 * 2.0 * C * dk * dv)  # u_state S, q_in S, k_end v, b_end u
    elementwise = 8.0 * C * dk + 4.0 * C * dk + 2.0 * dk * dv + 3.0 * C * dv  # cumsum, exps, scalings; state decay
    return {"matmul": N * heads * per_chunk,
            "scan": N * heads * C * C * (dv + dk),  # the unit-triangular solves (a substitution: C^2 per column)
            "elementwise": N * heads * elementwise}


def recurrent_flops(n: int, heads: int, dk: int, dv: int) -> float:
    """``dplr_step`` per sequence: a^T S (2), decay (1), b u^T (2), k^T v (2), q S (2) per state entry."""
    return 9.0 * n * heads * dk * dv
