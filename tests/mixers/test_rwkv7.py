"""RWKV-7 (mixers/rwkv7.py) and its generalised delta rule (mixers/ops/dplr_delta_rule.py).

The chunked form equals the token-by-token recurrence (values and gradients), the recurrence equals
the paper's equation written with matrices, the whole layer equals the paper's equations token by
token, the initialisation is fla's, decoding holds exactly the state it counts, and the fla path
(CPU: on the documented maths of ``chunk_rwkv7``; GPU: the real kernel) equals the PyTorch path.
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
from mixers.ops.dplr_delta_rule import dplr_chunked, dplr_recurrent
from mixers.rwkv7 import DECAY_BOUND


def delta_rule_inputs(batch, heads, n, dk, dv, gen, dtype=torch.float64, requires_grad=False):
    """RWKV-7-shaped inputs: a = -kappa, b = kappa * gate with kappa of unit norm, log decays in (-e^-0.5, 0)."""
    q, k = (torch.randn(batch, heads, n, dk, generator=gen, dtype=dtype) for _ in range(2))
    kappa = TF.normalize(torch.randn(batch, heads, n, dk, generator=gen, dtype=dtype), dim=-1)
    gate = torch.rand(batch, heads, n, dk, generator=gen, dtype=dtype)
    g = -DECAY_BOUND * torch.rand(batch, heads, n, dk, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, n, dv, generator=gen, dtype=dtype)
    tensors = [q, k, v, -kappa, kappa * gate, g]
    return [t.requires_grad_(requires_grad) for t in tensors]


def paper_recurrence(q, k, v, a, b, g):
    """RWKV-7's eq. with the state as (dv, dk): ``S_t = S_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t``, ``o_t = S_t r_t``,
    with this module's pair (a, b) = (fla's alpha, beta) entering transposed: ``S_{t-1} (diag(w) + a^T b)``."""
    batch, heads, n, dk = k.shape
    S = q.new_zeros(batch, heads, v.shape[-1], dk)
    out = []
    for t in range(n):
        transition = torch.diag_embed(torch.exp(g[:, :, t])) + a[:, :, t, :, None] * b[:, :, t, None, :]
        S = S @ transition + v[:, :, t, :, None] * k[:, :, t, None, :]
        out.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(out, dim=2), S.transpose(-1, -2)


@pytest.mark.parametrize("n,chunk", [(1, 4), (7, 4), (16, 16), (37, 8), (40, 64)])
@pytest.mark.parametrize("dk,dv", [(4, 4), (8, 3)])
def test_chunked_equals_recurrent_values_and_gradients(n, chunk, dk, dv):
    gen = torch.Generator().manual_seed(n * 100 + dk)
    inputs = delta_rule_inputs(2, 3, n, dk, dv, gen, requires_grad=True)
    w_o, w_s = torch.randn(2, 3, n, dv, generator=gen, dtype=torch.float64), torch.randn(2, 3, dk, dv, generator=gen,
                                                                                         dtype=torch.float64)
    results = []
    for run in (lambda *t: dplr_recurrent(*t), lambda *t: dplr_chunked(*t, chunk_size=chunk)):
        o, state = run(*inputs)
        loss = (o * w_o).sum() + (state * w_s).sum()
        results.append((o, state, *torch.autograd.grad(loss, inputs)))
    for x, y in zip(*results):
        assert torch.allclose(x, y, atol=1e-11, rtol=1e-10)


def test_recurrence_is_the_papers_equation():
    gen = torch.Generator().manual_seed(0)
    inputs = delta_rule_inputs(2, 2, 9, 5, 3, gen)
    (o, state), (o_paper, state_paper) = dplr_recurrent(*inputs), paper_recurrence(*inputs)
    assert torch.allclose(o, o_paper, atol=1e-12) and torch.allclose(state, state_paper, atol=1e-12)


def test_chunked_float32_stays_close_to_float64_at_the_strongest_decay():
    """Decays at their bound over a 64-token chunk: the factors exp(+-G) span e^+-38.8, still exact enough."""
    gen = torch.Generator().manual_seed(1)
    q, k, v, a, b, g = delta_rule_inputs(1, 2, 128, 16, 16, gen)
    g = torch.full_like(g, -DECAY_BOUND)
    exact, _ = dplr_recurrent(q, k, v, a, b, g)
    single, _ = dplr_chunked(*(t.float() for t in (q, k, v, a, b, g)), chunk_size=64)
    assert (single.double() - exact).norm() / exact.norm() < 1e-5


def randomised(mixer, gen, scale=0.3):
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mixer


def paper_layer(m, x):
    """The layer token by token from the paper's equations (Peng et al. 2025, Sec. 4) with fla's choices
    (GroupNorm per head, LoRA shapes, decay scale), over one sequence ``x (n, d)`` in float64."""
    n, d = x.shape
    h, e = m.heads, m.head_dim
    S = torch.zeros(h, e, e, dtype=x.dtype)  # (dv, dk) per head
    previous, out = torch.zeros(d, dtype=x.dtype), []
    for t in range(n):
        xt = x[t]
        mixed = {mix: xt + (previous - xt) * getattr(m, f"x_{mix}") for mix in "rwkvag"}
        r, k, v = m.r_proj(mixed["r"]), m.k_proj(mixed["k"]), m.v_proj(mixed["v"])
        lora = lambda lr, z: lr.lora[2](lr.lora[1](lr.lora[0](z)))
        w = torch.exp(-math.exp(-0.5) * torch.sigmoid(lora(m.w_lora, mixed["w"])))  # the decay in (0.545, 1)
        a = torch.sigmoid(lora(m.a_lora, mixed["a"]))
        gate = lora(m.g_lora, mixed["g"])
        kappa = (k * m.k_k).view(h, e)
        kappa = kappa / kappa.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k * (1 + (a - 1) * m.k_a)
        rh, kh, vh, wh, ah = (z.view(h, e) for z in (r, k, v, w, a))
        transition = torch.diag_embed(wh) - kappa[:, :, None] * (ah * kappa)[:, None, :]
        S = S @ transition + vh[:, :, None] * kh[:, None, :]
        o = (S @ rh[:, :, None])[..., 0]  # (h, e)
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        normed = ((o - mean) / torch.sqrt(var + m.g_norm.eps)).reshape(d) * m.g_norm.weight + m.g_norm.bias
        bonus = ((rh * kh * m.r_k).sum(-1, keepdim=True) * vh).reshape(d)
        out.append(m.o_proj((normed + bonus) * gate))
        previous = xt
    return torch.stack(out)


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("d,head_dim", [(16, 8), (24, 4)])
def test_layer_equals_the_papers_equations_token_by_token(impl, d, head_dim):
    gen = torch.Generator().manual_seed(d)
    m = randomised(mixers.build("rwkv7", d, 32, head_dim=head_dim, chunk_size=8, impl=impl).double(), gen)
    x = torch.randn(2, 19, d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        for i in range(2):
            assert torch.allclose(y[i], paper_layer(m, x[i]), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("n", [1, 13, 40])
def test_mixer_chunked_equals_recurrent_values_and_gradients(n):
    gen = torch.Generator().manual_seed(n)
    chunked = randomised(mixers.build("rwkv7", 32, 64, head_dim=8, chunk_size=8).double(), gen)
    recurrent = mixers.build("rwkv7", 32, 64, head_dim=8, impl="recurrent").double()
    recurrent.load_state_dict(chunked.state_dict())
    x = torch.randn(2, n, 32, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 32, generator=gen, dtype=torch.float64)
    grads = [(y := m(x), *torch.autograd.grad((y * w).sum(), [x, *m.parameters()])) for m in (chunked, recurrent)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_initialisation_is_flas_first_layer():
    m = mixers.build("rwkv7", 64, 64)  # conf defaults: one head of 64 channels
    assert (m.heads, m.head_dim) == (1, 64) and m.ranks == {"decay": 32, "a": 32, "gate": 32}
    # fla's rule, Python's rounding (half to even): 2.5 * 16 / 32 -> 1, 5 * 16 / 32 = 2.5 -> 2
    assert mixers.build("rwkv7", 256, 8).ranks == {"decay": 32, "a": 32, "gate": 64}
    assert mixers.build("rwkv7", 256, 8, head_dim=128).ranks == {"decay": 64, "a": 64, "gate": 64}  # x head_dim / 64
    i = torch.arange(64.0)
    assert torch.allclose(m.x_r, 1 - (i / 64) ** 0.2) and torch.allclose(m.x_w, 1 - (i / 64) ** 0.9)
    assert torch.all(m.o_proj.weight == 0) and torch.all(m.w_lora.lora[0].weight == 0)
    assert torch.allclose(m.g_norm.weight, torch.full((64,), 0.5 ** 0.7)) and m.g_norm.eps == 64e-5
    assert torch.allclose(m.k_proj.weight @ m.k_proj.weight.T, 0.01 * torch.eye(64), atol=1e-6)  # orthogonal, gain 0.1
    zigzag = ((i % 64) - 31.5) / 31.5
    assert torch.allclose(m.w_lora.lora[2].bias, -6 + 6 * i / 63 + 0.5 + 2.5 * zigzag * zigzag.abs())
    # decays start spread over channels within fla's range (e^-e^-0.5, 1)
    x = torch.randn(2, 5, 64)
    log_w = -DECAY_BOUND * torch.sigmoid(m.w_lora(x))
    assert log_w.min() > -DECAY_BOUND and log_w.max() < 0 and log_w.std() > 0.1


def test_weight_decay_only_on_the_r_k_v_o_matrices_as_rwkv_lm():
    m = mixers.build("rwkv7", 16, 32, head_dim=8)
    decayed = {name for name, _ in m.named_parameters()} - set(m.no_weight_decay())
    assert decayed == {"r_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
    assert m.no_weight_decay()["w_lora.lora.0.weight"] == m.no_weight_decay()["r_k"] == "marked"


def test_zero_output_at_initialisation_still_trains():
    """fla zeroes o_proj: the output is zero at first, but o_proj's gradient is not."""
    m = mixers.build("rwkv7", 16, 32, head_dim=8)
    x = torch.randn(2, 9, 16)
    y = m(x)
    assert torch.all(y == 0)
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), [m.o_proj.weight])
    assert grad.abs().max() > 0


