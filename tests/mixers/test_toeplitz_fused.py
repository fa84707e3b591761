"""The fused Triton Toeplitz kernel against the dense masked-matrix reference, values and gradients.

Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter; fp32 only,
small shapes). Skipped where Triton is absent (the CPU install does not pull it).
"""
from __future__ import annotations

import os

import pytest
import torch
from einops import rearrange

pytest.importorskip("triton")
if torch.cuda.is_available():
    DEVICE = "cuda"
elif os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
else:
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 to run the kernels on CPU", allow_module_level=True)

from mixers.ops.toeplitz import causal_toeplitz_dense  # noqa: E402
from mixers.ops.toeplitz_triton import toeplitz_fused  # noqa: E402

INTERPRETED = DEVICE == "cpu"
# (batch, n, d_model, heads, max_len): length 1, non-powers of two, n not a multiple of a tile,
# kernels longer than n, one to eight heads, 16 to 128 channels per head.
SHAPES = [(2, 1, 32, 2, 5), (1, 70, 64, 4, 80), (2, 130, 32, 1, 130), (3, 64, 16, 1, 64), (1, 200, 128, 2, 256)]
if not INTERPRETED:
    SHAPES += [(4, 1000, 256, 4, 1024), (2, 1537, 512, 4, 2048), (1, 4096, 512, 8, 4096), (8, 333, 1024, 8, 333)]


def reference(x, weight, bias, heads):
    """Per head ``T_h x_h + bias_h`` with the dense masked matrix, in float64."""
    n = x.shape[1]
    u = rearrange(x.double(), "b n (h e) -> b h e n", h=heads)
    y = causal_toeplitz_dense(u, weight.double()[:, None, :n]) + bias.double()[:, None, :n]
    return rearrange(y, "b h e n -> b n (h e)")


@pytest.mark.parametrize("rows", [16, 32, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_tile_bank_operands_are_the_matrix_tiles(rows, reverse):
    """The (rows x 16) operand the kernel loads for row block I, column block J (``R`` consecutive
    bank tiles from ``origin + R I - J``) equals that tile of T (reverse: of T^T), zeros included."""
    from mixers.ops.toeplitz import toeplitz_matrix
    from mixers.ops.toeplitz_triton import tile_bank

    n, block = 40, 16  # the last row and column blocks are partial
    w = torch.randn(2, 50, device=DEVICE)
    bank, origin = tile_bank(w, n, block, torch.float32, rows, reverse=reverse)
    dense = toeplitz_matrix(w[:, :n], n)
    dense = dense.transpose(-1, -2) if reverse else dense
    r = rows // block
    for i in range(-(-n // rows)):
        for j in range(-(-n // block)):
            if (j * block > i * rows + rows - 1) if not reverse else (j * block + block - 1 < i * rows):
                continue  # the kernel never visits blocks wholly above (reverse: below) the diagonal
            start = origin + r * i - j
            operand = bank[:, start : start + r].reshape(2, rows, block)
            expect = dense[:, i * rows : i * rows + rows, j * block : j * block + block]
            assert torch.equal(operand[:, : expect.shape[1], : expect.shape[2]], expect)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


DTYPES = [(torch.float32, 1e-5)] + ([] if INTERPRETED else [(torch.bfloat16, 1e-2)])


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_equals_dense_reference_with_gradients(shape, dtype, tol):
    batch, n, d, heads, max_len = shape
    gen = torch.Generator(device=DEVICE).manual_seed(hash(shape) % 2**31)
    x = torch.randn(batch, n, d, device=DEVICE, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(heads, max_len, device=DEVICE, generator=gen) / max_len**0.5).requires_grad_()
    bias = torch.randn(heads, max_len, device=DEVICE, generator=gen).requires_grad_()
    dy = torch.randn(batch, n, d, device=DEVICE, generator=gen).to(dtype)
    y = toeplitz_fused(x, weight, bias, heads)
    assert y.dtype == dtype and y.shape == x.shape
    gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref = reference(x64, w64, b64, heads)
    rx, rw, rb = torch.autograd.grad(ref, (x64, w64, b64), dy.double())
    assert relative(y, ref) <= tol
    assert relative(gx, rx) <= tol
    assert relative(gw, rw) <= tol
    assert relative(gb, rb) <= tol
    assert gw[:, n:].abs().max().item() == 0 if max_len > n else True  # unused kernel entries get no gradient


@pytest.mark.parametrize("block,rows,dw_block", [(16, 16, 16), (32, 32, 32), (64, 64, 64), (128, 128, 128),
                                                (16, 64, 128), (32, 128, 16), (64, 128, 128)])
def test_tile_sizes_give_the_same_product(block, rows, dw_block):
    gen = torch.Generator(device=DEVICE).manual_seed(block + rows)
    x = torch.randn(2, 97, 64, device=DEVICE, generator=gen).requires_grad_()
    weight = torch.randn(2, 97, device=DEVICE, generator=gen).requires_grad_()
    bias = torch.randn(2, 97, device=DEVICE, generator=gen).requires_grad_()
    y = toeplitz_fused(x, weight, bias, 2, block=block, rows=rows, dw_block=dw_block)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, weight))
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = reference(x64, w64, bias.detach(), 2)
    rx, rw = torch.autograd.grad(ref.square().sum(), (x64, w64))
    assert relative(y, ref) <= 1e-5 and relative(gx, rx) <= 1e-5 and relative(gw, rw) <= 1e-5


@pytest.mark.skipif(INTERPRETED, reason="the mixer's fused path needs CUDA")
def test_tmm_mixer_fused_path_equals_fft_path():
    import mixers

    torch.manual_seed(0)
    fused = mixers.build("tmm", 128, 512, impl="fused").cuda()
    fft = mixers.build("tmm", 128, 512, impl="fft").cuda()
    fft.load_state_dict(fused.state_dict())
    assert fused.backend == "triton-fused" and fft.backend == "torch-fft"
    x = torch.randn(3, 300, 128, device="cuda")
    assert relative(fused(x), fft(x)) <= 1e-5
    auto = mixers.build("tmm", 128, 512, impl="auto", fused_max_len=256).cuda()
    assert auto.backend_at(256) == "triton-fused" and auto.backend_at(257) == "torch-fft"
