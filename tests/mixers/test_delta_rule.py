"""DeltaNet and Gated DeltaNet (mixers/ops/delta_rule.py, mixers/deltanet.py, mixers/gated_deltanet.py).

CPU: the chunked WY / UT-transform form equals the token-by-token recurrence (values, states,
gradients), the recurrence equals the papers' matrix form, the mixers' chunked and recurrent paths
agree for every option and decode as they run in parallel, the short convolution equals a causal
``conv1d``, the fla path on hand-written equivalents of what fla's ops are documented to compute
equals the PyTorch path, and bad options fail naming the field. GPU (``gpu``): fla's kernels, and
fla's own layers with our state dicts, against the PyTorch path.
"""
from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as TF

import mixers
from mixers.ops import fla_kernels
from mixers.ops.delta_rule import delta_rule_chunked, delta_rule_recurrent
from mixers.ops.short_conv import ShortConvolution

NAMES = ["deltanet", "gated_deltanet"]


def inputs(batch, heads, n, dk, dv, gated, seed, dtype=torch.float64, decay_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    kw = {"generator": gen, "dtype": dtype}
    q = torch.randn(batch, heads, n, dk, **kw)
    k = TF.normalize(torch.randn(batch, heads, n, dk, **kw), dim=-1)  # the mixers' keys are L2-normalised
    v = torch.randn(batch, heads, n, dv, **kw)
    beta = 2.0 * torch.rand(batch, heads, n, **kw)  # (0, 2): allow_neg_eigval's range included
    g = TF.logsigmoid(decay_scale * torch.randn(batch, heads, n, **kw)) if gated else None
    return q, k, v, beta, g


# ---- the op: chunked form against the recurrence --------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("n,chunk", [(1, 64), (7, 4), (16, 16), (50, 16), (100, 32), (33, 64), (64, 8)])
def test_chunked_equals_recurrent(gated, n, chunk):
    q, k, v, beta, g = inputs(2, 3, n, 5, 4, gated, seed=n * 7 + chunk)
    ref, ref_state = delta_rule_recurrent(q, k, v, beta, g)
    fast, state = delta_rule_chunked(q, k, v, beta, g, chunk)
    assert (fast - ref).abs().max() <= 1e-11 * ref.abs().max()
    assert (state - ref_state).abs().max() <= 1e-11 * ref_state.abs().max()


@pytest.mark.parametrize("gated", [False, True])
def test_chunked_gradients_equal_recurrent(gated):
    q, k, v, beta, g = inputs(1, 2, 29, 4, 3, gated, seed=5)
    tensors = [t.requires_grad_() for t in (q, k, v, beta) + ((g,) if gated else ())]
    w, w_state = torch.randn(1, 2, 29, 3, dtype=torch.float64), torch.randn(1, 2, 4, 3, dtype=torch.float64)
    grads = []
    for fn in (delta_rule_recurrent, lambda *a: delta_rule_chunked(*a, chunk_size=8)):
        out, state = fn(q, k, v, beta, g)
        grads.append(torch.autograd.grad((out * w).sum() + (state * w_state).sum(), tensors))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_recurrence_is_the_papers_transition():
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t, written as matrices."""
    q, k, v, beta, g = inputs(1, 1, 9, 4, 3, True, seed=1)
    o, state = delta_rule_recurrent(q, k, v, beta, g)
    S = torch.zeros(4, 3, dtype=torch.float64)
    for t in range(9):
        kt, bt = k[0, 0, t][:, None], beta[0, 0, t]
        S = torch.exp(g[0, 0, t]) * (torch.eye(4, dtype=torch.float64) - bt * kt @ kt.T) @ S + bt * kt @ v[0, 0, t][None]
        assert torch.allclose(o[0, 0, t], S.T @ q[0, 0, t], atol=1e-12)
    assert torch.allclose(state[0, 0], S, atol=1e-12)


def test_delta_rule_writes_the_value_at_beta_one():
    """With beta = 1 and unit keys each token replaces what the state recalls for its key by its value:
    read with the key just written, the state gives back that value, whatever came before."""
    q, k, v, beta, _ = inputs(1, 2, 12, 4, 3, False, seed=2)
    k[:, :, 7] = k[:, :, 2]  # a key seen before: its old value is overwritten, not added to
    o, _ = delta_rule_chunked(k, k, v, torch.ones_like(beta), None, 4)
    assert torch.allclose(o, v, atol=1e-12)


def test_strong_decay_stays_finite_in_float32():
    q, k, v, beta, _ = inputs(1, 1, 200, 4, 3, False, seed=0)
    g = torch.full((1, 1, 200), -30.0, dtype=torch.float64)
    ref = delta_rule_recurrent(q, k, v, beta, g)[0]
    fast = delta_rule_chunked(q.float(), k.float(), v.float(), beta.float(), g.float(), 64)[0]
    assert torch.isfinite(fast).all() and torch.allclose(fast.double(), ref, atol=1e-4)


def test_half_precision_is_computed_in_float32():
    q, k, v, beta, g = inputs(1, 2, 40, 8, 8, True, seed=3, dtype=torch.float32)
    ref = delta_rule_chunked(q, k, v, beta, g, 16)[0]
    half = delta_rule_chunked(*(t.bfloat16() for t in (q, k, v, beta, g)), 16)[0]
    assert half.dtype == torch.bfloat16 and (half.float() - ref).norm() / ref.norm() < 2e-2


# ---- the short convolution ------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,bias,activation", [(4, False, True), (3, True, False), (1, True, True)])
def test_short_convolution_is_a_causal_depthwise_conv_and_steps(kernel, bias, activation):
    torch.manual_seed(kernel)
    conv = ShortConvolution(6, kernel, bias=bias, activation=activation).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    ref = TF.conv1d(TF.pad(x.transpose(1, 2), (kernel - 1, 0)), conv.weight, conv.bias, groups=6).transpose(1, 2)
    ref = TF.silu(ref) if activation else ref
    assert torch.allclose(conv(x), ref, atol=1e-12)
    y, past = conv.prefill(x[:, :4])
    outs = [y]
    for t in range(4, 11):
        y_t, past = conv.step(x[:, t], past)
        outs.append(y_t[:, None])
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-12)
    assert past.shape == (2, 6, kernel - 1) and conv.state_size() == 6 * (kernel - 1)
    with pytest.raises(ValueError, match="conv_size must be >= 1"):
        ShortConvolution(6, 0)


# ---- the mixers: every option, chunked against recurrent, parallel against decoding ----------------------
VARIANTS = [
    ("deltanet", {}), ("deltanet", {"use_gate": True}), ("deltanet", {"use_short_conv": False}),
    ("deltanet", {"qk_activation": "relu", "qk_norm": "sum"}), ("deltanet", {"qk_activation": "elu", "use_short_conv": False}),
    ("deltanet", {"use_beta": False, "allow_neg_eigval": True, "conv_bias": True}),
    ("gated_deltanet", {}), ("gated_deltanet", {"use_gate": False, "allow_neg_eigval": True}),
    ("gated_deltanet", {"use_short_conv": False}), ("gated_deltanet", {"conv_size": 2, "conv_bias": True}),
]


def perturbed(name, d_model, impl, options, seed):
    """A mixer in float64 with its zero-initialised and 0.02-scale parameters moved, so every term matters."""
    torch.manual_seed(seed)
    mixer = mixers.build(name, d_model, 64, heads=2, impl=impl, chunk_size=8, **options).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mixer


@pytest.mark.parametrize("name,options", VARIANTS)
@pytest.mark.parametrize("n", [1, 21])
def test_module_chunked_equals_recurrent(name, options, n):
    chunked = perturbed(name, 32, "chunked", options, seed=n)
    recurrent = perturbed(name, 32, "recurrent", options, seed=n)
    x = torch.randn(2, n, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 32, dtype=torch.float64)
    results = []
    for mixer in (chunked, recurrent):
        y = mixer(x)
        results.append((y, *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name,options", VARIANTS)
def test_module_prefill_then_step_equals_forward(name, options):
    mixer = perturbed(name, 32, "chunked", options, seed=1).eval()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :10])
        assert torch.allclose(y, full[:, :10], atol=1e-10)
        for t in range(10, 19):
            y_t, state = mixer.step(x[:, t], state)
            assert torch.allclose(y_t, full[:, t], atol=1e-9)
    assert sum(s[0].numel() for s in state.values()) == mixer.state_size(19)  # values held per sequence


def test_defaults_follow_the_reference_layers():
    delta = mixers.build("deltanet", 64, 32)
    assert (delta.heads, delta.dk, delta.dv, delta.conv_size) == (4, 16, 16, 4)
    assert delta.use_short_conv and not delta.use_gate and delta.qk_norm == "l2" and delta.qk_activation == "silu"
    gated = mixers.build("gated_deltanet", 2048, 32)  # fla's GatedDeltaNet defaults at its hidden size
    assert (gated.heads, gated.dk, gated.dv) == (6, 256, 512) and gated.use_gate
    names = {n for n, _ in gated.named_parameters()}
    assert {"A_log", "dt_bias", "a_proj.weight", "b_proj.weight", "q_conv1d.weight", "g_proj.weight",
            "o_norm.weight"} <= names  # fla's parameter names
    assert gated.q_conv1d.weight.shape == (1536, 1, 4) and gated.q_conv1d.bias is None


def test_gated_deltanet_initialises_the_decay_as_mamba2():
    torch.manual_seed(0)
    mixer = mixers.build("gated_deltanet", 256, 32, heads=64, expand_k=1.0)  # 64 draws
    A, dt = torch.exp(mixer.A_log.detach()), TF.softplus(mixer.dt_bias.detach())
    assert ((A > 0) & (A <= 16)).all() and A.max() > 8 and A.min() < 8
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    exempt = mixer.no_weight_decay()
    assert exempt["A_log"] == "marked" and exempt["dt_bias"] == "marked" and exempt["q_conv1d.weight"] == "per-offset kernel"
    assert mixer.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    x = torch.randn(2, 5, 256)
    g = mixer._log_decay(x)
    assert g.shape == (2, 5, 64) and (g <= 0).all()
    assert torch.allclose(g, -A * TF.softplus(mixer.a_proj(x) + mixer.dt_bias), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_conf_equals_the_class_defaults(name):
    from omegaconf import OmegaConf
    conf = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "mixer" / f"{name}.yaml"))
    assert conf.pop("name") == name
    defaults = {k: p.default for k, p in mixers.options_of(name).items()}
    assert conf == defaults
    assert conf["impl"] == "chunked"  # fla is opt-in until its GPU tests pass


@pytest.mark.parametrize("name,options,message", [
    ("deltanet", {"heads": 3}, "deltanet: key dim 32 and value dim 32 must be divisible by heads=3"),
    ("deltanet", {"impl": "triton"}, "deltanet: impl must be one of auto, chunked, recurrent, fla"),
    ("deltanet", {"qk_activation": "gelu"}, "deltanet: qk_activation must be one of silu, relu, elu, identity"),
    ("deltanet", {"qk_norm": "l1"}, "deltanet: qk_norm must be one of l2, sum"),
    ("deltanet", {"conv_size": 0}, "deltanet: conv_size must be >= 1"),
    ("deltanet", {"chunk_size": 0}, "deltanet: chunk_size must be >= 1"),
    ("gated_deltanet", {"heads": 5}, r"gated_deltanet: key dim 24 \(d_model \* expand_k\) must be divisible by heads=5"),
    ("gated_deltanet", {"a_init_min": 4.0, "a_init_max": 2.0}, "gated_deltanet: need 0 <= a_init_min < a_init_max"),
    ("gated_deltanet", {"dt_min": 0.0}, "gated_deltanet: need 0 < dt_min <= dt_max"),
    ("gated_deltanet", {"impl": "fast"}, "gated_deltanet: impl must be one of"),
])
def test_bad_options_name_the_field(name, options, message):
    with pytest.raises(ValueError, match=message):
        mixers.build(name, 32, 64, **options)


# ---- the fla path on CPU, against what fla's ops are documented to compute -------------------------------
def _documented_delta_rule(q, k, v, g, beta, scale, use_qk_l2norm_in_kernel):
    """fla's (B, T, H, .) layout: optional l2norm of q, k; q * scale; S = exp(g) S; u = beta (v - k S); S += k^T u."""
    if use_qk_l2norm_in_kernel:
        q, k = (t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    b, n, h, dk = q.shape
    S = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for t in range(n):
        S = S * torch.exp(g[:, t])[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - (k[:, t, :, :, None] * S).sum(-2))
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        out.append(scale * (q[:, t, :, :, None] * S).sum(-2))
    return torch.stack(out, dim=1), S


CALLS = []


def fake_chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=False):
    assert q.dtype == k.dtype == v.dtype and q.dtype != torch.float32, "fla's chunk_delta_rule refuses float32"
    assert beta.shape == q.shape[:3] and initial_state is None
    CALLS.append("chunk_delta_rule")
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    o, S = _documented_delta_rule(q.float(), k.float(), v.float(), torch.zeros_like(beta, dtype=torch.float32),
                                  beta.float(), scale, use_qk_l2norm_in_kernel)
    return o.to(v.dtype), S if output_final_state else None


def fake_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, **kwargs):
    assert beta.shape == g.shape == q.shape[:3] and initial_state is None and not kwargs
    CALLS.append("chunk_gated_delta_rule")
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    o, S = _documented_delta_rule(q.to(ct), k.to(ct), v.to(ct), g.to(ct), beta.to(ct), scale, use_qk_l2norm_in_kernel)
    return o.to(v.dtype), S if output_final_state else None