def test_state_size_counts_the_decoding_state_exactly():
    m = mixers.build("rwkv7", 32, 64, head_dim=8)
    with torch.no_grad():
        _, state = m.prefill(torch.randn(3, 10, 32))
        _, state = m.step(torch.randn(3, 32), state)
    held = sum(t[0].numel() for t in state.values())  # values per sequence
    assert held == m.state_size(10) == m.state_size(1000) == 4 * 8 * 8 + 32


@pytest.mark.parametrize("options,match", [
    ({"head_dim": 5}, "head_dim=5 must be >= 2 and divide d_model=64"),
    ({"head_dim": 1}, "head_dim=1 must be >= 2"),
    ({"chunk_size": 0}, "chunk_size=0 must lie in 1..131"),
    ({"chunk_size": 200}, "chunk_size=200 must lie in 1..131"),
    ({"impl": "triton"}, "impl must be one of auto, chunked, recurrent, fla"),
    ({"init_layers": 0}, "init_layers must be >= 1"),
    ({"decay_low_rank_dim": -1}, "decay_low_rank_dim must be >= 1"),
])
def test_bad_options_name_the_field(options, match):
    with pytest.raises(ValueError, match=f"rwkv7: {match}"):
        mixers.build("rwkv7", 64, 32, **options)


