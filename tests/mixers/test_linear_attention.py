"""Linear attention, gated linear attention and Based: the chunkwise-parallel form equals the recurrence."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as TF

import mixers
from mixers.based import taylor_feature_count, taylor_features, taylor_features_full
from mixers.ops.linear_attention import linear_attention_chunked, linear_attention_recurrent


def inputs(batch, heads, n, dk, dv, gated, seed, decay_scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    kw = {"generator": gen, "dtype": torch.float64}
    q, k, v = torch.randn(batch, heads, n, dk, **kw), torch.randn(batch, heads, n, dk, **kw), torch.randn(batch, heads, n, dv, **kw)
    g = TF.logsigmoid(decay_scale * torch.randn(batch, heads, n, dk, **kw)) if gated else None
    return q, k, v, g


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("n,chunk,sub", [(1, 64, 16), (7, 4, 2), (16, 16, 4), (50, 16, 8), (100, 32, 32), (33, 64, 16)])
def test_chunked_equals_recurrent(gated, n, chunk, sub):
    q, k, v, g = inputs(2, 3, n, 5, 4, gated, seed=n * 7 + chunk)
    ref, ref_state = linear_attention_recurrent(q, k, v, g)
    fast, state = linear_attention_chunked(q, k, v, g, chunk, sub)
    assert (fast - ref).abs().max() <= 1e-11 * ref.abs().max()
    assert (state - ref_state).abs().max() <= 1e-11 * ref_state.abs().max()


@pytest.mark.parametrize("gated", [False, True])
def test_chunked_gradients_equal_recurrent(gated):
    q, k, v, g = inputs(1, 2, 29, 4, 3, gated, seed=5)
    tensors = [t.requires_grad_() for t in (q, k, v) + ((g,) if gated else ())]
    w = torch.randn(1, 2, 29, 3, dtype=torch.float64)
    grads = []
    for fn in (linear_attention_recurrent, lambda *a: linear_attention_chunked(*a, chunk_size=8, subchunk_size=4)):
        out = fn(q, k, v, g)[0]
        grads.append(torch.autograd.grad((out * w).sum(), tensors))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_strong_decay_stays_finite_in_float32():
    """Decays of exp(-30) per step: the chunked form never exponentiates a positive number."""
    q, k, v, _ = inputs(1, 1, 200, 4, 3, False, seed=0)
    g = torch.full((1, 1, 200, 4), -30.0, dtype=torch.float64)
    ref = linear_attention_recurrent(q, k, v, g)[0]
    fast = linear_attention_chunked(q.float(), k.float(), v.float(), g.float(), 64, 16)[0]
    assert torch.isfinite(fast).all() and torch.allclose(fast.double(), ref, atol=1e-4)


@pytest.mark.parametrize("name,options", [
    ("linear_attention", {"heads": 2}), ("linear_attention", {"heads": 4, "feature_map": "relu"}),
    ("gla", {"heads": 2, "subchunk_size": 4}), ("based", {"heads": 2, "feature_dim": 4, "window": 8}),
])
@pytest.mark.parametrize("n", [1, 21, 40])
def test_module_chunked_equals_recurrent(name, options, n):
    torch.manual_seed(n)
    fast = mixers.build(name, 16, 64, impl="chunked", chunk_size=16, **options).double()
    slow = mixers.build(name, 16, 64, impl="recurrent", **options).double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, n, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fast(x), slow(x), atol=1e-10)


def test_linear_attention_matches_the_paper_formula():
    """o_t = phi(q_t) . sum_j phi(k_j) v_j^T / (phi(q_t) . sum_j phi(k_j) + eps), phi = elu + 1, one head."""
    torch.manual_seed(0)
    m = mixers.build("linear_attention", 4, 8, heads=1).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    q, k, v = m.qkv(x)[0].split(4, dim=-1)
    phi_q, phi_k = TF.elu(q) + 1, TF.elu(k) + 1
    rows = [(phi_q[t] @ (phi_k[: t + 1].T @ v[: t + 1])) / (phi_q[t] @ phi_k[: t + 1].sum(0) + m.eps) for t in range(6)]
    with torch.no_grad():
        assert torch.allclose(m(x)[0], m.out_proj(torch.stack(rows)), atol=1e-12)


def test_taylor_features_give_the_second_order_expansion():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 16, generator=gen, dtype=torch.float64), torch.randn(5, 16, generator=gen, dtype=torch.float64)
    s = (x * y).sum(-1) / math.sqrt(16)
    # float64 throughout (float32-rounded scales would be off by ~1e-8 relative)
    assert torch.allclose((taylor_features(x) * taylor_features(y)).sum(-1), 1 + s + s**2 / 2, rtol=1e-12, atol=1e-12)
    assert torch.allclose((taylor_features(x) * taylor_features(y)).sum(-1),
                          (taylor_features_full(x) * taylor_features_full(y)).sum(-1), rtol=1e-12, atol=1e-12)
    assert taylor_features(x).shape[-1] == taylor_feature_count(16) == 153
    assert taylor_features_full(x).shape[-1] == 273


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
def test_based_with_distinct_features_equals_the_full_feature_map(impl, monkeypatch):
    """The 153-feature layer computes what zoology's 273-feature map computes (values and gradients),
    and its decoding state and FLOPs count 153 features."""
    import mixers.based as based

    torch.manual_seed(0)
    m = mixers.build("based", 32, 24, heads=2, feature_dim=16, window=0, chunk_size=8, impl=impl).double()
    x = torch.randn(2, 24, 32, dtype=torch.float64, requires_grad=True)
    y = m(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    assert m.prefill(x.detach())[1]["kv"].shape[-2:] == (153, 17)
    monkeypatch.setattr(based, "taylor_features", taylor_features_full)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = m(x_ref)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x_ref)
    assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(gx, gx_ref, atol=1e-9)
    assert m.state_size(24) == 2 * 153 * (16 + 1)  # heads x features x (head_dim + the normaliser)


def test_gla_gates_are_low_rank_and_within_the_normalised_range():
    m = mixers.build("gla", 64, 64, heads=2)
    assert m.gk_proj[0].weight.shape == (16, 64) and m.gk_proj[1].weight.shape == (32, 16)  # d -> 16 -> key dim d/2
    q, k, v, g, _ = m._inputs(torch.randn(2, 9, 64), "b n (h e) -> b h n e")
    assert q.shape == k.shape == g.shape == (2, 2, 9, 16) and v.shape == (2, 2, 9, 32)
    assert (g <= 0).all() and (g >= -100 / 16).all()  # log-sigmoid / 16
