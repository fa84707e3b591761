"""Mamba's selective scan (Gu & Dao 2023, Algorithm 2): a two-level chunked form beside its
sequential reference.

Per channel c and state index s, with input-dependent step ``dt[t, c] > 0`` and ``B[t], C[t] (N)``,
and a fixed ``A[c, s] < 0``:

    h_t[c, s] = exp(dt_t[c] A[c, s]) h_{t-1}[c, s] + dt_t[c] B_t[s] x_t[c]
    y_t[c]    = sum_s h_t[c, s] C_t[s]

Unlike Mamba2's scalar decay per head (``mixers/ops/ssd.py``), the decay here differs per channel
and state index, so the within-chunk products of SSD do not apply. ``selective_scan_chunked``
instead runs the recurrence inside all chunks at once (``chunk`` vectorised steps, each with its
outputs), carries the states across chunks (``length / chunk`` steps) and adds what the entering
state contributes inside each chunk (``chunk`` steps): about ``3 sqrt(length)`` sequential steps
with ``chunk = ceil(sqrt(length))``, ``length`` with a single chunk. Every decay it forms is ``exp``
of a non-positive number, so it is as stable as the recurrence. Neither keeps the states of all
positions beyond what autograd saves.

Shapes follow mamba_ssm's ``selective_scan_ref`` transposed to length-major: ``x, dt (batch,
length, d)`` (dt after softplus), ``A (d, N)``, ``B, C (batch, length, N)`` -> ``y (batch, length,
d)`` and the last state ``(batch, d, N)``.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as TF


def selective_scan_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence one step at a time (``length`` sequential steps)."""
    b, n, d = x.shape
    state = x.new_zeros(b, d, A.shape[-1])
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        state = torch.exp(dt_t[..., None] * A) * state + (dt_t * x_t)[..., None] * B_t[:, None, :]
        ys.append((state * C_t[:, None, :]).sum(-1))
    return torch.stack(ys, dim=1), state


def selective_scan_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: equal to ``selective_scan_sequential`` in ``2 chunk + length / chunk`` sequential steps
    (``chunk + 1`` for a single chunk)."""
    b, n, d = x.shape
    N = A.shape[-1]
    Q, chunks = selective_scan_steps(n, chunk_size)
    pad = Q * chunks - n
    if pad:  # dt = 0 on padding: decay 1 and no input, so the last state is the length's
        x, dt, B, C = (TF.pad(t, (0, 0, 0, pad)) for t in (x, dt, B, C))

    def by_step(t: torch.Tensor) -> torch.Tensor:  # (b, chunks * Q, e) -> (Q, b, chunks, e): a step's slice is contiguous
        return t.unflatten(1, (chunks, Q)).permute(2, 0, 1, 3)

    dt_s, u_s, B_s, C_s = by_step(dt), by_step(dt * x), by_step(B), by_step(C)
    C_cols = C_s.unbind(0)  # (b, chunks, N) each; unbind, not indexing: one gradient copy each

    # 1. inside every chunk at once, from a zero state: Q vectorised steps over (b, chunks, d, N), with
    #    the outputs of those states, y_t = h_t C_t, as batched products (states are not kept)
    ys, state = [], None
    for dt_i, u_i, B_i, C_i in zip(dt_s.unbind(0), u_s.unbind(0), B_s.unbind(0), C_cols):
        update = u_i[..., None] * B_i[:, :, None, :]  # dt_t x_t B_t
        state = update if state is None else torch.exp(dt_i[..., None] * A) * state + update
        ys.append((state @ C_i[..., None])[..., 0])  # (b, chunks, d)
    y = torch.stack(ys)  # (Q, b, chunks, d)

    # 2. the state entering each chunk, a recurrence over chunks, and its part of every output:
    #    exp(A * sum of dt since the chunk start) h_in C_t, exponents <= 0
    carried = x.new_zeros(b, d, N)
    if chunks > 1:
        whole = torch.exp(dt_s.sum(0)[..., None] * A)  # decay across each chunk, (b, chunks, d, N)
        entering = []
        for decay, h in zip(whole.unbind(1), state.unbind(1)):
            entering.append(carried)
            carried = decay * carried + h
        entering = torch.stack(entering, dim=1)  # (b, chunks, d, N)
        since_start = torch.cumsum(dt_s, dim=0)
        y = y + torch.stack([((torch.exp(s_i[..., None] * A) * entering) @ C_i[..., None])[..., 0]
                             for s_i, C_i in zip(since_start.unbind(0), C_cols)])
    else:
        carried = state[:, 0]
    y = y.permute(1, 2, 0, 3).flatten(1, 2)  # (b, length, d)
    return y[:, :n], carried


def selective_scan_steps(length: int, chunk_size: int | None = None) -> tuple[int, int]:
    """Chunk size and number of chunks ``selective_scan_chunked`` uses for ``length``."""
    Q = chunk_size or math.isqrt(max(length, 1) - 1) + 1  # ceil(sqrt(length))
    return Q, -(-length // Q)