# ---- the fla path ---------------------------------------------------------------------------------------------
def fake_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, safe_gate=False,
                     lower_bound=None, chunk_size=None, **unused):
    """fla's documented maths, (B, T, H, .) layout: S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T in its (dv, dk) state."""
    assert initial_state is None and lower_bound == -DECAY_BOUND and safe_gate and chunk_size == 64
    assert bool((w >= lower_bound).all()) and bool((w < 0).all())
    o, S = paper_recurrence(*(t.transpose(1, 2) for t in (r * scale, k, v, a, b, w)))
    return o.transpose(1, 2), S if output_final_state else None


@pytest.fixture
def fake_fla(monkeypatch):
    monkeypatch.setattr(fla_kernels, "fla_ops", lambda: SimpleNamespace(chunk_rwkv7=fake_chunk_rwkv7))
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    monkeypatch.setattr(fla_kernels, "require_cuda_input", lambda *args: None)


@pytest.mark.parametrize("n", [1, 13, 40])
def test_fla_path_on_documented_op_equals_pytorch_path(fake_fla, n):
    gen = torch.Generator().manual_seed(n)
    ours = randomised(mixers.build("rwkv7", 64, 64, head_dim=16, chunk_size=8).double(), gen)
    fla = mixers.build("rwkv7", 64, 64, head_dim=16, impl="fla").double()
    fla.load_state_dict(ours.state_dict())  # the same parameter names on every backend
    assert fla.backend == "fla-chunk"
    x = torch.randn(2, n, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 64, generator=gen, dtype=torch.float64)
    grads = [(y := m(x), *torch.autograd.grad((y * w).sum(), [x, *m.parameters()])) for m in (ours, fla)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)
    with torch.no_grad():
        (_, s_ours), (_, s_fla) = ours.prefill(x), fla.prefill(x)
        for key in s_ours:
            assert torch.allclose(s_ours[key], s_fla[key], atol=1e-10)


