"""Structured generalized linear token mixing: the blocked solve equals a dense triangular solve."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.ops.gltm import gltm_blocked, gltm_dense, gltm_sequential, offsets


def test_offsets_are_the_two_patterns_below_max_len():
    assert offsets("power2", 64) == [1, 2, 4, 8, 16, 32]
    assert offsets("power2", 65) == [1, 2, 4, 8, 16, 32, 64]
    assert offsets("square", 64) == [1, 2, 5, 10, 17, 26, 37, 50]
    assert len(offsets("square", 10_000)) == 100  # about sqrt(n) offsets
    assert len(offsets("power2", 1024)) == 10  # log2(n)


def weights(batch, heads, n, K, p, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, heads, n, K + 1, generator=gen, dtype=torch.float64).mul(2).softmax(-1)
    v = torch.randn(batch, heads, n, p, generator=gen, dtype=torch.float64)
    a, beta = w[..., 0].clone(), w[..., 1:].clone()
    if requires_grad:
        a.requires_grad_(), beta.requires_grad_(), v.requires_grad_()
    return a, beta, v


@pytest.mark.parametrize("pattern", ["power2", "square"])
@pytest.mark.parametrize("n,block", [(1, 4), (5, 4), (8, 4), (37, 8), (100, 16), (64, 64), (70, 3), (130, 32)])
def test_blocked_equals_dense_triangular_solve(pattern, n, block):
    offs = offsets(pattern, n)
    a, beta, v = weights(2, 3, n, len(offs), 4, seed=n * 3 + block)
    ref = gltm_dense(a, beta, v, offs)
    assert torch.allclose(gltm_blocked(a, beta, v, offs, block), ref, atol=1e-12)
    assert torch.allclose(gltm_sequential(a, beta, v, offs), ref, atol=1e-12)


def test_dense_solve_is_the_definition():
    """(I - B) Y = A V with B[t, t - f(k)] = beta[t, k]: check Y by multiplying back."""
    n, offs = 20, offsets("square", 20)
    a, beta, v = weights(1, 1, n, len(offs), 2, seed=0)
    y = gltm_dense(a, beta, v, offs)[0, 0]
    B = torch.zeros(n, n, dtype=torch.float64)
    for t in range(n):
        for k, f in enumerate(offs):
            if t - f >= 0:
                B[t, t - f] = beta[0, 0, t, k]
    assert torch.allclose((torch.eye(n, dtype=torch.float64) - B) @ y, a[0, 0, :, None] * v[0, 0], atol=1e-12)


@pytest.mark.parametrize("pattern", ["power2", "square"])
@pytest.mark.parametrize("n,max_len,block", [(45, 45, 8), (1, 8, 4), (5, 64, 4), (37, 37, 8), (70, 100, 3), (64, 64, 64)])
def test_blocked_gradients_equal_dense(pattern, n, max_len, block):
    """The hand-written backward (the adjoint solve) against autograd through the dense solve;
    ``max_len > n`` leaves offsets that reach before the sequence (no gradient)."""
    offs = offsets(pattern, max_len)
    a, beta, v = weights(2, 2, n, len(offs), 3, seed=n + block, requires_grad=True)
    w = torch.randn(2, 2, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    grads = [torch.autograd.grad((fn(a, beta, v, offs) * w).sum(), (a, beta, v), materialize_grads=True)
             for fn in (gltm_dense, lambda *args: gltm_blocked(*args, block_size=block))]
    for g_dense, g_blocked in zip(*grads):
        assert torch.allclose(g_dense, g_blocked, atol=1e-10)


@pytest.mark.parametrize("pattern", ["power2", "square"])
def test_module_blocked_equals_dense(pattern):
    torch.manual_seed(0)
    fast = mixers.build("gltm", 16, 128, pattern=pattern, heads=4, block_size=16)
    dense = mixers.build("gltm", 16, 128, pattern=pattern, heads=4, impl="dense")
    dense.load_state_dict(fast.state_dict())
    x = torch.randn(2, 100, 16)
    with torch.no_grad():
        assert torch.allclose(fast(x), dense(x), atol=1e-5)


def test_rows_of_b_sum_below_one_and_inputs_beyond_max_len_run():
    torch.manual_seed(0)
    m = mixers.build("gltm", 16, 32, pattern="power2", heads=2)
    a, beta, _, offs = m._weights(torch.randn(2, 50, 16))
    assert offs == [1, 2, 4, 8, 16]
    assert ((a + beta.sum(-1) - 1).abs() < 1e-6).all() and (beta.sum(-1) < 1).all()
    t = torch.arange(50)[:, None]
    assert (beta[..., t < torch.tensor(offs)[None, :]] == 0).all()  # no weight on outputs before the start
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 200, 16))).all()  # offsets stay those below max_len


def test_lattice_reads_by_hand():
    from mixers.ops.gltm import sources
    offs = [1, 2, 4]
    # t = 6: plain reads 5, 4, 2; lattice reads 1*(6-1) = 5, 2*(3-1) = 4, 4*(1-1) = 0
    assert sources(offs, torch.tensor([6])).tolist() == [[5, 4, 2]]
    assert sources(offs, torch.tensor([6]), lattice=True).tolist() == [[5, 4, 0]]
    assert sources(offs, torch.tensor([3]), lattice=True).tolist() == [[2, 0, -1]]  # f = 4 does not reach t = 3
    lags = [t - s for t in range(4, 40) for s in sources([4], torch.tensor([t]), lattice=True)[0].tolist()]
    assert min(lags) == 4 and max(lags) == 7  # lags in [f, 2 f - 1]


@pytest.mark.parametrize("pattern", ["power2_cache", "square_cache"])
def test_lattice_sequential_equals_dense_and_dense_is_the_definition(pattern):
    from mixers.ops.gltm import sources
    n = 41
    offs = offsets(pattern, n)
    a, beta, v = weights(2, 2, n, len(offs), 3, seed=7)
    y = gltm_dense(a, beta, v, offs, lattice=True)
    assert torch.allclose(gltm_sequential(a, beta, v, offs, lattice=True), y, atol=1e-12)
    B = torch.zeros(n, n, dtype=torch.float64)
    for t, row in enumerate(sources(offs, torch.arange(n), lattice=True).tolist()):
        for k, s in enumerate(row):
            if s >= 0:
                B[t, s] += beta[0, 0, t, k]
    assert torch.allclose((torch.eye(n, dtype=torch.float64) - B) @ y[0, 0], a[0, 0, :, None] * v[0, 0], atol=1e-12)
    assert not torch.allclose(y, gltm_dense(a, beta, v, offs), atol=1e-3)  # a different model from the plain pattern


@pytest.mark.parametrize("pattern", ["power2_cache", "square_cache"])
@pytest.mark.parametrize("prompt", [1, 6, 23])
def test_lattice_decode_equals_parallel_with_a_cache_bounded_by_the_offsets(pattern, prompt):
    torch.manual_seed(0)
    n, max_len = 70, 80
    mixer = mixers.build("gltm", 16, max_len, pattern=pattern, heads=4, impl="dense").double().eval()
    K = len(mixer.offsets)
    x = torch.randn(2, n, 16, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :prompt])
        assert torch.allclose(y, full[:, :prompt], atol=1e-10)
        for t in range(prompt, n):
            cached = state["values"].shape[2]
            assert cached <= 2 * K and cached * 16 == mixer.state_size(t)
            y_t, state = mixer.step(x[:, t], state)
            assert torch.allclose(y_t, full[:, t], atol=1e-9), (pattern, t)
    plain = mixers.build("gltm", 16, max_len, pattern=pattern.removesuffix("_cache"), heads=4)
    assert mixer.state_size(n) <= 2 * K * 16 < plain.state_size(n)


@pytest.mark.parametrize("pattern", ["power2_cache", "square_cache"])
def test_lattice_modules_are_causal_and_blocked_equals_dense(pattern):
    torch.manual_seed(0)
    blocked = mixers.build("gltm", 16, 40, pattern=pattern, heads=4, block_size=8).double()
    dense = mixers.build("gltm", 16, 40, pattern=pattern, heads=4, impl="dense").double()
    dense.load_state_dict(blocked.state_dict())
    x = torch.randn(1, 40, 16, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(blocked(x), dense(x), atol=1e-12)
    grad = torch.autograd.grad(blocked(x)[0, 17].sum(), x)[0]
    assert grad[0, 18:].abs().max() == 0 and grad[0, :18].abs().max() > 0


@pytest.mark.parametrize("pattern", ["power2_cache", "square_cache"])
@pytest.mark.parametrize("n,max_len,block", [(1, 4, 4), (5, 8, 4), (37, 37, 8), (70, 100, 3), (64, 64, 64), (130, 130, 16)])
def test_lattice_blocked_equals_dense_values_and_gradients(pattern, n, max_len, block):
    offs = offsets(pattern, max_len)
    a, beta, v = weights(2, 2, n, len(offs), 3, seed=n + 5 * block, requires_grad=True)
    w = torch.randn(2, 2, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ref = gltm_dense(a, beta, v, offs, lattice=True)
    out = gltm_blocked(a, beta, v, offs, block, lattice=True)
    assert torch.allclose(out, ref, atol=1e-12)
    grads = [torch.autograd.grad((y * w).sum(), (a, beta, v), materialize_grads=True) for y in (out, ref)]
    for g, g_ref in zip(*grads):
        assert torch.allclose(g, g_ref, atol=1e-10)


def test_blocked_solve_at_any_read_positions_equals_the_fixed_offset_one():
    from mixers.ops.gltm import blocked_solve_sources, sources
    n, offs = 50, offsets("square", 50)
    a, beta, v = weights(1, 2, n, len(offs), 3, seed=3)
    general = blocked_solve_sources(a, beta, v, sources(offs, torch.arange(n)), 8)
    assert torch.allclose(general, gltm_dense(a, beta, v, offs), atol=1e-12)


@pytest.mark.parametrize("pattern", ["power2_cache", "square_cache"])
def test_lattice_matmul_flops_equal_the_counted_ones(pattern):
    """The lattice variants are not generic contract cases (their cache grows as log n / sqrt n, neither
    fixed nor linear, which the generic state-size test does not describe): their FLOPs are checked here."""
    from torch.utils.flop_counter import FlopCounterMode
    mixer = mixers.build("gltm", 32, 64, pattern=pattern, heads=16, block_size=8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        mixer(torch.randn(3, 61, 32))
    assert counter.get_total_flops() == pytest.approx(3 * mixer.flop_terms(61)["matmul"], rel=0.01)
    plain = mixers.build("gltm", 32, 64, pattern=pattern.removesuffix("_cache"), heads=16, block_size=8)
    assert mixer.flops(61) == plain.flops(61)  # the same work, at other read positions
