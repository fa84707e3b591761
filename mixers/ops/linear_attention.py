"""Causal linear attention, plain or with data-dependent per-channel decay (gated linear attention).

Per head, with keys ``k_t`` and queries ``q_t`` of size ``dk``, values ``v_t`` of size ``dv`` and
log decays ``g_t <= 0`` of size ``dk`` (``None``: no decay, Katharopoulos et al. 2020):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        # (dk, dv)
    o_t = q_t S_t                                    # (dv,)

``linear_attention_recurrent`` runs this one step at a time (the reference, and the decoding step);
``linear_attention_chunked`` is the chunkwise-parallel form of Yang et al. 2024 (GLA, Sec. 4):
dense products inside chunks of ``chunk_size`` tokens, a short recurrence over chunk states. With
decay, every decay factor it forms is ``exp`` of a non-positive number (no overflow): inside a
chunk, scores between different sub-chunks of ``subchunk_size`` tokens are products of queries and
keys rescaled relative to the query's sub-chunk start (GLA's secondary chunking); scores within a
sub-chunk are formed pairwise in log space.

Shapes: ``q, k (batch, heads, length, dk)``, ``v (batch, heads, length, dv)``, ``g`` like ``k`` ->
``o (batch, heads, length, dv)`` and the state after the last position ``(batch, heads, dk, dv)``.
"""
from __future__ import annotations

import torch
from torch.nn import functional as TF


def linear_attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                          state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: ``q, k, g (batch, heads, dk)``, ``v (batch, heads, dv)``, ``state (batch, heads, dk, dv)``."""
    if g is not None:
        state = state * torch.exp(g)[..., None]
    state = state + k[..., None] * v[..., None, :]
    return (q[..., None] * state).sum(-2), state


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
                               state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence one position at a time (``length`` sequential steps)."""
    b, h, n, dk = k.shape
    if state is None:
        state = q.new_zeros(b, h, dk, v.shape[-1])
    outputs = []
    gates = [None] * n if g is None else g.unbind(2)
    for q_t, k_t, v_t, g_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), gates):
        o, state = linear_attention_step(q_t, k_t, v_t, g_t, state)
        outputs.append(o)
    return torch.stack(outputs, dim=2), state


def _chunks(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(b, h, C * chunk, e)`` -> ``(b, h, C, chunk, e)``."""
    return t.unflatten(2, (-1, chunk))


def linear_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
                             chunk_size: int = 64, subchunk_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: chunkwise-parallel form, equal to ``linear_attention_recurrent``.

    O(length * chunk_size) work in dense products, ``length / chunk_size`` sequential state
    updates (none without decay: a cumulative sum). Without decay ``subchunk_size`` is unused; with
    decay it must divide ``chunk_size``. Half-precision inputs are computed in float32.
    """
    dtype = v.dtype
    ct = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    b, h, n, dk = k.shape
    Q = min(chunk_size, n)
    if g is not None:
        g = g.to(ct)
        c = min(subchunk_size, Q)
        Q = -(-Q // c) * c  # a whole number of sub-chunks
    pad = (-n) % Q
    if pad:  # zero keys add nothing and zero log decay keeps the state: padding changes nothing before it
        q, k, v = (TF.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g = None if g is None else TF.pad(g, (0, 0, 0, pad))
    qc, kc, vc = _chunks(q, Q), _chunks(k, Q), _chunks(v, Q)  # (b, h, C, Q, e)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=q.device).tril()

    if g is None:
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (b, h, C, Q, Q)
        o = scores @ vc
        chunk_states = kc.transpose(-1, -2) @ vc  # (b, h, C, dk, dv)
        after = torch.cumsum(chunk_states, dim=2)
        entering = after - chunk_states
        o = o + qc @ entering
        return o.flatten(2, 3)[:, :, :n].to(dtype), after[:, :, -1].to(dtype)

    gc = _chunks(g, Q)
    cum = torch.cumsum(gc, dim=3)  # B_t: log decay from the chunk start to t inclusive, <= 0, non-increasing
    S = Q // c
    # --- within a chunk, between sub-chunks: exp(B_t - B_j) = exp(B_t - r_I) exp(r_I - B_j), r_I = B_{s_I - 1}
    ref = TF.pad(cum, (0, 0, 1, 0))[:, :, :, 0:Q:c]  # (b, h, C, S, dk): B just before each sub-chunk
    q_rel = qc.unflatten(3, (S, c)) * torch.exp(cum.unflatten(3, (S, c)) - ref[:, :, :, :, None])  # (b,h,C,S,c,dk)
    before = torch.arange(Q, device=q.device)[None, :] < torch.arange(0, Q, c, device=q.device)[:, None]  # (S, Q)
    exponent = (ref[:, :, :, :, None] - cum[:, :, :, None]).masked_fill(~before[..., None], float("-inf"))
    k_rel = kc[:, :, :, None] * torch.exp(exponent)  # (b, h, C, S, Q, dk): zero from the sub-chunk on
    o = (q_rel @ k_rel.transpose(-1, -2)) @ vc[:, :, :, None]  # (b, h, C, S, c, dv)
    # --- within a sub-chunk: pairwise, in log space
    cs = cum.unflatten(3, (S, c))  # (b, h, C, S, c, dk)
    sub_causal = causal[:c, :c]
    pair = (cs[..., :, None, :] - cs[..., None, :, :]).masked_fill(~sub_causal[..., None], float("-inf"))
    qs, ks = qc.unflatten(3, (S, c)), kc.unflatten(3, (S, c))
    diag_scores = (qs[..., :, None, :] * ks[..., None, :, :] * torch.exp(pair)).sum(-1)  # (b, h, C, S, c, c)
    o = o + diag_scores @ vc.unflatten(3, (S, c))
    o = o.flatten(3, 4)  # (b, h, C, Q, dv)
    # --- across chunks: the state entering each chunk, a short recurrence over chunks
    total = cum[:, :, :, -1]  # (b, h, C, dk)
    chunk_states = (kc * torch.exp(total[:, :, :, None] - cum)).transpose(-1, -2) @ vc  # (b, h, C, dk, dv)
    state = q.new_zeros(b, h, dk, v.shape[-1])
    entering = []
    for decay, update in zip(torch.exp(total).unbind(2), chunk_states.unbind(2)):  # unbind: one gradient copy
        entering.append(state)
        state = state * decay[..., None] + update
    entering = torch.stack(entering, dim=2)
    o = o + (qc * torch.exp(cum)) @ entering
    return o.flatten(2, 3)[:, :, :n].to(dtype), state.to(dtype)
