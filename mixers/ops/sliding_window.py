"""Causal sliding-window softmax attention: query t attends to keys ``t - window + 1 .. t``.

``sliding_window_dense`` masks the full (length x length) score matrix (O(n^2), the reference);
``sliding_window_blocked`` computes the same in O(n * window): queries in blocks of ``window``
positions attend to their own block and the previous one (2 * window keys) under a band mask,
through ``scaled_dot_product_attention`` with the blocks folded into the batch.

Shapes: ``q, k, v (batch, heads, length, head_dim)`` -> ``(batch, heads, length, head_dim)``.
"""
from __future__ import annotations

import torch
from torch.nn import functional as TF


def band_mask(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean ``(len(queries), len(keys))``: key position in ``(query - window, query]`` and >= 0."""
    lag = queries[:, None] - keys[None, :]
    return (lag >= 0) & (lag < window) & (keys[None, :] >= 0)


def sliding_window_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Reference: the full score matrix under the band mask."""
    pos = torch.arange(q.shape[2], device=q.device)
    return TF.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(pos, pos, window))


def sliding_window_blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Fast path: blocks of ``window`` queries against ``2 * window`` keys, equal to ``sliding_window_dense``."""
    b, h, n, e = q.shape
    if n <= window:  # a single block: plain causal attention
        return TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    w = window
    pad = (-n) % w
    if pad:  # padded keys sit after every real query: the band mask never lets a real query see them
        q, k, v = (TF.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    C = (n + pad) // w

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (b, h, C*w, e) -> (C, b, h, w, e)
        return t.unflatten(2, (C, w)).permute(2, 0, 1, 3, 4)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    kb = torch.cat([TF.pad(kb, (0, 0, 0, 0, 0, 0, 0, 0, 1, 0))[:-1], kb], dim=3)  # previous block, then own
    vb = torch.cat([TF.pad(vb, (0, 0, 0, 0, 0, 0, 0, 0, 1, 0))[:-1], vb], dim=3)  # (C, b, h, 2w, e)
    starts = torch.arange(C, device=q.device)[:, None] * w
    q_pos = starts + torch.arange(w, device=q.device)  # (C, w)
    k_pos = starts - w + torch.arange(2 * w, device=q.device)  # (C, 2w)
    lag = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (lag >= 0) & (lag < w) & (k_pos[:, None, :] >= 0)  # (C, w, 2w)
    mask = mask[:, None, None].expand(C, b, 1, w, 2 * w).flatten(0, 1)
    y = TF.scaled_dot_product_attention(qb.flatten(0, 1), kb.flatten(0, 1), vb.flatten(0, 1), attn_mask=mask)
    y = y.unflatten(0, (C, b)).permute(1, 2, 0, 3, 4).flatten(2, 3)  # (b, h, C*w, e)
    return y[:, :, :n]
