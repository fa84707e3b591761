"""The delta rule, plain (DeltaNet) or with a scalar decay per head and step (Gated DeltaNet).

Per head, with keys ``k_t`` and queries ``q_t`` of size ``dk`` (keys L2-normalised by the caller),
values ``v_t`` of size ``dv``, a writing strength ``beta_t`` and a log decay ``g_t <= 0`` (``None``:
no decay, Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length"; Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks"):

    S'_t = exp(g_t) S_{t-1}                               # (dk, dv)
    u_t  = beta_t (v_t - k_t S'_t)                        # (dv,): the new value minus what S' recalls for k_t
    S_t  = S'_t + k_t^T u_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t  = q_t S_t                                        # (dv,)

``delta_rule_recurrent`` runs this one step at a time (the papers' recurrence; the reference and
the decoding step). ``delta_rule_chunked`` is the chunkwise-parallel form of Yang et al. 2024
(Sec. 3, the WY representation of the products of Householder-like transitions, computed by the
UT transform), extended with decays as in Gated DeltaNet (Sec. 3.3): inside a chunk of ``Q``
tokens entered with state ``S_0``, with ``G_t = sum_{s <= t} g_s`` (from the chunk start) and
``D_tj = exp(G_t - G_j)`` (``j <= t``),

    (I + A) U = diag(beta) V - diag(beta exp(G)) K S_0,   A_tj = beta_t D_tj k_t . k_j  (j < t)
    o_t = exp(G_t) q_t S_0 + sum_{j <= t} D_tj (q_t . k_j) u_j
    S_Q = exp(G_Q) S_0 + sum_j exp(G_Q - G_j) k_j^T u_j

The unit lower-triangular system is solved once per chunk for both right-hand sides
(``U = U_local - W S_0`` with ``U_local = T diag(beta) V``, ``W = T diag(beta exp G) K``,
``T = (I + A)^{-1}``), all chunks at once; only ``W S_0``, the read-out and the state update run
chunk after chunk. Every decay factor is ``exp`` of a non-positive number. fla's
``fla/ops/delta_rule/naive.py`` (``delta_rule_chunkwise``) and ``fla/ops/gated_delta_rule/naive.py``
(``naive_chunk_gated_delta_rule``) compute the same form with a row-by-row inverse.

Shapes: ``q, k (batch, heads, length, dk)``, ``v (batch, heads, length, dv)``, ``beta`` and ``g``
``(batch, heads, length)`` -> ``o (batch, heads, length, dv)`` and the state after the last position
``(batch, heads, dk, dv)``. Queries come scaled (the mixers multiply by ``dk^-1/2``).
"""
from __future__ import annotations

