"""HGRN2 (mixers/hgrn2.py): the chunked path equals the recurrence (values and gradients), the layer equals
the paper's recurrence token by token, heads follow fla's rule, decoding holds exactly the state it
counts, and the fla path (CPU: on chunk_gla's documented maths; GPU: the real kernel) equals the PyTorch path.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as TF

import mixers
from mixers.ops import fla_kernels


def randomised(mixer, gen, scale=0.3):
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mixer


def paper_layer(m, x):
    """Qin et al. 2024, eq. (HGRN2 with state expansion), one sequence ``x (n, d)``, token by token:
    ``f_t = gamma + (1 - gamma) sigmoid(x W_f)``, ``h_t = diag(f_t) h_{t-1} + (1 - f_t)^T i_t`` per head,
    ``o_t = swish(x W_q) h_t / sqrt(E)``, then RMSNorm and the output projection."""
    n, d = x.shape
    H, E, dv = m.heads, m.expand_ratio, m.dv
    h = torch.zeros(H, E, dv, dtype=x.dtype)
    out = []
    for t in range(n):
        f = m.lower_bound + (1 - m.lower_bound) * torch.sigmoid(m.f_proj(x[t])).view(H, E)
        i = m.i_proj(x[t]).view(H, dv)
        q = TF.silu(m.q_proj(x[t])).view(H, E) / math.sqrt(E)
        h = f[:, :, None] * h + (1 - f)[:, :, None] * i[:, None, :]
        out.append((q[:, :, None] * h).sum(1).reshape(d))
    o = torch.stack(out)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.g_norm.eps) * m.g_norm.weight
    return m.o_proj(o)


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("d,expand_ratio,lower_bound", [(16, 8, 0.0), (24, 4, 0.4), (16, 32, 0.0)])
def test_layer_equals_the_papers_recurrence(impl, d, expand_ratio, lower_bound):
    gen = torch.Generator().manual_seed(d + expand_ratio)
    m = mixers.build("hgrn2", d, 64, expand_ratio=expand_ratio, lower_bound=lower_bound, chunk_size=8,
                     subchunk_size=4, impl=impl).double()
    randomised(m, gen)
    x = torch.randn(2, 21, d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        for b in range(2):
            assert torch.allclose(y[b], paper_layer(m, x[b]), atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("n", [1, 13, 40])
def test_chunked_equals_recurrent_values_and_gradients(n):
    gen = torch.Generator().manual_seed(n)
    chunked = randomised(mixers.build("hgrn2", 32, 64, expand_ratio=16, chunk_size=8, subchunk_size=4).double(), gen)
    recurrent = mixers.build("hgrn2", 32, 64, expand_ratio=16, impl="recurrent").double()
    recurrent.load_state_dict(chunked.state_dict())
    x = torch.randn(2, n, 32, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 32, generator=gen, dtype=torch.float64)
    grads = [(y := m(x), *torch.autograd.grad((y * w).sum(), [x, *m.parameters()])) for m in (chunked, recurrent)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_heads_follow_flas_rule_with_at_least_one():
    assert (mixers.build("hgrn2", 256, 8).heads, mixers.build("hgrn2", 256, 8).forget_dim) == (2, 256)
    narrow = mixers.build("hgrn2", 64, 8)  # fla's rule d // 128 gives no head: one head of 128 forget channels
    assert (narrow.heads, narrow.forget_dim, narrow.dv) == (1, 128, 64)
    assert narrow.q_proj.weight.shape == (128, 64) and narrow.state_size(10) == 128 * 64
    assert abs(narrow.q_proj.weight.std().item() - 0.02) < 0.003  # fla's models: normal(0, 0.02)


def test_state_size_counts_the_decoding_state_exactly():
    m = mixers.build("hgrn2", 32, 64, expand_ratio=8)
    with torch.no_grad():
        _, state = m.prefill(torch.randn(3, 10, 32))
        _, state = m.step(torch.randn(3, 32), state)
    held = sum(t[0].numel() for t in state.values())  # values per sequence
    assert held == m.state_size(10) == m.state_size(1000) == 8 * 32


@pytest.mark.parametrize("options,match", [
    ({"expand_ratio": 0}, "expand_ratio must be >= 1"),
    ({"expand_ratio": 20}, "d_model=64 is not divisible by its heads=3"),
    ({"lower_bound": 1.0}, r"lower_bound must lie in \[0, 1\)"),
    ({"impl": "triton"}, "impl must be one of auto, chunked, recurrent, fla"),
    ({"chunk_size": 10}, "subchunk_size=16 must divide chunk_size=10"),
])
def test_bad_options_name_the_field(options, match):
    with pytest.raises(ValueError, match=f"hgrn2: {match}"):
        mixers.build("hgrn2", 64, 32, **options)


# ---- the fla path ---------------------------------------------------------------------------------------------
def fake_chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """chunk_gla's documented maths, (B, T, H, .) layout: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t."""
    assert initial_state is None and scale == 1.0
    b, n, h, dk = q.shape
    S, out = q.new_zeros(b, h, dk, v.shape[-1]), []
    for t in range(n):
        S = S * torch.exp(g[:, t])[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, :, None] * S).sum(-2))
    return torch.stack(out, dim=1), S if output_final_state else None


