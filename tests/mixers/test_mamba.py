"""Mamba2 in PyTorch (chunked SSD) and Mamba in PyTorch (chunked selective scan) against their
sequential recurrences and transformers' Mamba2Mixer / MambaMixer."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.mamba import transformers_mamba_uses_kernels
from mixers.ops.selective_scan import selective_scan_chunked, selective_scan_sequential
from mixers.ops.ssd import ssd_chunked, ssd_sequential


@pytest.mark.parametrize("batch,length,heads,p,groups,n,chunk", [
    (2, 1, 2, 3, 1, 4, 4), (2, 7, 2, 3, 1, 4, 4), (2, 64, 4, 8, 2, 16, 16), (1, 100, 2, 4, 1, 8, 32),
    (3, 33, 4, 2, 4, 5, 8), (1, 17, 6, 4, 3, 2, 64),
])
def test_chunked_scan_equals_sequential(batch, length, heads, p, groups, n, chunk):
    gen = torch.Generator().manual_seed(length * 31 + heads)
    kw = {"generator": gen, "dtype": torch.float64}
    x = torch.randn(batch, length, heads, p, **kw)
    dt = torch.rand(batch, length, heads, **kw) * 0.5
    A = -torch.rand(heads, **kw) * 4
    B, C = torch.randn(batch, length, groups, n, **kw), torch.randn(batch, length, groups, n, **kw)
    ref, fast = ssd_sequential(x, dt, A, B, C), ssd_chunked(x, dt, A, B, C, chunk)
    assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max()


REFERENCE_UNREACHABLE = pytest.mark.skipif(
    transformers_mamba_uses_kernels(), reason="transformers' Mamba reference paths are unreachable where "
    "causal_conv1d / mamba_ssm are installed (test_gpu compares the ports with mamba_ssm there)")


@REFERENCE_UNREACHABLE
@pytest.mark.parametrize("length,chunk", [(1, 8), (21, 8), (40, 64)])
def test_torch_mamba2_equals_transformers_mamba2(length, chunk):
    torch.manual_seed(0)
    ours = mixers.build("mamba", 32, 64, impl="torch", d_state=16, headdim=16, ngroups=2, chunk_size=chunk)
    theirs = mixers.build("mamba", 32, 64, impl="transformers", d_state=16, headdim=16, ngroups=2, chunk_size=chunk)
    theirs.inner.load_state_dict(ours.inner.state_dict())  # identical parameter names
    x = torch.randn(2, length, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


def test_backends_share_hyperparameters_and_parameter_count():
    a = mixers.build("mamba", 32, 64, impl="torch", d_state=16, headdim=16)
    b = mixers.build("mamba", 32, 64, impl="transformers", d_state=16, headdim=16)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    reference = "compiled-kernels" if transformers_mamba_uses_kernels() else "torch-reference"
    assert a.backend == "torch-ssd-chunked" and b.backend == f"transformers-{reference}"


@pytest.mark.parametrize("batch,length,d,n,chunk", [
    (2, 1, 3, 4, None), (2, 7, 3, 4, None), (1, 64, 8, 16, None), (2, 100, 4, 8, 7), (3, 33, 5, 2, 64), (1, 17, 6, 4, 1),
])
def test_chunked_selective_scan_equals_sequential(batch, length, d, n, chunk):
    gen = torch.Generator().manual_seed(length * 31 + d)
    kw = {"generator": gen, "dtype": torch.float64}
    x, dt = torch.randn(batch, length, d, **kw), torch.rand(batch, length, d, **kw)
    A = -torch.rand(d, n, **kw) * 16
    B, C = torch.randn(batch, length, n, **kw), torch.randn(batch, length, n, **kw)
    (ref, ref_state), (fast, state) = selective_scan_sequential(x, dt, A, B, C), selective_scan_chunked(x, dt, A, B, C, chunk)
    assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max()
    assert (state - ref_state).abs().max() <= 1e-10 * ref_state.abs().max()


def test_chunked_selective_scan_gradients_equal_sequential():
    gen = torch.Generator().manual_seed(0)
    kw = {"generator": gen, "dtype": torch.float64}
    x, dt = torch.randn(2, 30, 4, **kw).requires_grad_(), torch.rand(2, 30, 4, **kw).requires_grad_()
    A = (-torch.rand(4, 3, **kw) * 4).requires_grad_()
    B, C = torch.randn(2, 30, 3, **kw).requires_grad_(), torch.randn(2, 30, 3, **kw).requires_grad_()
    w = torch.randn(2, 30, 4, dtype=torch.float64)
    grads = [torch.autograd.grad((fn(x, dt, A, B, C)[0] * w).sum(), (x, dt, A, B, C))
             for fn in (selective_scan_sequential, lambda *a: selective_scan_chunked(*a, chunk_size=4))]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


@REFERENCE_UNREACHABLE
@pytest.mark.parametrize("length,chunk", [(1, 256), (21, 5), (40, 256)])
def test_torch_mamba1_equals_transformers_mamba(length, chunk):
    torch.manual_seed(0)
    ours = mixers.build("mamba1", 32, 64, impl="torch", d_state=8, chunk_size=chunk)
    theirs = mixers.build("mamba1", 32, 64, impl="transformers", d_state=8)
    theirs.inner.load_state_dict(ours.inner.state_dict())  # identical parameter names (mamba_ssm's Mamba too)
    x = torch.randn(2, length, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


def test_mamba1_and_mamba2_are_mamba_with_the_version_fixed():
    torch.manual_seed(0)
    one = mixers.build("mamba1", 32, 64, impl="torch")
    assert one.version == 1 and one.d_state == 16 and one.backend == "torch-selective-scan-chunked"
    two = mixers.build("mamba2", 32, 64, impl="torch", headdim=16)
    assert two.version == 2 and two.backend == "torch-ssd-chunked"
    same = mixers.build("mamba", 32, 64, version=1, d_state=16, impl="torch")
    same.load_state_dict(one.state_dict())
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        assert torch.equal(one(x), same(x))
    assert "version" not in mixers.options_of("mamba1") and "version" not in mixers.options_of("mamba2")


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_transformers_mamba_with_compiled_kernels_refuses_cpu_inputs_clearly(monkeypatch, name):
    import mixers.mamba

    monkeypatch.setattr(mixers.mamba, "transformers_mamba_uses_kernels", lambda: True)
    mixer = mixers.build(name, 32, 64, impl="transformers", d_state=8, **({"headdim": 16} if name == "mamba2" else {}))
    assert mixer.backend == "transformers-compiled-kernels"
    with pytest.raises(RuntimeError, match="need CUDA inputs; use impl=torch on CPU"):
        mixer(torch.randn(1, 4, 32))


@pytest.mark.parametrize("name, options", [("mamba1", {"d_state": 4, "chunk_size": 5}),
                                           ("mamba2", {"d_state": 8, "headdim": 8, "chunk_size": 8})])
def test_cpu_inputs_take_the_torch_path_when_kernels_are_installed(mamba_kernels_installed, name, options):
    torch.manual_seed(0)
    mixer = mixers.build(name, 16, 32, **options)  # impl=auto: mamba_ssm's module
    after_kernels = torch.randn(3)
    torch.manual_seed(0)
    reference = mixers.build(name, 16, 32, impl="torch", **options)
    assert torch.equal(torch.randn(3), after_kernels)  # the same draws whatever the backend
    assert mixer._backend.startswith("mamba_ssm")
    assert mixer.backend == reference.backend == mixer.backend_on("cpu")  # the torch path on CPU parameters
    assert mixer.backend_on("cuda") == mixer._backend
    for (k, a), (_, b) in zip(mixer.inner.state_dict().items(), reference.inner.state_dict().items()):
        assert torch.equal(a, b), k  # the same initial weights
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        assert torch.equal(mixer(x), reference(x))
        y, state = mixer.prefill(x[:, :7])
        steps = [y]
        for t in range(7, 11):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t[:, None])
        assert torch.allclose(torch.cat(steps, 1), reference(x), atol=1e-5)
    assert mixer.flops(32) == reference.flops(32)
    assert mixer.no_weight_decay() == reference.no_weight_decay()


def test_a_cpu_configured_run_on_a_kernel_machine_builds_and_runs_the_torch_path(mamba_kernels_installed):
    from harness.run.config import check_forward, load, make_model, validate

    cfg = load(["mixer=mamba2", "mixer.d_state=8", "mixer.headdim=16", "mixer.chunk_size=8", "train=test", "device=cpu"])
    task, _ = validate(cfg)
    model = make_model(cfg["model"], cfg["mixer"], task)
    check_forward(model, task, torch.device("cpu"), cfg["mixer"])
    assert model.backend == "torch-ssd-chunked"
    logits = model(task.train_batch(2, torch.Generator().manual_seed(0)).inputs)
    logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
