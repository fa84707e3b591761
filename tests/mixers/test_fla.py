"""The fla backend of gla, linear_attention and based (mixers/ops/fla_kernels.py).

On CPU: ``impl=auto`` runs the PyTorch path, a forced fla path fails at construction naming the
option, and the mixers' fla paths, run against hand-written equivalents of what each fla op is
documented to compute (fla's layout, scale, gates, its returned numerator and denominator), equal
the PyTorch path in values, gradients and decoding state: this holds the wrappers' layouts, scales
and normalisation. On CUDA (``gpu``): the real fla kernels against the PyTorch path.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mixers
from mixers.ops import fla_kernels

FLA_CASES = [  # (mixer, impl, options) at d_model 64: heads of 16 or more channels, as fla's tiles need
    ("gla", "fla", {"heads": 2, "chunk_size": 8, "subchunk_size": 4}),
    ("linear_attention", "fla", {"heads": 2, "chunk_size": 8}),
    ("linear_attention", "fla", {"heads": 4, "feature_map": "relu", "chunk_size": 8}),
    ("based", "fla", {"heads": 2, "feature_dim": 4, "window": 8, "chunk_size": 8}),
    ("based", "fla", {"heads": 2, "feature_dim": 3, "window": 0, "chunk_size": 8}),  # odd feature count: padded
    ("based", "fla_parallel", {"heads": 2, "feature_dim": 4, "window": 8, "chunk_size": 8}),
    ("based", "fla_fused_chunk", {"heads": 2, "feature_dim": 4, "window": 0, "chunk_size": 8}),
]


# ---- what fla's ops are documented to compute (fla's (B, T, H, .) layout unless head-first) ----------------
def _recurrence(q, k, v, g, scale):
    """o_t = scale q_t S_t, S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, over (B, T, H, .) inputs."""
    b, n, h, dk = q.shape
    S = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for t in range(n):
        if g is not None:
            S = S * torch.exp(g[:, t])[..., None]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * (q[:, t, :, :, None] * S).sum(-2))
    return torch.stack(out, dim=1), S


def fake_chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    assert q.shape == k.shape == g.shape and initial_state is None
    o, S = _recurrence(q, k, v, g, q.shape[-1] ** -0.5 if scale is None else scale)
    return o.to(v.dtype), S if output_final_state else None


def fake_chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True):
    assert initial_state is None
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    o, S = _recurrence(q, k, v, None, scale)
    if normalize:  # fla's own normaliser (its epsilon), which the wrapper must not use
        o = o / ((q * scale * k.cumsum(1)).sum(-1, keepdim=True) + 1e-10)
        return o, (S, k.cumsum(1)[:, -1:])
    return o.to(v.dtype), S if output_final_state else None


def fake_based_head_first(q, k, v, scale):
    """ParallelBasedFunction / FusedChunkBasedFunction: head-first (B, H, T, .) -> numerator, denominator."""
    s = scale * q @ k.transpose(-1, -2)
    a = (1 + s + s**2 / 2) * torch.ones_like(s).tril()
    return a @ v, a.sum(-1)


@pytest.fixture
def fake_fla(monkeypatch):
    """fla's ops replaced by their documented maths, available on CPU."""
    ops = SimpleNamespace(chunk_gla=fake_chunk_gla, chunk_linear_attn=fake_chunk_linear_attn,
                          parallel_based=fake_based_head_first, fused_chunk_based=fake_based_head_first)
    monkeypatch.setattr(fla_kernels, "fla_ops", lambda: ops)
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    monkeypatch.setattr(fla_kernels, "require_cuda_input", lambda *args: None)


@pytest.mark.parametrize("f", [1, 3, 4, 16])
def test_distinct_taylor_features_give_the_kernel(f):
    gen = torch.Generator().manual_seed(f)
    x, y = torch.randn(6, f, generator=gen, dtype=torch.float64), torch.randn(6, f, generator=gen, dtype=torch.float64)
    phi = fla_kernels.distinct_taylor_features
    s = (x * y).sum(-1) / math.sqrt(f)
    count = 1 + f + f * (f + 1) // 2
    assert phi(x).shape[-1] == count + count % 2  # 153 -> 154 at f = 16: an even key width
    assert torch.allclose((phi(x) * phi(y)).sum(-1), 1 + s + s**2 / 2)