@pytest.fixture
def fake_fla(monkeypatch):
    ops = SimpleNamespace(chunk_delta_rule=fake_chunk_delta_rule, chunk_gated_delta_rule=fake_chunk_gated_delta_rule)
    monkeypatch.setattr(fla_kernels, "fla_ops", lambda: ops)
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    monkeypatch.setattr(fla_kernels, "require_cuda_input", lambda *args: None)
    CALLS.clear()


def pair(name, options, seed):
    torch.manual_seed(seed)
    ours = mixers.build(name, 64, 64, impl="chunked", chunk_size=8, **options).double()
    fla = mixers.build(name, 64, 64, impl="fla", chunk_size=8, **options).double()
    fla.load_state_dict(ours.state_dict())  # the same parameter names on every backend
    return ours, fla


FLA_OPTIONS = [("deltanet", {"heads": 2}), ("deltanet", {"heads": 4, "use_gate": True}), ("gated_deltanet", {"heads": 2})]


@pytest.mark.parametrize("name,options", FLA_OPTIONS)
@pytest.mark.parametrize("n", [1, 13])
def test_fla_path_on_documented_ops_equals_pytorch_path(fake_fla, name, options, n):
    ours, fla = pair(name, options, seed=n)
    assert fla.backend == "fla-chunk"
    x = torch.randn(2, n, 64, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 64, dtype=torch.float64)
    grads = []
    for mixer in (ours, fla):
        y = mixer(x)
        grads.append((y, *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)
    assert CALLS and set(CALLS) == {"chunk_gated_delta_rule"}  # float64: the gated kernel (zero decays for deltanet)


@pytest.mark.parametrize("name,options", FLA_OPTIONS)
def test_fla_prefill_state_decodes_as_pytorch_path(fake_fla, name, options):
    ours, fla = pair(name, options, seed=3)
    x = torch.randn(2, 12, 64, dtype=torch.float64)
    with torch.no_grad():
        (y_ours, s_ours), (y_fla, s_fla) = ours.prefill(x[:, :9]), fla.prefill(x[:, :9])
        assert torch.allclose(y_ours, y_fla, atol=1e-10)
        assert s_ours.keys() == s_fla.keys() and all(torch.allclose(s_ours[k], s_fla[k], atol=1e-10) for k in s_ours)
        for t in range(9, 12):
            (o_ours, s_ours), (o_fla, s_fla) = ours.step(x[:, t], s_ours), fla.step(x[:, t], s_fla)
            assert torch.allclose(o_ours, o_fla, atol=1e-10)


@pytest.mark.parametrize("dtype,gated,op", [(torch.bfloat16, False, "chunk_delta_rule"),
                                            (torch.float32, False, "chunk_gated_delta_rule"),
                                            (torch.bfloat16, True, "chunk_gated_delta_rule"),
                                            (torch.float32, True, "chunk_gated_delta_rule")])
def test_fla_wrapper_picks_the_kernel_fla_accepts(fake_fla, dtype, gated, op):
    """fla's chunk_delta_rule refuses float32: float32 without decays runs the gated kernel with zero decays."""
    q, k, v, beta, g = inputs(2, 2, 20, 16, 16, gated, seed=4, dtype=torch.float32)
    ref, ref_state = delta_rule_chunked(q, k, v, beta, g, 64)
    layout = [t.transpose(1, 2).to(dtype) for t in (q, k, v, beta)]
    o, state = fla_kernels.delta_rule(*layout, None if g is None else g.transpose(1, 2))
    assert CALLS == [op] and o.dtype == dtype and state.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert (o.transpose(1, 2).float() - ref).norm() / ref.norm() < tolerance
    assert (state.float() - ref_state).norm() / ref_state.norm() < tolerance


@pytest.mark.parametrize("gated", [False, True])
def test_fla_wrapper_gives_the_kernels_q_k_in_v_dtype(fake_fla, gated):
    """Under CUDA autocast the L2 norms' sum and rsqrt run in float32 (autocast's float32 list): q and k reach
    the wrapper in float32 beside bf16 v, and fla's chunk_delta_rule refuses q, k, v of different dtypes."""
    q, k, v, beta, g = inputs(2, 2, 20, 16, 16, gated, seed=6, dtype=torch.float32)
    ref = delta_rule_chunked(q, k, v.bfloat16(), beta.bfloat16(), g, 64)[0]
    layout = [t.transpose(1, 2) for t in (q, k, v.bfloat16(), beta.bfloat16())]
    o, state = fla_kernels.delta_rule(*layout, None if g is None else g.transpose(1, 2))
    assert CALLS == ["chunk_gated_delta_rule" if gated else "chunk_delta_rule"]
    assert o.dtype == state.dtype == torch.bfloat16
    assert (o.transpose(1, 2).float() - ref.float()).norm() / ref.float().norm() < 3e-2


@pytest.mark.parametrize("name", NAMES)
def test_auto_runs_pytorch_on_cpu_and_fla_on_cuda_only_for_wide_heads(fake_fla, name):
    mixer = mixers.build(name, 32, 64, impl="auto")
    assert mixer._path(torch.device("cpu")) == "chunked" and mixer.backend == "torch-chunked"
    assert mixers.build(name, 128, 64, impl="auto", heads=2)._path(torch.device("cuda")) == "fla"
    narrow = mixers.build(name, 64, 64, impl="auto", heads=8)  # heads of 8 or fewer key channels
    assert narrow._path(torch.device("cuda")) == "chunked"
    with pytest.raises(ValueError, match=f"{name}: impl=fla needs per-head widths >= 16"):
        mixers.build(name, 64, 64, impl="fla", heads=8)
    for default in (mixers.build(name, 128, 64), mixers.build(name, 128, 64, impl="chunked")):
        assert default._path(torch.device("cuda")) == "chunked"  # fla is opt-in


@pytest.mark.skipif(fla_kernels.fla_unavailable() is None, reason="fla runs here")
@pytest.mark.parametrize("name", NAMES)
def test_forced_fla_without_fla_or_cuda_names_the_option(name):
    with pytest.raises(ValueError, match=f"{name}: impl=fla needs flash-linear-attention"):
        mixers.build(name, 128, 64, impl="fla")


def test_flop_terms_count_the_chunked_form_and_the_recurrence():
    chunked = mixers.build("gated_deltanet", 64, 256, heads=2, chunk_size=16)
    recurrent = mixers.build("gated_deltanet", 64, 256, heads=2, impl="recurrent")
    a, b = chunked.flop_terms(256), recurrent.flop_terms(256)
    dk, dv, h = chunked.dk, chunked.dv, 2
    assert b["scan"] == 7.0 * 256 * h * dk * dv  # decay, recall, correction, update, read-out per step
    assert a["scan"] == 16 * h * 16 * 15 * (dk + dv)  # 16 chunks: forward substitution for [U, W]
    assert a["matmul"] - b["matmul"] == 16 * h * (4.0 * 16 * 16 * dk + 2.0 * 16 * 16 * dv + 6.0 * 16 * dk * dv)


# ---- GPU: the real kernels -----------------------------------------------------------------------------------
fla_here = pytest.mark.skipif(fla_kernels.fla_unavailable() is not None, reason="needs CUDA and flash-linear-attention")
# as tests/mixers/test_fla.py: fla's float32 kernels use TF32 products; bf16 autocast rounds q, k, v and o
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 4e-2}
GPU_SHAPES = [(2, 1, 128), (2, 100, 128), (2, 1000, 256)]  # (batch, n, d_model); 100: no multiple of 64


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_equal_pytorch_path_on_gpu(monkeypatch, name, dtype):
    """Values and every gradient of the fla path in ``dtype`` against the float32 PyTorch path. Where fla
    refuses the gated kernel's backward (Hopper with Triton >= 3.4, < 3.7.1 and no tilelang: gated_deltanet, and
    deltanet in float32, which runs the gated kernel), the values alone are compared, then the test skips."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gated_kernel = name == "gated_deltanet" or dtype == torch.float32
    refused = fla_kernels.gated_delta_backward_refused() if gated_kernel else None
    if refused:
        print(f"{name} {dtype}: gradients not compared: {refused}", flush=True)
    failures = []
    for batch, n, d_model in GPU_SHAPES:
        start = time.perf_counter()
        torch.manual_seed(n)
        ours = mixers.build(name, d_model, n, impl="chunked").cuda()
        fla = mixers.build(name, d_model, n, impl="fla").cuda()
        fla.load_state_dict(ours.state_dict())
        gen = torch.Generator(device="cuda").manual_seed(n)
        x = torch.randn(batch, n, d_model, device="cuda", generator=gen, requires_grad=True)
        w = torch.randn(batch, n, d_model, device="cuda", generator=gen)
        results = []
        for mixer, autocast in ((ours, torch.float32), (fla, dtype), (ours, dtype)):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast == torch.bfloat16):
                y = mixer(x)
            if refused:
                results.append((y.float(),))
                continue
            results.append((y.float(), *torch.autograd.grad((y.float() * w).sum(), [x, *mixer.parameters()])))
        labels = ["output", "input gradient", *(f"{p} gradient" for p, _ in ours.named_parameters())]
        shape_failures = []
        for label, got, ref, rounded in zip(labels, *results):
            if n == 1 and label.startswith(("a_proj", "A_log", "dt_bias")):
                continue  # at one token the decay multiplies an empty state: its gradient is zero analytically
            error = relative_error(got, ref)
            if not error <= TOLERANCE[dtype]:
                shape_failures.append(f"batch {batch}, n {n}, d_model {d_model}: {label} {error:.3g} "
                                      f"(pytorch path's own: {relative_error(rounded, ref):.3g})")
        torch.cuda.synchronize()
        # printed (and flushed) as each shape ends, so that a run stopped by a timeout still shows them (pytest -s)
        print(f"{name} impl=fla {dtype}: batch {batch}, n {n}, d_model {d_model} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        if shape_failures:
            print("\n".join(shape_failures), flush=True)
        failures += shape_failures
    assert not failures, "\n".join(failures)
    if refused:
        pytest.skip(f"values agree; gradients not compared: {refused}")


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name,fla_layer", [("deltanet", "DeltaNet"), ("gated_deltanet", "GatedDeltaNet")])
def test_fla_reference_layer_with_our_state_dict_equals_ours_on_gpu(monkeypatch, name, fla_layer):
    """fla's own layer (its defaults at hidden size 128: GatedDeltaNet with 6 heads of 16, 0.75 d_model) given
    our parameters computes our function: the defaults, feature maps, norms, gates and gate maths are fla's."""
    import fla.layers

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ours = mixers.build(name, 128, 256).cuda()
    options = {"hidden_size": 128}
    if fla_layer == "GatedDeltaNet":
        options.update(head_dim=16, num_heads=6)  # fla's num_heads * head_dim = 0.75 hidden_size
    theirs = getattr(fla.layers, fla_layer)(**options).cuda()
    theirs.load_state_dict(ours.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, 200, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # fla's chunk_delta_rule runs 16-bit inputs only
        got = theirs(x)[0].float()
    assert relative_error(got, ours(x)) <= TOLERANCE[torch.bfloat16]


@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("name", NAMES)
def test_fla_prefill_decodes_on_gpu(name):
    torch.manual_seed(0)
    mixer = mixers.build(name, 128, 256, impl="fla").cuda().eval()
    x = torch.randn(2, 80, 128, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :64])
        outs = [y]
        for t in range(64, 80):
            o, state = mixer.step(x[:, t], state)
            outs.append(o[:, None])
    assert relative_error(torch.cat(outs, dim=1), full) <= TOLERANCE[torch.float32]


def test_auto_keeps_gated_deltanet_on_pytorch_where_fla_refuses_its_backward(fake_fla, monkeypatch):
    """fla 0.6.0 refuses chunk_gated_delta_rule's backward on Hopper with Triton >= 3.4 < 3.7.1: ``auto``
    keeps Gated DeltaNet (always the gated kernel) on the PyTorch path there; DeltaNet's bf16 kernel is ungated."""
    monkeypatch.setattr(fla_kernels, "gated_delta_backward_refused", lambda: "refused (test)")
    assert mixers.build("gated_deltanet", 128, 64, impl="auto", heads=2)._path(torch.device("cuda")) == "chunked"
    assert mixers.build("deltanet", 128, 64, impl="auto", heads=2)._path(torch.device("cuda")) == "fla"
    monkeypatch.setattr(fla_kernels, "gated_delta_backward_refused", lambda: None)
    assert mixers.build("gated_deltanet", 128, 64, impl="auto", heads=2)._path(torch.device("cuda")) == "fla"