@pytest.fixture
def fake_fla(monkeypatch):
    monkeypatch.setattr(fla_kernels, "fla_ops", lambda: SimpleNamespace(chunk_gla=fake_chunk_gla))
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    monkeypatch.setattr(fla_kernels, "require_cuda_input", lambda *args: None)


@pytest.mark.parametrize("n", [1, 13, 40])
def test_fla_path_on_documented_op_equals_pytorch_path(fake_fla, n):
    gen = torch.Generator().manual_seed(n)
    ours = randomised(mixers.build("hgrn2", 64, 64, expand_ratio=16, chunk_size=8, subchunk_size=4).double(), gen)
    fla = mixers.build("hgrn2", 64, 64, expand_ratio=16, impl="fla").double()
    fla.load_state_dict(ours.state_dict())
    assert fla.backend == "fla-chunk"
    x = torch.randn(2, n, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 64, generator=gen, dtype=torch.float64)
    grads = [(y := m(x), *torch.autograd.grad((y * w).sum(), [x, *m.parameters()])) for m in (ours, fla)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)
    with torch.no_grad():
        assert torch.allclose(ours.prefill(x)[1]["kv"], fla.prefill(x)[1]["kv"], atol=1e-10)


def test_auto_takes_fla_on_cuda_only_for_heads_fla_tiles(fake_fla):
    assert mixers.build("hgrn2", 64, 64, impl="auto")._path(torch.device("cuda")) == "fla"
    assert mixers.build("hgrn2", 64, 64, impl="auto")._path(torch.device("cpu")) == "chunked"
    assert mixers.build("hgrn2", 64, 64, impl="auto", expand_ratio=8)._path(torch.device("cuda")) == "chunked"
    with pytest.raises(ValueError, match="hgrn2: impl=fla needs per-head widths >= 16"):
        mixers.build("hgrn2", 64, 64, impl="fla", expand_ratio=8)
    assert mixers.build("hgrn2", 64, 64).impl == "chunked"  # fla is opt-in


@pytest.mark.skipif(fla_kernels.fla_unavailable() is None, reason="fla runs here")
def test_forced_fla_without_fla_or_cuda_names_the_option():
    with pytest.raises(ValueError, match="hgrn2: impl=fla needs flash-linear-attention"):
        mixers.build("hgrn2", 64, 64, impl="fla")


# ---- GPU: the real kernel -------------------------------------------------------------------------------------
fla_here = pytest.mark.skipif(fla_kernels.fla_unavailable() is not None, reason="needs CUDA and flash-linear-attention")
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 4e-2}  # as tests/mixers/test_fla.py: TF32 / bf16 rounding
GPU_SHAPES = [(2, 1, 128), (2, 100, 128), (2, 1000, 256)]  # (batch, n, d_model): 1, 1 and 2 heads of 128


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernel_equals_pytorch_path_on_gpu(monkeypatch, dtype):
    """Values and every gradient against the float32 PyTorch path (f_proj's gradient also flows through the
    keys 1 - f, so unlike gla's gate it does not vanish at one token)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    failures = []
    for batch, n, d_model in GPU_SHAPES:
        start = time.perf_counter()
        torch.manual_seed(n)
        ours = mixers.build("hgrn2", d_model, n).cuda()
        fla = mixers.build("hgrn2", d_model, n, impl="fla").cuda()
        fla.load_state_dict(ours.state_dict())
        gen = torch.Generator(device="cuda").manual_seed(n)
        x = torch.randn(batch, n, d_model, device="cuda", generator=gen, requires_grad=True)
        w = torch.randn(batch, n, d_model, device="cuda", generator=gen)
        results = []
        for mixer, autocast in ((ours, torch.float32), (fla, dtype), (ours, dtype)):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast == torch.bfloat16):
                y = mixer(x)
            results.append((y.float(), *torch.autograd.grad((y.float() * w).sum(), [x, *mixer.parameters()])))
        labels = ["output", "input gradient", *(f"{name} gradient" for name, _ in ours.named_parameters())]
        shape_failures = []
        for label, got, ref, own in zip(labels, results[1], results[0], results[2]):
            error = relative_error(got, ref)
            if not error <= TOLERANCE[dtype]:
                shape_failures.append(f"batch {batch}, n {n}, d_model {d_model}: {label} {error:.3g} "
                                      f"(pytorch path's own: {relative_error(own, ref):.3g})")
        torch.cuda.synchronize()
        # printed (and flushed) as each shape ends, so that a run stopped by a timeout still shows them (pytest -s)
        print(f"hgrn2 {dtype}: batch {batch}, n {n}, d_model {d_model} in {time.perf_counter() - start:.1f} s",
              flush=True)
        if shape_failures:
            print("\n".join(shape_failures), flush=True)
        failures += shape_failures
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@fla_here
def test_fla_prefill_decodes_on_gpu():
    torch.manual_seed(0)
    mixer = mixers.build("hgrn2", 128, 256, impl="fla").cuda().eval()
    x = torch.randn(2, 80, 128, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :64])
        outs = [y]
        for t in range(64, 80):
            o, state = mixer.step(x[:, t], state)
            outs.append(o[:, None])
    assert relative_error(torch.cat(outs, dim=1), full) <= TOLERANCE[torch.float32]