# ---- CPU: selection and errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,backend", [("gla", "torch-chunked"), ("linear_attention", "torch-chunked"),
                                          ("based", "torch-chunked+sdpa-blocked")])
def test_auto_runs_pytorch_on_cpu(name, backend):
    mixer = mixers.build(name, 32, 64, impl="auto")
    assert mixer.impl == "auto" and mixer.backend == backend
    assert mixer(torch.randn(2, 5, 32)).shape == (2, 5, 32)


@pytest.mark.parametrize("name", ["gla", "linear_attention", "based"])
def test_conf_default_is_the_pytorch_path_on_cuda_too(fake_fla, name):
    """fla is opt-in (impl=fla, or impl=auto) until its GPU equality tests have passed on a GPU."""
    from omegaconf import OmegaConf
    conf = Path(__file__).resolve().parents[2] / "conf" / "mixer" / f"{name}.yaml"
    options = OmegaConf.to_container(OmegaConf.load(conf))
    options.pop("name")
    for mixer in (mixers.build(name, 128, 64, **options), mixers.build(name, 128, 64)):  # conf, class defaults
        assert mixer.impl == "chunked" and mixer._path(torch.device("cuda")) == "chunked"


@pytest.mark.skipif(fla_kernels.fla_unavailable() is None, reason="fla runs here")
@pytest.mark.parametrize("name,impl", [("gla", "fla"), ("linear_attention", "fla"), ("based", "fla"),
                                       ("based", "fla_parallel"), ("based", "fla_fused_chunk")])
def test_forced_fla_without_fla_or_cuda_names_the_option(name, impl):
    with pytest.raises(ValueError, match=f"{name}: impl={impl} needs flash-linear-attention"):
        mixers.build(name, 32, 64, impl=impl)


@pytest.mark.parametrize("name", ["gla", "linear_attention", "based"])
def test_unknown_impl_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"impl must be one of auto, chunked, recurrent, fla"):
        mixers.build(name, 32, 64, impl="triton")


def test_based_fla_kernels_check_feature_dim(fake_fla):
    with pytest.raises(ValueError, match="impl=fla_fused_chunk takes feature_dim <= 16"):
        mixers.build("based", 64, 64, feature_dim=32, impl="fla_fused_chunk")
    with pytest.raises(ValueError, match="impl=fla_parallel takes feature_dim <= 128"):
        mixers.build("based", 512, 64, feature_dim=256, heads=2, impl="fla_parallel")


@pytest.mark.parametrize("name,options,fits", [
    ("gla", {"heads": 4}, True), ("gla", {"heads": 8}, False),  # key widths 16 and 8 at d_model 128
    ("linear_attention", {"heads": 8}, True), ("linear_attention", {"heads": 16}, False),
    ("based", {"heads": 8}, True), ("based", {"heads": 16}, False),
])
def test_auto_takes_fla_on_cuda_only_for_heads_fla_tiles(fake_fla, name, options, fits):
    mixer = mixers.build(name, 128, 64, impl="auto", **options)
    assert mixer._path(torch.device("cuda")) == ("fla" if fits else "chunked")
    assert mixer._path(torch.device("cpu")) == "chunked"
    if not fits:
        with pytest.raises(ValueError, match=f"{name}: impl=fla needs per-head widths >= 16"):
            mixers.build(name, 128, 64, impl="fla", **options)


