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


def test_tile_bank_holds_every_tile_of_the_matrix():
    from mixers.ops.toeplitz import toeplitz_matrix
    from mixers.ops.toeplitz_triton import tile_bank

    w = torch.randn(2, 50)
    bank = tile_bank(w, 40, 16, torch.float32)  # 3 blocks, the last one partial
    dense = toeplitz_matrix(w[:, :40], 40)
    for i in range(3):
        for j in range(i + 1):
            block = dense[:, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16]  # cut short at row and column 40
            assert torch.equal(bank[:, i - j, : block.shape[1], : block.shape[2]], block)


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


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_tile_sizes_give_the_same_product(block):
    gen = torch.Generator(device=DEVICE).manual_seed(block)
    x = torch.randn(2, 97, 64, device=DEVICE, generator=gen).requires_grad_()
    weight = torch.randn(2, 97, device=DEVICE, generator=gen).requires_grad_()
    bias = torch.randn(2, 97, device=DEVICE, generator=gen).requires_grad_()
    y = toeplitz_fused(x, weight, bias, 2, block=block)
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
