"""Fused multi-head causal Toeplitz product with per-position bias, in Triton (GPU).

Computes, for ``x (batch, n, d_model)`` with ``d_model`` split into ``heads`` contiguous groups of
``e`` channels, head ``h(c) = c // e``::

    y[b, i, c] = sum_{j <= i} w[h(c), i - j] * x[b, j, c] + bias[h(c), i]

i.e. ``y_h = T_h x_h`` with the lower-triangular Toeplitz matrix ``T_h[i, j] = w[h, i - j]``.

Method (block-Toeplitz on tensor cores): a Toeplitz matrix cut into (BLOCK x BLOCK) tiles has only
``n / BLOCK`` distinct tiles, one per block offset; ``tile_bank`` builds them (O(n BLOCK) entries
per head, never the n x n matrix), in an order where the (ROWS x BLOCK) operand of any output row
block is ROWS / BLOCK consecutive tiles. The output is tiled into (ROWS x BLOCK_C channels) of one
head; each program walks the column blocks left of (causal) or right of (anti-causal) its rows,
loads the bank's operand contiguously and accumulates ``tile @ x[j-block]`` in float32 with
``tl.dot``: a matmul whose A operand is read from a bank of O(n) tiles. Only ``x`` and ``w`` are
saved for backward, so activation memory is O(n d) like the input itself.

Backward:
- ``dx = T_h^T dy``: the same kernel walking the anti-causal direction.
- ``dw[h, k] = sum_{b, c in h, i} dy[b, i, c] x[b, i - k, c]``: the block products
  ``G[h, delta] = sum_{b, I} dy[b, I-block, h]  x[b, (I - delta)-block, h]^T`` (DW_BLOCK x DW_BLOCK
  each, one per block offset ``delta``; its own block size, 128 by default) on tensor cores, then each G's diagonal sums are scattered into
  ``dw`` (``_diagonal_sums``; negative offsets, the non-causal part, are dropped).
- ``dbias[h, i] = sum_{b, c in h} dy[b, i, c]``.

Time is O(n^2 d / tensor-core rate): it beats the O(n log n) FFT path while the quadratic term is
cheap on tensor cores; ``mixers/ops/TOEPLITZ_KERNEL.md`` keeps each version's prediction and
measurement, and the crossover. Importing this module needs ``triton``; callers check
``mixers.tmm.triton_available()`` first. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _toeplitz_apply_kernel(
    x_ptr, bank_ptr, bias_ptr, y_ptr,
    n, e, bank_origin,
    stride_xb, stride_xn, stride_yb, stride_yn, stride_bank_h, stride_bias_h,
    REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One (BLOCK_M x BLOCK_C) output tile. REVERSE=False: ``y = T x`` (+ bias); True: ``y = T^T x``.

    The (BLOCK_M x BLOCK_K) tile of ``T`` at row block I, column block J is ``R = BLOCK_M / BLOCK_K``
    consecutive (BLOCK_K x BLOCK_K) tiles of the bank (``tile_bank``), starting at
    ``bank_origin + R I - J``: one contiguous operand, loaded like a matmul's K tile, no gather.
    """
    R = BLOCK_M // BLOCK_K
    num_m = tl.cdiv(n, BLOCK_M)
    num_k = tl.cdiv(n, BLOCK_K)
    pid_m = tl.program_id(0)
    # The longest rows first (causal: the last blocks; anti-causal: the first), so the tail is short.
    m_block = pid_m if REVERSE else num_m - 1 - pid_m
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2)
    head = (pid_c * BLOCK_C) // e
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    x_base = x_ptr + pid_b * stride_xb
    tiles = bank_ptr + head * stride_bank_h + tl.arange(0, BLOCK_M)[:, None] * BLOCK_K + offs_k[None, :]
    row_ok = offs_m < n
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    if REVERSE:  # columns j >= i
        lo = m_block * R
        hi = num_k
    else:  # columns j <= i
        lo = 0
        hi = tl.minimum(num_k, m_block * R + R)
    for k_block in range(lo, hi):
        tile = tl.load(tiles + (bank_origin + m_block * R - k_block) * BLOCK_K * BLOCK_K)
        offs_n = k_block * BLOCK_K + offs_k
        xs = tl.load(x_base + offs_n[:, None] * stride_xn + offs_c[None, :], mask=(offs_n < n)[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(tile, xs, input_precision="ieee")
        else:
            acc += tl.dot(tile, xs)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + head * stride_bias_h + offs_m, mask=row_ok, other=0.0)[:, None]
    y_ptrs = y_ptr + pid_b * stride_yb + offs_m[:, None] * stride_yn + offs_c[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _tile_bank_kernel(w_ptr, bank_ptr, n, origin, stride_wh, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """``bank[h, q]``: the tile of ``T_h`` at block offset ``d = q - origin`` (REVERSE: the tile of
    ``T_h^T`` at ``d = origin - q``), zero where the offset is negative or at least ``n``."""
    q = tl.program_id(0)
    head = tl.program_id(1)
    a = tl.arange(0, BLOCK)[:, None]
    c = tl.arange(0, BLOCK)[None, :]
    if REVERSE:
        offsets = (origin - q) * BLOCK + c - a
    else:
        offsets = (q - origin) * BLOCK + a - c
    values = tl.load(w_ptr + head * stride_wh + offsets, mask=(offsets >= 0) & (offsets < n), other=0.0)
    tiles = tl.num_programs(0)
    tl.store(bank_ptr + ((head * tiles + q) * BLOCK + a) * BLOCK + c, values.to(bank_ptr.dtype.element_ty))


def tile_bank(
    weight: torch.Tensor, n: int, block: int, dtype: torch.dtype, rows: int | None = None, reverse: bool = False
) -> tuple[torch.Tensor, int]:
    """The distinct (block x block) tiles of ``T_h[i, j] = w[h, i - j]`` (zero where ``i - j < 0`` or
    ``>= n``), for output tiles of ``rows`` (a multiple of ``block``; default ``block``) rows.

    Returns ``(bank, origin)``, ``bank (heads, tiles, block, block)``. Forward: ``bank[h, origin + d]``
    is the tile at block offset ``d`` (``[a, c] = w[h, d block + a - c]``) for ``d`` from
    ``-(R - 1)`` to ``R ceil(n / rows) - 1``, ``R = rows / block``. ``reverse``: the tiles of ``T_h^T``,
    ``bank[h, origin - d] = tile_d^T``, in the opposite order. Either way the kernel's
    (rows x block) operand at row block I, column block J starts at ``bank[h, origin + R I - J]``.
    O(n rows) entries per head, never the (n x n) matrix; one kernel launch.
    """
    rows = rows or block
    if rows % block:
        raise ValueError(f"tile_bank: rows={rows} must be a multiple of block={block}")
    r = rows // block
    last = r * triton.cdiv(n, rows) - 1
    tiles = last + r  # block offsets -(r - 1) .. last
    heads = weight.shape[0]
    bank = torch.empty(heads, tiles, block, block, device=weight.device, dtype=dtype)
    origin = last if reverse else r - 1
    weight = weight.contiguous()  # the kernel reads w[h, k] at h stride(0) + k
    _tile_bank_kernel[(tiles, heads)](weight, bank, n, origin, weight.stride(0), REVERSE=reverse, BLOCK=block)
    return bank, origin


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


def launch_config(e: int, rows: int, dtype: torch.dtype, **override) -> dict:
    """Meta-parameters of ``_toeplitz_apply_kernel`` for ``e`` channels per head and ``rows``-row output
    tiles: the widest channel tile that divides ``e`` (at most 128; 64 in float32, whose tiles take
    twice the shared memory), 8 warps for 128 x 128 tiles, 3 pipeline stages. ``override`` replaces
    any of ``BLOCK_C``, ``num_warps``, ``num_stages`` (``harness.bench.toeplitz_bench`` tunes them)."""
    widest = 64 if dtype == torch.float32 else 128
    block_c = next((b for b in (128, 64, 32, 16) if b <= widest and e % b == 0), None)
    if block_c is None:
        raise ValueError(f"fused Toeplitz needs channels per head divisible by 16, got {e}")
    config = {"BLOCK_C": block_c, "num_warps": 8 if rows * block_c >= 128 * 128 else 4,
              "num_stages": 2 if dtype == torch.float32 else 3}
    config.update(override)
    if e % config["BLOCK_C"]:
        raise ValueError(f"fused Toeplitz: BLOCK_C={config['BLOCK_C']} does not divide {e} channels per head")
    return config


def _apply(x: torch.Tensor, bank: torch.Tensor, origin: int, bias: torch.Tensor | None, e: int, rows: int,
           reverse: bool, **override) -> torch.Tensor:
    batch, n, d = x.shape
    config = launch_config(e, rows, x.dtype, **override)
    y = torch.empty_like(x)
    grid = (triton.cdiv(n, rows), d // config["BLOCK_C"], batch)
    _toeplitz_apply_kernel[grid](
        x, bank, bank if bias is None else bias, y, n, e, origin, x.stride(0), x.stride(1), y.stride(0),
        y.stride(1), bank.stride(0), 0 if bias is None else bias.stride(0),
        REVERSE=reverse, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, BLOCK_M=rows,
        BLOCK_K=bank.shape[-1], **config,
    )
    return y


def toeplitz_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: int, block: int,
                     rows: int, **override) -> torch.Tensor:
    """The forward product alone, no autograd: ``x (batch, n, d)`` contiguous -> ``(batch, n, d)``."""
    n, d = x.shape[1], x.shape[2]
    bias = None if bias is None else bias.contiguous()
    bank, origin = tile_bank(weight, n, block, x.dtype, rows)
    return _apply(x, bank, origin, bias, d // heads, rows, reverse=False, **override)


class _ToeplitzFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, heads, block, rows, dw_block):
        x = x.contiguous()
        y = toeplitz_forward(x, weight, bias, heads, block, rows)
        ctx.save_for_backward(x, weight)
        ctx.heads, ctx.block, ctx.rows, ctx.dw_block = heads, block, rows, dw_block
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        heads, block, rows, dw_block = ctx.heads, ctx.block, ctx.rows, ctx.dw_block
        max_len = weight.shape[1]
        batch, n, d = x.shape
        e = d // heads
        dy = dy.contiguous()
        ieee = x.dtype == torch.float32
        bank_t, origin = tile_bank(weight, n, block, x.dtype, rows, reverse=True)
        dx = _apply(dy, bank_t, origin, None, e, rows, reverse=True)
        num_blocks = triton.cdiv(n, dw_block)
        block_c = min(launch_config(e, dw_block, x.dtype)["BLOCK_C"], 64)
        # Enough programs to fill the GPU (~1024) without a large scratch: split the (b, I) pairs.
        splits = max(1, min(batch * num_blocks, triton.cdiv(1024, heads * num_blocks)))
        pairs_per_split = triton.cdiv(batch * num_blocks, splits)
        g = torch.zeros(splits, heads, num_blocks, dw_block, dw_block, device=x.device, dtype=torch.float32)
        _toeplitz_grad_kernel_blocks[(num_blocks, heads, splits)](
            dy, x, g, n, e, batch, pairs_per_split,
            x.stride(0), x.stride(1), g.stride(0), g.stride(1), g.stride(2),
            IEEE=ieee, BLOCK=dw_block, BLOCK_C=block_c,
            num_warps=8 if dw_block >= 128 else 4, num_stages=2 if ieee else 3,
        )
        dw_n = _diagonal_sums(g.sum(0), n)
        dweight = torch.zeros(heads, max_len, device=x.device, dtype=torch.float32)
        dweight[:, :n] = dw_n
        dbias = torch.zeros_like(dweight)
        dbias[:, :n] = dy.reshape(batch, n, heads, e).sum(dim=(0, 3), dtype=torch.float32).transpose(0, 1)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None, None, None, None


def toeplitz_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int, block: int = 64,
                   rows: int | None = None, dw_block: int = 128) -> torch.Tensor:
    """``x (batch, n, d_model)``, ``weight, bias (heads, >= n)`` -> ``(batch, n, d_model)``.

    Head ``h`` covers channels ``[h e, (h + 1) e)`` with ``e = d_model / heads`` (divisible by 16).
    ``block``: the bank's tile size (the product's K tile); ``rows``: rows per output tile of the
    forward and dx kernels, a multiple of ``block`` (default 128 or ``block``); ``dw_block``: the
    (dw_block x dw_block) block products of the kernel gradient.
    """
    rows = rows or max(block, 128)
    if x.dim() != 3 or x.shape[-1] % heads:
        raise ValueError(f"toeplitz_fused: x must be (batch, n, d) with d divisible by heads={heads}")
    if weight.shape[0] != heads or weight.shape[1] < x.shape[1]:
        raise ValueError(f"toeplitz_fused: weight {tuple(weight.shape)} does not cover {heads} heads x n={x.shape[1]}")
    if block not in (16, 32, 64, 128):
        raise ValueError(f"toeplitz_fused: block must be 16, 32, 64 or 128, got {block}")
    if rows % block or rows > 256:
        raise ValueError(f"toeplitz_fused: rows must be a multiple of block={block} up to 256, got {rows}")
    if dw_block not in (16, 32, 64, 128):
        raise ValueError(f"toeplitz_fused: dw_block must be 16, 32, 64 or 128, got {dw_block}")
    return _ToeplitzFused.apply(x, weight, bias, heads, block, rows, dw_block)