def test_linear_attention_auto_takes_fla_only_up_to_fla_max_len(fake_fla, monkeypatch):
    mixer = mixers.build("linear_attention", 128, 1 << 17, impl="auto")  # conf default fla_max_len: 8192
    assert mixer.fla_max_len == 8192
    assert mixer._path(torch.device("cuda"), 8192) == "fla" and mixer._path(torch.device("cuda"), 8193) == "chunked"
    assert mixer._path(torch.device("cpu"), 100) == "chunked"
    short = mixers.build("linear_attention", 128, 512, impl="auto", fla_max_len=32)
    assert short._path(torch.device("cuda"), 32) == "fla" and short._path(torch.device("cuda"), 33) == "chunked"
    forced = mixers.build("linear_attention", 128, 512, impl="fla", fla_max_len=32)
    assert forced._path(torch.device("cuda"), 500) == "fla"  # a forced path ignores the crossover
    monkeypatch.setattr(type(short), "_path", lambda self, device, length=None:  # as on CUDA parameters
                        "fla" if length is None or length <= self.fla_max_len else "chunked")
    assert short.backend == "fla-chunk(n<=32, else torch-chunked)"
    assert short.backend_at(32) == "fla-chunk" and short.backend_at(33) == "torch-chunked"
    # the forward follows the rule: at 33 tokens the chunked path runs, so fla's op is not called
    monkeypatch.setattr(fla_kernels, "linear_attention", lambda *args: pytest.fail("fla ran past fla_max_len"))
    with torch.no_grad():
        assert short(torch.randn(1, 33, 128)).shape == (1, 33, 128)
    with pytest.raises(ValueError, match="linear_attention: fla_max_len must be >= 1, got 0"):
        mixers.build("linear_attention", 128, 512, fla_max_len=0)


def test_fla_path_needs_cuda_inputs():
    if fla_kernels.fla_unavailable() is not None:
        with pytest.raises(RuntimeError, match="impl=fla runs flash-linear-attention's Triton kernels"):
            fla_kernels.require_cuda_input("gla", "fla", torch.zeros(1))


# ---- CPU: the fla paths, on the documented maths, equal the PyTorch path -----------------------------------
def pair(name, impl, options, seed):
    torch.manual_seed(seed)
    ours = mixers.build(name, 64, 64, impl="chunked", **options).double()
    fla = mixers.build(name, 64, 64, impl=impl, **options).double()
    fla.load_state_dict(ours.state_dict())  # the same parameter names on every backend
    return ours, fla