import torch
from torch.nn import functional as TF


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: ``q, k (batch, heads, dk)``, ``v (batch, heads, dv)``, ``beta, g (batch, heads)``,
    ``state (batch, heads, dk, dv)`` -> ``o (batch, heads, dv)`` and the new state."""
    if g is not None:
        state = state * torch.exp(g)[..., None, None]
    recalled = (k[..., None] * state).sum(-2)  # k S': (batch, heads, dv)
    u = beta[..., None] * (v - recalled)
    state = state + k[..., None] * u[..., None, :]
    return (q[..., None] * state).sum(-2), state


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         g: torch.Tensor | None = None,
                         state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence one position at a time (``length`` sequential steps)."""
    b, h, n, dk = k.shape
    if state is None:
        state = q.new_zeros(b, h, dk, v.shape[-1])
    outputs = []
    gates = [None] * n if g is None else g.unbind(2)
    for q_t, k_t, v_t, beta_t, g_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2), gates):
        o, state = delta_rule_step(q_t, k_t, v_t, beta_t, g_t, state)
        outputs.append(o)
    return torch.stack(outputs, dim=2), state


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       g: torch.Tensor | None = None, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: the chunkwise-parallel (WY / UT transform) form, equal to ``delta_rule_recurrent``.

    O(length * chunk_size) work in dense products and one unit-triangular solve per chunk (all
    chunks at once), ``length / chunk_size`` sequential state updates. Half-precision inputs are
    computed in float32.
    """
    dtype = v.dtype
    ct = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v, beta = q.to(ct), k.to(ct), v.to(ct), beta.to(ct)
    b, h, n, dk = k.shape
    dv = v.shape[-1]
    Q = min(chunk_size, n)
    pad = (-n) % Q
    if g is None:
        g = torch.zeros_like(beta)
    g = g.to(ct)
    if pad:  # zero keys and writing strengths add nothing, zero log decays keep the state
        q, k, v = (TF.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta, g = TF.pad(beta, (0, pad)), TF.pad(g, (0, pad))
    qc, kc, vc = (t.unflatten(2, (-1, Q)) for t in (q, k, v))  # (b, h, C, Q, e)
    bc = beta.unflatten(2, (-1, Q))  # (b, h, C, Q)
    G = torch.cumsum(g.unflatten(2, (-1, Q)), dim=-1)  # (b, h, C, Q): log decay from the chunk start, <= 0
    lower = torch.ones(Q, Q, dtype=torch.bool, device=q.device).tril()  # j <= t
    D = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~lower, float("-inf")))  # (b, h, C, Q, Q)

    # the UT transform: (I + A) [U_local, W] = [diag(beta) V, diag(beta exp G) K], A strictly lower
    A = (bc[..., None] * D * (kc @ kc.transpose(-1, -2))).tril(-1)
    eye = torch.eye(Q, dtype=ct, device=q.device)
    rhs = torch.cat([bc[..., None] * vc, (bc * torch.exp(G))[..., None] * kc], dim=-1)  # (b, h, C, Q, dv + dk)
    solved = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    u_local, W = solved[..., :dv], solved[..., dv:]
    scores = (qc @ kc.transpose(-1, -2)) * D  # (b, h, C, Q, Q), zero above the diagonal
    q_decayed = qc * torch.exp(G)[..., None]
    k_to_end = kc * torch.exp(G[..., -1:] - G)[..., None]  # (b, h, C, Q, dk)
    decay_total = torch.exp(G[..., -1])  # (b, h, C)

    state = q.new_zeros(b, h, dk, dv)
    outputs = []
    for c in range(qc.shape[2]):  # across chunks: the state entering each chunk
        u = u_local[:, :, c] - W[:, :, c] @ state  # (b, h, Q, dv)
        outputs.append(q_decayed[:, :, c] @ state + scores[:, :, c] @ u)
        state = decay_total[:, :, c, None, None] * state + k_to_end[:, :, c].transpose(-1, -2) @ u
    o = torch.stack(outputs, dim=2).flatten(2, 3)[:, :, :n]
    return o.to(dtype), state.to(dtype)


def chunked_flops(n: int, heads: int, dk: int, dv: int, chunk: int) -> dict[str, float]:
    """Work of ``delta_rule_chunked`` per sequence, as computed (the length padded to whole chunks):
    ``matmul`` the dense products (key-key and query-key scores, ``W S``, the read-outs, the state
    updates); ``scan`` the unit-triangular solves (forward substitution: ``Q (Q - 1)`` FLOPs per
    right-hand column per chunk); ``elementwise`` the decay matrices, the scalings and the state decay."""
    Q = min(chunk, n)
    C = -(-n // Q)
    per_chunk = 2.0 * Q * Q * dk * 2 + 2.0 * Q * Q * dv + 2.0 * Q * dk * dv * 3
    return {
        "matmul": C * heads * per_chunk,
        "scan": C * heads * Q * (Q - 1.0) * (dv + dk),
        # D (difference, exp), A (two products), scores x D; rhs scalings; q and k decays; state decay and add
        "elementwise": C * heads * (2.0 * Q * Q + 3.0 * Q * Q + Q * (dv + 2.0 * dk) + 2.0 * Q * dk + 2.0 * dk * dv),
    }
