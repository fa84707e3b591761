"""GPU paths against their references; skipped where CUDA is absent."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.mamba import kernels_available
from mixers.ops.toeplitz import causal_toeplitz_dense, causal_toeplitz_fft

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = [pytest.mark.gpu, cuda]


@pytest.mark.parametrize("n", [1, 7, 64, 1000, 4096])
def test_fft_toeplitz_bf16_on_gpu(n):
    gen = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(2, 4, 8, n, device="cuda", generator=gen)
    k = torch.randn(4, 1, n, device="cuda", generator=gen) / n**0.5
    ref = causal_toeplitz_dense(x.double(), k.double())
    fast = causal_toeplitz_fft(x.bfloat16(), k.bfloat16()).double()
    assert float((fast - ref).norm() / ref.norm()) <= 1e-2


@pytest.mark.parametrize("n", [1, 300, 4096])
@pytest.mark.parametrize("slice_samples", [1 << 25, 1 << 14])  # one slice of channels, or several
def test_lean_fft_toeplitz_on_gpu(monkeypatch, n, slice_samples):
    """tnn's and hyena's product on a transposed bf16 input (as they call it): values and gradients."""
    from mixers.ops import toeplitz
    monkeypatch.setattr(toeplitz, "LEAN_FFT_SLICE_SAMPLES", slice_samples)
    gen = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(2, n, 48, device="cuda", generator=gen).bfloat16().transpose(1, 2).requires_grad_()
    k = (torch.randn(48, n, device="cuda", generator=gen) / n**0.5).requires_grad_()
    w = torch.randn(2, 48, n, device="cuda", generator=gen)
    x64, k64 = x.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    ref = causal_toeplitz_dense(x64, k64)
    lean = toeplitz.causal_toeplitz_fft_lean(x, k)
    assert lean.dtype == torch.bfloat16 and float((lean.double() - ref).norm() / ref.norm()) <= 1e-2
    for a, b in zip(torch.autograd.grad((lean.float() * w).sum(), [x, k]),
                    torch.autograd.grad((ref * w.double()).sum(), [x64, k64])):
        assert float((a.double() - b).norm() / b.norm()) <= 1e-2


@pytest.mark.skipif(not kernels_available(), reason="needs mamba_ssm")
@pytest.mark.parametrize("length", [37, 700])
def test_mamba_ssm_kernels_equal_torch_path(length):
    torch.manual_seed(0)
    fused = mixers.build("mamba", 128, 1024, impl="kernels").cuda()
    ours = mixers.build("mamba", 128, 1024, impl="torch").cuda()
    ours.inner.load_state_dict(fused.inner.state_dict())  # identical parameter names
    x = torch.randn(2, length, 128, device="cuda")
    with torch.no_grad():
        a, b = fused(x), ours(x)
    assert float((a - b).norm() / b.norm()) < 2e-3  # Triton kernels use TF32 products


@pytest.mark.parametrize("name", ["tmm", "tmm_flat", "attention", "mamba", "hyena", "mamba1", "mamba2", "tnn", "gltm",
                                  "linear_attention", "gla", "based", "sliding_window_attention"])
def test_every_mixer_runs_forward_backward_in_bf16(name):
    mixer = mixers.build(name, 128, 512).cuda()
    x = torch.randn(2, 300, 128, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = mixer(x)
    y.float().sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not kernels_available(), reason="needs mamba_ssm")
def test_mamba_ssm_decode_equals_forward():
    torch.manual_seed(0)
    # d_model 256: causal_conv1d's channel-last prefill needs the in-projection width (2 d_inner + 2 d_state
    # + heads) to be a multiple of 8, which d_model 128 (4 heads of 64) is not.
    mixer = mixers.build("mamba", 256, 64, impl="kernels").cuda().eval()
    x = torch.randn(2, 40, 256, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :25])
        outs = [y]
        for t in range(25, 40):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t[:, None])
    stepped = torch.cat(outs, dim=1)
    assert float((stepped - full).norm() / full.norm()) < 2e-3


@pytest.mark.skipif(not kernels_available(), reason="needs mamba_ssm")
@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_mamba_kernels_run_on_cuda_and_the_torch_path_on_cpu_from_one_module(name):
    """impl=auto builds mamba_ssm's module; the path follows the device, and its initial weights are
    the torch path's (the same seed gives the same model with or without mamba_ssm)."""
    torch.manual_seed(0)
    mixer = mixers.build(name, 128, 256)
    torch.manual_seed(0)
    reference = mixers.build(name, 128, 256, impl="torch")
    for (key, a), (_, b) in zip(mixer.inner.state_dict().items(), reference.inner.state_dict().items()):
        assert torch.equal(a, b), key
    assert mixer.backend == reference.backend  # parameters on the CPU: the torch path
    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        on_cpu = mixer(x)
        assert torch.equal(on_cpu, reference(x))
        mixer.cuda()
        assert mixer.backend.startswith("mamba_ssm")
        on_gpu = mixer(x.cuda()).cpu()
    assert float((on_gpu - on_cpu).norm() / on_cpu.norm()) < 2e-3  # Triton kernels use TF32 products


def test_bf16_training_on_cpu_is_refused_on_a_gpu_machine():
    from harness.run.config import ConfigError, load, validate

    with pytest.raises(ConfigError, match="train.precision: bf16 runs as CUDA autocast"):
        validate(load(["device=cpu", "train=gpu"]))