@pytest.mark.parametrize("name,impl,options", FLA_CASES)
@pytest.mark.parametrize("n", [1, 13, 40])
def test_fla_path_on_documented_ops_equals_pytorch_path(fake_fla, name, impl, options, n):
    ours, fla = pair(name, impl, options, seed=n)
    assert fla.backend.startswith("fla-")
    x = torch.randn(2, n, 64, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 64, dtype=torch.float64)
    grads = []
    for mixer in (ours, fla):
        y = mixer(x)
        grads.append((y, *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name,impl,options", FLA_CASES)
def test_fla_prefill_state_decodes_as_pytorch_path(fake_fla, name, impl, options):
    ours, fla = pair(name, impl, options, seed=3)
    x = torch.randn(2, 12, 64, dtype=torch.float64)
    with torch.no_grad():
        (y_ours, s_ours), (y_fla, s_fla) = ours.prefill(x[:, :9]), fla.prefill(x[:, :9])
        assert torch.allclose(y_ours, y_fla, atol=1e-10)
        assert torch.allclose(s_ours["kv"], s_fla["kv"], atol=1e-10)
        for t in range(9, 12):
            (o_ours, s_ours), (o_fla, s_fla) = ours.step(x[:, t], s_ours), fla.step(x[:, t], s_fla)
            assert torch.allclose(o_ours, o_fla, atol=1e-10)


def test_based_fla_parallel_declares_quadratic_time():
    declared = mixers.mixer_class("based").declared_complexity(impl="fla_parallel", window=64)
    assert declared["time_exponent"] == 2.0 and declared["memory_exponent"] == 1.0
    assert mixers.mixer_class("based").declared_complexity(impl="fla")["time_exponent"] == 1.0


# ---- GPU: the real kernels ----------------------------------------------------------------------------------
fla_here = pytest.mark.skipif(fla_kernels.fla_unavailable() is not None, reason="needs CUDA and flash-linear-attention")

# relative errors ||a - b|| / ||b|| allowed against the float32 PyTorch path (TF32 off): fla's float32 kernels
# use TF32 products inside (10-bit mantissa); bf16 autocast rounds q, k, v and the output to 8 bits
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 4e-2}


def relative_error(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """``||a - b|| / ||b||``, or ``/ ||scale||`` where given: for a gradient that vanishes analytically (a
    relative error against (nearly) zero is undefined: any rounding reads as ~1e20)."""
    a, b = a.detach().double(), b.detach().double()
    denominator = b.norm() if scale is None else scale.detach().double().norm()
    return float((a - b).norm() / denominator.clamp_min(1e-30))


def gla_gate_gradient_scale(mixer, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    """The size of the terms that the gla gate parameters' gradients are differences of, on our path.

    The gradient of the loss in a log decay is ``dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s)`` (fla's
    backward forms exactly this): at one token it is zero (the gate only scales the state carried from
    earlier tokens, and there is none), so both paths round a cancellation to (nearly) zero; its rounding
    is relative to ``|q dq| + |k dk|``, pulled back here through the same gate layers."""
    from mixers.ops.linear_attention import linear_attention_chunked
    q, k, v, g, gate = mixer._inputs(x, "b n (h e) -> b h n e")
    o, _ = linear_attention_chunked(q, k, v, g, mixer.chunk_size, mixer.subchunk_size)
    y = mixer._output(o, gate, "b h n e -> b n (h e)")
    dq, dk = torch.autograd.grad((y.float() * w).sum(), [q, k], retain_graph=True)
    terms = (q * dq).abs() + (k * dk).abs()
    upstream = terms.flip(2).cumsum(2).flip(2)  # sum over s >= t
    return list(torch.autograd.grad(g, list(mixer.gk_proj.parameters()), grad_outputs=upstream))


def numerator_gradient_scale(monkeypatch, mixer, x: torch.Tensor, w: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """The gradients of ``names`` on our path with the normaliser held constant: the size of the two
    terms that cancel in the gradient of ``numerator / (denominator + eps)`` in q and k (at one token
    they cancel up to eps: the only weight is 1)."""
    import mixers.based
    import mixers.linear_attention

    def constant_denominator(o, eps):
        return o[..., :-1] / (o[..., -1:].detach() + eps)
    with monkeypatch.context() as patch:
        for module in (mixers.based, mixers.linear_attention):
            patch.setattr(module, "normalised", constant_denominator)
        y = mixer(x)
    params = dict(mixer.named_parameters())
    return list(torch.autograd.grad((y.float() * w).sum(), [params[n] for n in names]))


def vanishing_gradient_scales(monkeypatch, name: str, mixer, x: torch.Tensor, w: torch.Tensor) -> dict:
    """At one token, the parameters whose gradients vanish analytically, each with the size of the terms
    its gradient cancels from (compared against that instead of against (nearly) zero); none otherwise."""
    if x.shape[1] != 1:
        return {}
    if name == "gla":
        gate = [f"gk_proj.{p}" for p, _ in mixer.gk_proj.named_parameters()]
        return dict(zip(gate, gla_gate_gradient_scale(mixer, x, w)))
    if name == "based":  # the feature-map projections of the linear branch (linear_attention fuses q, k, v)
        feature = ["q_proj.weight", "k_proj.weight"]
        return dict(zip(feature, numerator_gradient_scale(monkeypatch, mixer, x, w, feature)))
    return {}


# one batch size throughout: fla autotunes each kernel per (batch, heads, widths, dtype), not per length, so
# n = 1 and 100 at d_model 128 share its tuning (and the auto and decoding tests below reuse it); d_model 256
# widens the heads (one more tuning per kernel). n = 100 is no multiple of fla's 64-token chunks.
GPU_SHAPES = [(2, 1, 128), (2, 100, 128), (2, 1000, 256)]  # (batch, n, d_model)


def fla_against_pytorch_errors(monkeypatch, name: str, impl: str, batch: int, n: int, d_model: int,
                               dtype: torch.dtype) -> list[str]:
    """The fla path in ``dtype`` against the float32 PyTorch path (values and every gradient): one line per
    quantity whose relative error exceeds ``TOLERANCE[dtype]``, with the PyTorch path's own in ``dtype``."""
    torch.manual_seed(n)
    ours = mixers.build(name, d_model, n, impl="chunked").cuda()
    fla = mixers.build(name, d_model, n, impl=impl).cuda()
    fla.load_state_dict(ours.state_dict())
    assert fla.backend.startswith("fla-")
    gen = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(batch, n, d_model, device="cuda", generator=gen, requires_grad=True)
    w = torch.randn(batch, n, d_model, device="cuda", generator=gen)
    results = []
    # the reference in float32; our path in ``dtype`` too, to say how far its own rounding goes
    for mixer, autocast in ((ours, torch.float32), (fla, dtype), (ours, dtype)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast == torch.bfloat16):
            y = mixer(x)
        results.append((y.float(), *torch.autograd.grad((y.float() * w).sum(), [x, *mixer.parameters()])))
    ref, got, ours_rounded = results
    names = [name for name, _ in ours.named_parameters()]
    vanishing = vanishing_gradient_scales(monkeypatch, name, ours, x, w)
    scales = [None, None, *(vanishing.get(p) for p in names)]
    labels = ["output", "input gradient", *(f"{name} gradient" for name in names)]
    failures = []
    for label, a, b, c, scale in zip(labels, got, ref, ours_rounded, scales):
        error = relative_error(a, b, scale)
        if not error <= TOLERANCE[dtype]:
            failures.append(f"batch {batch}, n {n}, d_model {d_model}: {label} {error:.3g} "
                            f"(pytorch path's own: {relative_error(c, b, scale):.3g})")
    if failures:  # printed (and flushed) now, so that a run stopped by a timeout still shows them (pytest -s)
        print(f"{name} impl={impl} {dtype}:\n" + "\n".join(failures), flush=True)
    return failures


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name,impl", [("gla", "fla"), ("linear_attention", "fla"), ("based", "fla"),
                                       ("based", "fla_parallel"), ("based", "fla_fused_chunk")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_equal_pytorch_path_on_gpu(monkeypatch, name, impl, dtype):
    """Every shape of ``GPU_SHAPES`` in one test (one compilation and tuning per path and dtype); each
    shape's time is printed (fla's first call at a new width includes its tuning)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # an exact float32 reference
    failures = []
    for batch, n, d_model in GPU_SHAPES:
        start = time.perf_counter()
        failures += fla_against_pytorch_errors(monkeypatch, name, impl, batch, n, d_model, dtype)
        torch.cuda.synchronize()
        print(f"{name} impl={impl} {dtype}: batch {batch}, n {n}, d_model {d_model} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name", ["gla", "linear_attention", "based"])
def test_auto_picks_fla_on_gpu_and_state_dicts_load_across_backends(name):
    auto = mixers.build(name, 128, 512, impl="auto").cuda()
    assert auto.backend.startswith("fla-chunk")
    cpu = mixers.build(name, 128, 512, impl="chunked")
    assert list(cpu.state_dict()) == list(auto.state_dict())
    cpu.load_state_dict({k: v.cpu() for k, v in auto.state_dict().items()})  # strict: the same names and shapes
    x = torch.randn(2, 300, 128)
    with torch.no_grad():
        assert relative_error(auto(x.cuda()).cpu(), cpu(x)) <= TOLERANCE[torch.float32]
    assert mixers.build(name, 128, 512, impl="auto").backend.startswith("torch-chunked")  # on CPU parameters


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name,impl", [("gla", "fla"), ("linear_attention", "fla"), ("based", "fla")])
def test_fla_prefill_decodes_on_gpu(name, impl):
    torch.manual_seed(0)
    mixer = mixers.build(name, 128, 256, impl=impl).cuda().eval()
    x = torch.randn(2, 80, 128, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :64])
        outs = [y]
        for t in range(64, 80):
            o, state = mixer.step(x[:, t], state)
            outs.append(o[:, None])
    assert relative_error(torch.cat(outs, dim=1), full) <= TOLERANCE[torch.float32]
