"""Fused multi-head causal Toeplitz product with per-position bias, in Triton (GPU).

Computes, for ``x (batch, n, d_model)`` with ``d_model`` split into ``heads`` contiguous groups of
``e`` channels, head ``h(c) = c // e``::

    y[b, i, c] = sum_{j <= i} w[h(c), i - j] * x[b, j, c] + bias[h(c), i]

i.e. ``y_h = T_h x_h`` with the lower-triangular Toeplitz matrix ``T_h[i, j] = w[h, i - j]``.

Method (block-Toeplitz on tensor cores): a Toeplitz matrix cut into (BLOCK x BLOCK) tiles has only
``n / BLOCK`` distinct tiles, one per block offset; ``tile_bank`` builds them (O(n BLOCK) entries
per head, never the n x n matrix). The output is tiled into (BLOCK rows x BLOCK_C channels) of one
head; each program walks the column blocks j <= i, loads the bank's tile for offset ``i - j`` as a
contiguous operand and accumulates ``tile @ x[j-block]`` in float32 with ``tl.dot``. Only ``x`` and
``w`` are saved for backward, so activation memory is O(n d) like the input itself.

Backward:
- ``dx = T_h^T dy``: the same kernel walking the anti-causal direction.
- ``dw[h, k] = sum_{b, c in h, i} dy[b, i, c] x[b, i - k, c]``: the block products
  ``G[h, delta] = sum_{b, I} dy[b, I-block, h]  x[b, (I - delta)-block, h]^T`` (BLOCK x BLOCK each,
  one per block offset ``delta``) on tensor cores, then each G's diagonal sums are scattered into
  ``dw`` (``_diagonal_sums``; negative offsets, the non-causal part, are dropped).
- ``dbias[h, i] = sum_{b, c in h} dy[b, i, c]``.

Time is O(n^2 d / tensor-core rate): it beats the O(n log n) FFT path while the quadratic term is
cheap on tensor cores; ``mixers/ops/TOEPLITZ_KERNEL.md`` keeps each version's prediction and
measurement, and the crossover. Importing this module needs ``triton``; callers check
``available()`` first. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _toeplitz_apply_kernel(
    x_ptr, bank_ptr, bias_ptr, y_ptr,
    n, e,
    stride_xb, stride_xn, stride_yb, stride_yn, stride_bank_h, stride_bias_h,
    REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One (BLOCK x BLOCK_C) output tile. REVERSE=False: ``y = T x`` (+ bias); True: ``y = T^T x``.

    ``bank[h, delta]`` is the (BLOCK x BLOCK) tile of ``T_h`` (REVERSE: of ``T_h^T``) at block offset
    ``delta`` (``tile_bank``): every tile of a Toeplitz matrix is one of these, so each step loads a
    contiguous tile like a matmul operand instead of gathering from ``w``.
    """
    num_blocks = tl.cdiv(n, BLOCK)
    pid_m = tl.program_id(0)
    # The longest rows first (causal: the last blocks; anti-causal: the first), so the tail is short.
    m_block = pid_m if REVERSE else num_blocks - 1 - pid_m
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2)
    head = (pid_c * BLOCK_C) // e
    offs = tl.arange(0, BLOCK)
    offs_m = m_block * BLOCK + offs
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    x_base = x_ptr + pid_b * stride_xb
    tiles = bank_ptr + head * stride_bank_h + offs[:, None] * BLOCK + offs[None, :]
    row_ok = offs_m < n
    acc = tl.zeros((BLOCK, BLOCK_C), dtype=tl.float32)
    if REVERSE:
        lo = m_block
        hi = num_blocks
    else:
        lo = 0
        hi = m_block + 1
    for n_block in range(lo, hi):
        offs_n = n_block * BLOCK + offs
        if REVERSE:
            delta = n_block - m_block
        else:
            delta = m_block - n_block
        tile = tl.load(tiles + delta * BLOCK * BLOCK)
        xs = tl.load(x_base + offs_n[:, None] * stride_xn + offs_c[None, :], mask=(offs_n < n)[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(tile, xs, input_precision="ieee")
        else:
            acc += tl.dot(tile, xs)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + head * stride_bias_h + offs_m, mask=row_ok, other=0.0)[:, None]
    y_ptrs = y_ptr + pid_b * stride_yb + offs_m[:, None] * stride_yn + offs_c[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None])


