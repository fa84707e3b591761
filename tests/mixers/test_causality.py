"""Every mixer is strictly causal: perturbing positions >= t leaves outputs before t unchanged."""
from __future__ import annotations

import pytest
import torch

import mixers
from tests.conftest import MIXER_CASES, case_mixer


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
@pytest.mark.parametrize("t", [1, 2, 13, 31])
def test_perturbing_the_future_leaves_the_past_unchanged(case, t):
    torch.manual_seed(0)
    d_model, n = 16, 32
    mixer = mixers.build(case_mixer(case), d_model, 40, **MIXER_CASES[case]).double().eval()
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(2, n, d_model, generator=gen, dtype=torch.float64)
    x2 = x.clone()
    x2[:, t:] += torch.randn(2, n - t, d_model, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    assert y.shape == (2, n, d_model)
    scale = y.abs().max()
    # FFT paths mix all positions in floating point: exact causality up to float64 rounding
    assert (y[:, :t] - y2[:, :t]).abs().max() <= 1e-10 * scale
    assert (y[:, t:] - y2[:, t:]).abs().max() > 1e-6 * scale  # the future did change something


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
def test_gradient_of_an_early_output_ignores_later_inputs(case):
    torch.manual_seed(1)
    mixer = mixers.build(case_mixer(case), 16, 24, **MIXER_CASES[case]).double()
    x = torch.randn(1, 24, 16, dtype=torch.float64, requires_grad=True)
    mixer(x)[0, 10].sum().backward()
    grad = x.grad[0].abs().sum(-1)
    assert grad[11:].max() <= 1e-10 * grad[:11].max()
    assert grad[:11].max() > 0
