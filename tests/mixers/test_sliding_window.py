"""Sliding-window attention: the blocked O(n w) form equals the masked dense reference."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.ops.sliding_window import sliding_window_blocked, sliding_window_dense


@pytest.mark.parametrize("n,window", [(1, 4), (5, 8), (8, 8), (9, 8), (37, 8), (64, 16), (50, 1), (100, 3)])
def test_blocked_equals_dense(n, window):
    gen = torch.Generator().manual_seed(n * 13 + window)
    q, k, v = (torch.randn(2, 3, n, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    assert torch.allclose(sliding_window_blocked(q, k, v, window), sliding_window_dense(q, k, v, window), atol=1e-12)


def test_a_query_sees_exactly_its_window():
    torch.manual_seed(0)
    m = mixers.build("sliding_window_attention", 16, 64, heads=2, window=5).double().eval()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 10] += 1.0  # visible from positions 10..14 only
    with torch.no_grad():
        changed = (m(x) - m(x2)).abs().amax(-1)[0] > 1e-12
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13, 14]


def test_a_window_longer_than_the_input_is_causal_attention():
    torch.manual_seed(0)
    window = mixers.build("sliding_window_attention", 16, 64, heads=2, window=64)
    full = mixers.build("attention", 16, 64, heads=2)
    full.load_state_dict(window.state_dict())
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        assert torch.allclose(window(x), full(x), atol=1e-6)


def test_module_blocked_equals_dense():
    torch.manual_seed(0)
    blocked = mixers.build("sliding_window_attention", 16, 64, heads=2, window=7)
    dense = mixers.build("sliding_window_attention", 16, 64, heads=2, window=7, impl="dense")
    dense.load_state_dict(blocked.state_dict())
    x = torch.randn(2, 45, 16)
    with torch.no_grad():
        assert torch.allclose(blocked(x), dense(x), atol=1e-6)