def test_auto_takes_fla_on_cuda_only_for_heads_fla_tiles(fake_fla):
    assert mixers.build("rwkv7", 64, 64, impl="auto")._path(torch.device("cuda")) == "fla"
    assert mixers.build("rwkv7", 64, 64, impl="auto")._path(torch.device("cpu")) == "chunked"
    assert mixers.build("rwkv7", 64, 64, impl="auto", head_dim=8)._path(torch.device("cuda")) == "chunked"
    with pytest.raises(ValueError, match="rwkv7: impl=fla needs per-head widths >= 16"):
        mixers.build("rwkv7", 64, 64, impl="fla", head_dim=8)
    assert mixers.build("rwkv7", 64, 64).impl == "chunked"  # fla is opt-in


@pytest.mark.skipif(fla_kernels.fla_unavailable() is None, reason="fla runs here")
def test_forced_fla_without_fla_or_cuda_names_the_option():
    with pytest.raises(ValueError, match="rwkv7: impl=fla needs flash-linear-attention"):
        mixers.build("rwkv7", 64, 64, impl="fla")


# ---- GPU: the real kernel -------------------------------------------------------------------------------------
fla_here = pytest.mark.skipif(fla_kernels.fla_unavailable() is not None, reason="needs CUDA and flash-linear-attention")
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 4e-2}  # as tests/mixers/test_fla.py: TF32 / bf16 rounding
GPU_SHAPES = [(2, 1, 128), (2, 100, 128), (2, 1000, 256)]  # (batch, n, d_model); heads of 64


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernel_equals_pytorch_path_on_gpu(monkeypatch, dtype):
    """Values and every gradient against the float32 PyTorch path, from randomised parameters (fla's init
    zeroes o_proj and the LoRA down-projections, which would hide most gradients)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    failures = []
    for batch, n, d_model in GPU_SHAPES:
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(n)
        ours = randomised(mixers.build("rwkv7", d_model, n, zero_output_init=False), gen, scale=0.1).cuda()
        fla = mixers.build("rwkv7", d_model, n, impl="fla").cuda()
        fla.load_state_dict(ours.state_dict())
        x = torch.randn(batch, n, d_model, generator=gen).cuda().requires_grad_()
        w = torch.randn(batch, n, d_model, generator=gen).cuda()
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
        print(f"rwkv7 {dtype}: batch {batch}, n {n}, d_model {d_model} in {time.perf_counter() - start:.1f} s",
              flush=True)
        if shape_failures:
            print("\n".join(shape_failures), flush=True)
        failures += shape_failures
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@fla_here
def test_fla_prefill_decodes_on_gpu():
    gen = torch.Generator().manual_seed(0)
    mixer = randomised(mixers.build("rwkv7", 128, 256, impl="fla", zero_output_init=False), gen, 0.1).cuda().eval()
    x = torch.randn(2, 80, 128, generator=gen).cuda()
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :64])
        outs = [y]
        for t in range(64, 80):
            o, state = mixer.step(x[:, t], state)
            outs.append(o[:, None])
    assert relative_error(torch.cat(outs, dim=1), full) <= TOLERANCE[torch.float32]
