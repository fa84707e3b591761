"""Toeplitz Neural Network: coefficients from the RPE with decay, FFT equals the dense matrix, and
length extrapolation beyond max_len."""
from __future__ import annotations

import pytest
import torch

import mixers


def test_coefficients_are_the_decayed_rpe_of_each_lag():
    torch.manual_seed(0)
    m = mixers.build("tnn", 8, 16, expand_ratio=1.0, rpe_dim=8, rpe_layers=2, gamma=0.9)
    a = m.coefficients(5)  # (channels, lags)
    with torch.no_grad():
        for lag in range(5):
            expected = 0.9**lag * m.rpe(torch.tensor([[float(lag)]]))[0]
            assert torch.allclose(a[:, lag], expected, atol=1e-6)


def test_tnn_layer_matches_the_definition():
    """y_t = W_o (silu(W_u x_t) * sum_{j <= t} a[t - j] silu(W_v x_j)), per channel."""
    torch.manual_seed(0)
    m = mixers.build("tnn", 4, 16, expand_ratio=2.0, rpe_dim=8, rpe_layers=1).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        u, v, a = torch.nn.functional.silu(m.u_proj(x[0])), torch.nn.functional.silu(m.v_proj(x[0])), m.coefficients(6)
        mixed = torch.stack([sum(a[:, t - j] * v[j] for j in range(t + 1)) for t in range(6)])
        assert torch.allclose(m(x)[0], m.o(u * mixed), atol=1e-10)


@pytest.mark.parametrize("n", [1, 7, 64, 100])
def test_fft_equals_dense(n):
    torch.manual_seed(n)
    fast = mixers.build("tnn", 16, 32, rpe_dim=16, rpe_layers=3)
    dense = mixers.build("tnn", 16, 32, rpe_dim=16, rpe_layers=3, impl="dense")
    dense.load_state_dict(fast.state_dict())
    x = torch.randn(2, n, 16)
    with torch.no_grad():
        a, b = fast(x), dense(x)
    assert float((a - b).norm() / b.norm()) < 1e-5


def test_trains_at_64_and_runs_at_512_beyond_max_len():
    """Coefficients come from the RPE for any lag: the layer built for max_len 64 runs at 512."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = mixers.build("tnn", 16, 64, rpe_dim=16, rpe_layers=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.randn(8, 64, 16, generator=gen)
    target = torch.roll(x, 1, dims=1)  # a causal task: the previous token
    target[:, 0] = 0
    losses = []
    for _ in range(20):
        loss = (m(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        long = torch.randn(2, 512, 16, generator=gen)
        y = m(long)
        assert y.shape == (2, 512, 16) and torch.isfinite(y).all()
        assert torch.allclose(y[:, :64], m(long[:, :64]), atol=1e-5)  # causal: the first 64 do not change


def test_decay_follows_the_authors_guidance_for_the_training_length():
    """tnn-pytorch: gamma 0.9 for sequences shorter than 100 tokens, else 0.99; a number fixes it."""
    assert mixers.build("tnn", 8, 1024, rpe_dim=8, rpe_layers=1, train_len=65).gamma == 0.9
    assert mixers.build("tnn", 8, 64, rpe_dim=8, rpe_layers=1, train_len=100).gamma == 0.99
    assert mixers.build("tnn", 8, 64, rpe_dim=8, rpe_layers=1).gamma == 0.9  # no train_len: max_len
    assert mixers.build("tnn", 8, 512, rpe_dim=8, rpe_layers=1).gamma == 0.99
    assert mixers.build("tnn", 8, 64, rpe_dim=8, rpe_layers=1, gamma=0.95, train_len=65).gamma == 0.95
    m = mixers.build("tnn", 8, 1024, rpe_dim=8, rpe_layers=1, train_len=65)
    with torch.no_grad():
        assert torch.allclose(m.coefficients(4), 0.9 ** torch.arange(4.0) * m.rpe(torch.arange(4.0)[:, None]).T)