def tile_bank(weight: torch.Tensor, n: int, block: int, dtype: torch.dtype) -> torch.Tensor:
    """``(heads, num_blocks, block, block)``: ``bank[h, delta][a, c] = w[h, delta*block + a - c]``, zero
    where that offset is negative or at least ``n``. O(n block) entries per head, built per call."""
    heads = weight.shape[0]
    num_blocks = triton.cdiv(n, block)
    padded = torch.nn.functional.pad(weight[:, :n].to(dtype), (block, num_blocks * block + block - n))
    ar = torch.arange(block, device=weight.device)
    index = (torch.arange(num_blocks, device=weight.device)[:, None, None] * block + ar[:, None] - ar[None, :] + block)
    return padded[:, index]  # offset k sits at padded[k + block]; zeros below 0 and from n on


@triton.jit
def _toeplitz_grad_kernel_blocks(
    dy_ptr, x_ptr, g_ptr,
    n, e, batch, pairs_per_split,
    stride_b, stride_n, stride_gs, stride_gh, stride_gd,
    IEEE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``G[split, h, delta] = sum over this split's (b, I) of dy[b, I-block, h] x[b, (I-delta)-block, h]^T``."""
    num_blocks = tl.cdiv(n, BLOCK)
    delta = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    rows = num_blocks - delta  # block rows I in [delta, num_blocks)
    total = batch * rows
    first = split * pairs_per_split
    last = tl.minimum(first + pairs_per_split, total)
    offs = tl.arange(0, BLOCK)
    offs_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for pair in range(first, last):
        b = pair // rows
        i_block = delta + pair % rows
        offs_i = i_block * BLOCK + offs
        offs_j = (i_block - delta) * BLOCK + offs
        i_ok = offs_i < n
        j_ok = offs_j < n
        for c0 in range(0, e, BLOCK_C):
            cols = head * e + c0 + offs_c
            dy = tl.load(dy_ptr + b * stride_b + offs_i[:, None] * stride_n + cols[None, :], mask=i_ok[:, None], other=0.0)
            xs = tl.load(x_ptr + b * stride_b + offs_j[:, None] * stride_n + cols[None, :], mask=j_ok[:, None], other=0.0)
            if IEEE:
                acc += tl.dot(dy.to(tl.float32), tl.trans(xs.to(tl.float32)), input_precision="ieee")
            else:
                acc += tl.dot(dy, tl.trans(xs))
    g = g_ptr + split * stride_gs + head * stride_gh + delta * stride_gd
    tl.store(g + offs[:, None] * BLOCK + offs[None, :], acc)


def _diagonal_sums(g: torch.Tensor, n: int) -> torch.Tensor:
    """``g (heads, num_blocks, B, B)`` with ``g[h, delta][a, c]`` the weight of offset ``delta*B + a - c``
    -> ``(heads, n)``: sums over all entries with the same offset ``k = i - j``; negative ones dropped."""
    heads, num_blocks, block, _ = g.shape
    # Skew: row a shifted right by a, after flipping columns, puts entry (a, c) at column a - c + B - 1.
    flipped = g.flip(-1)
    padded = torch.nn.functional.pad(flipped, (0, block))  # (h, nb, B, 2B)
    skew = padded.reshape(heads, num_blocks, 2 * block * block)[..., : block * (2 * block - 1)]
    sums = skew.reshape(heads, num_blocks, block, 2 * block - 1).sum(-2)  # (h, nb, 2B-1): offset t - B + 1
    sums = torch.nn.functional.pad(sums, (1, 0))  # (h, nb, 2B): u = offset - delta*B + B
    own = sums[..., block:]  # offsets delta*B + [0, B)
    spill = sums[..., :block]  # offsets (delta - 1)*B + [0, B): belongs to the previous block
    out = own.clone()
    out[:, :-1] += spill[:, 1:]
    return out.reshape(heads, num_blocks * block)[:, :n]


def _channel_block(e: int) -> int:
    for block in (64, 32, 16):
        if e % block == 0:
            return block
    raise ValueError(f"fused Toeplitz needs channels per head divisible by 16, got {e}")


def _apply(x: torch.Tensor, bank: torch.Tensor, bias: torch.Tensor | None, e: int, reverse: bool) -> torch.Tensor:
    batch, n, d = x.shape
    block, block_c = bank.shape[-1], _channel_block(e)
    y = torch.empty_like(x)
    grid = (triton.cdiv(n, block), d // block_c, batch)
    _toeplitz_apply_kernel[grid](
        x, bank, bank if bias is None else bias, y, n, e, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        bank.stride(0), 0 if bias is None else bias.stride(0),
        REVERSE=reverse, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, BLOCK=block, BLOCK_C=block_c,
    )
    return y


class _ToeplitzFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, heads, block):
        n, d = x.shape[1], x.shape[2]
        x = x.contiguous()
        bank = tile_bank(weight, n, block, x.dtype)
        y = _apply(x, bank, bias[:, :n].contiguous(), d // heads, reverse=False)
        ctx.save_for_backward(x, weight)
        ctx.heads, ctx.block = heads, block
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        heads, block = ctx.heads, ctx.block
        max_len = weight.shape[1]
        batch, n, d = x.shape
        e = d // heads
        dy = dy.contiguous()
        block_c = _channel_block(e)
        ieee = x.dtype == torch.float32
        bank_t = tile_bank(weight, n, block, x.dtype).transpose(-1, -2).contiguous()
        dx = _apply(dy, bank_t, None, e, reverse=True)
        num_blocks = triton.cdiv(n, block)
        # Enough programs to fill the GPU (~1024) without a large scratch: split the (b, I) pairs.
        splits = max(1, min(batch * num_blocks, triton.cdiv(1024, heads * num_blocks)))
        pairs_per_split = triton.cdiv(batch * num_blocks, splits)
        g = torch.zeros(splits, heads, num_blocks, block, block, device=x.device, dtype=torch.float32)
        _toeplitz_grad_kernel_blocks[(num_blocks, heads, splits)](
            dy, x, g, n, e, batch, pairs_per_split,
            x.stride(0), x.stride(1), g.stride(0), g.stride(1), g.stride(2),
            IEEE=ieee, BLOCK=block, BLOCK_C=block_c,
        )
        dw_n = _diagonal_sums(g.sum(0), n)
        dweight = torch.zeros(heads, max_len, device=x.device, dtype=torch.float32)
        dweight[:, :n] = dw_n
        dbias = torch.zeros_like(dweight)
        dbias[:, :n] = dy.reshape(batch, n, heads, e).sum(dim=(0, 3), dtype=torch.float32).transpose(0, 1)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None, None


def toeplitz_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int, block: int = 64) -> torch.Tensor:
    """``x (batch, n, d_model)``, ``weight, bias (heads, >= n)`` -> ``(batch, n, d_model)``.

    Head ``h`` covers channels ``[h e, (h + 1) e)`` with ``e = d_model / heads`` (divisible by 16).
    """
    if x.dim() != 3 or x.shape[-1] % heads:
        raise ValueError(f"toeplitz_fused: x must be (batch, n, d) with d divisible by heads={heads}")
    if weight.shape[0] != heads or weight.shape[1] < x.shape[1]:
        raise ValueError(f"toeplitz_fused: weight {tuple(weight.shape)} does not cover {heads} heads x n={x.shape[1]}")
    if block not in (16, 32, 64, 128):
        raise ValueError(f"toeplitz_fused: block must be 16, 32, 64 or 128, got {block}")
    return _ToeplitzFused.apply(x, weight, bias, heads, block)
