"""Mamba2's state-space duality (SSD) scan: a chunked matrix form beside its sequential reference.

Per head h with scalar decay ``A[h] < 0``, step size ``dt[t, h] > 0``, input ``x[t, h] (p)``,
``B[t, g], C[t, g] (n)`` shared by the heads of group g:

    state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T       # (p, n)
    y_t     = state_t C_t                                     # (p,)

Shapes follow mamba_ssm: ``x (batch, length, heads, p)``, ``dt (batch, length, heads)``,
``A (heads,)``, ``B, C (batch, length, groups, n)`` -> ``y (batch, length, heads, p)``.
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch.nn import functional as TF


def ssd_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Reference: the recurrence one step at a time (O(length) sequential steps)."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    B = repeat(B, "b l g n -> b l (g r) n", r=heads // groups)
    C = repeat(C, "b l g n -> b l (g r) n", r=heads // groups)
    state = x.new_zeros(batch, heads, p, n)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (b, h, 1, 1)
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def _segment_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """``exp(sum_{k=j+1..i} a_k)`` for ``i >= j`` and 0 above the diagonal, from ``a (..., T)``: (..., T, T)."""
    T = log_decay.shape[-1]
    cum = torch.cumsum(log_decay, dim=-1)
    diff = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=log_decay.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, return_state: bool = False):
    """Fast path: quadratic attention-like products inside chunks, a short recurrence across chunks.

    O(length * chunk_size) work with dense matrix products; equal to ``ssd_sequential``. With
    ``return_state`` also the state after the last position, ``(batch, heads, p, n)``.
    """
    batch, length, heads, p = x.shape
    groups = B.shape[2]
    r = heads // groups
    pad = (-length) % chunk_size
    if pad:  # dt = 0 on padding: no decay and no input, so padding changes nothing before it
        x, dt = TF.pad(x, (0, 0, 0, 0, 0, pad)), TF.pad(dt, (0, 0, 0, pad))
        B, C = TF.pad(B, (0, 0, 0, 0, 0, pad)), TF.pad(C, (0, 0, 0, 0, 0, pad))
    # heads of a group share B and C: fold them into matrix rows/columns rather than broadcasting
    xc = rearrange(x * dt[..., None], "b (c q) (g r) p -> b c g r q p", q=chunk_size, g=groups)  # dt-scaled
    Bc = rearrange(B, "b (c q) g n -> b c g q n", q=chunk_size)
    Cc = rearrange(C, "b (c q) g n -> b c g q n", q=chunk_size)
    a = rearrange(dt * A, "b (c q) (g r) -> b c g r q", q=chunk_size, g=groups)  # log decay per step, <= 0
    a_cum = torch.cumsum(a, dim=-1)  # (b, c, g, r, q)

    # 1. within each chunk: y_i += sum_{j <= i} (C_i . B_j) exp(a_{j+1..i}) dt_j x_j
    scores = (Cc @ Bc.transpose(-1, -2)).unsqueeze(3)  # (b, c, g, 1, q, q)
    y = (scores * _segment_decay(a)) @ xc  # (b, c, g, r, q, p)

    # 2. the state each chunk leaves behind: sum_j exp(a_{j+1..end}) dt_j x_j B_j^T
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, g, r, q)
    weighted = rearrange(xc * to_end[..., None], "b c g r q p -> b c g (r p) q")
    chunk_states = rearrange(weighted @ Bc, "b c g (r p) n -> b c g r p n", r=r)

    # 3. the state entering each chunk: a short sequential recurrence over chunks, O(chunks)
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]  # (b, c, g, r, 1, 1)
    state = torch.zeros_like(chunk_states[:, 0])
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = state * chunk_decay[:, c] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (b, c, g, r, p, n)

    # 4. what the entering state contributes inside the chunk: exp(a_{1..i}) C_i state
    from_state = Cc @ rearrange(entering, "b c g r p n -> b c g n (r p)")  # (b, c, g, q, r p)
    y = y + rearrange(from_state, "b c g q (r p) -> b c g r q p", r=r) * torch.exp(a_cum)[..., None]
    y = rearrange(y, "b c g r q p -> b (c q) (g r) p")[:, :length]
    if return_state:  # padding has dt = 0: no decay, no input, so the last state is the length's
        return y, rearrange(state, "b g r p n -> b (g r) p n")
    return y
