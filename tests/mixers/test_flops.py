"""Analytic FLOPs against torch.utils.flop_counter.FlopCounterMode.

FlopCounterMode counts dense products (mm, addmm, bmm, matmul, einsum) and convolutions; it
reports 0 for FFTs, for elementwise work and, on CPU, for scaled_dot_product_attention. So the
analytic ``matmul`` term (per sequence x batch, plus per-pass parameter FLOPs) must equal what it
counts, within 1%; the other terms are checked by hand-derived cases.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mixers
from harness.run.model import SequenceModel
from mixers.ops import flops as F
from tests.conftest import MIXER_CASES, case_mixer


def counted_forward_flops(module: torch.nn.Module, *inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
@pytest.mark.parametrize("n", [16, 61])
def test_matmul_term_equals_counted_flops(case, n):
    batch, d = 3, 32
    opts = dict(MIXER_CASES[case])
    mixer = mixers.build(case_mixer(case), d, 64, **opts)
    counted = counted_forward_flops(mixer, torch.randn(batch, n, d))
    analytic = batch * mixer.flop_terms(n).get("matmul", 0.0) + mixer.parameter_flop_terms(n).get("matmul", 0.0)
    assert counted == pytest.approx(analytic, rel=0.01), (counted, analytic)


@pytest.mark.parametrize("mixer", ["tmm", "attention", "hyena", "mamba"])
def test_backbone_matmul_terms_equal_counted_flops(mixer):
    options = {"mamba": {"impl": "torch", "d_state": 16, "headdim": 16}}.get(mixer, {})
    model = SequenceModel(vocab_size=29, d_model=32, n_layers=2, max_len=64, mixer=mixer, mixer_options=options)
    n, batch = 40, 2
    counted = counted_forward_flops(model, torch.randint(0, 29, (batch, n)))
    terms = model.flop_terms(n)
    hidden = model.blocks[0].mlp.hidden
    backbone = 2 * (F.linear(n, 32, hidden) + F.linear(n, hidden, 32)) + F.linear(n, 32, 29)
    mixer_matmul = sum(m.flop_terms(n).get("matmul", 0.0) for m in model.mixer_modules)
    param_matmul = sum(m.parameter_flop_terms(n).get("matmul", 0.0) for m in model.mixer_modules)
    assert counted == pytest.approx(batch * (backbone + mixer_matmul) + param_matmul, rel=0.01)
    assert terms["embedding"] == 0.0  # a lookup


def test_attention_scores_by_hand():
    m = mixers.build("attention", 8, 16, heads=2)
    # 4 causal pairs ((0,0),(1,0),(1,1) ... n=2 gives 3 pairs); QK and AV each 2 * pairs * d
    assert m.flop_terms(2)["attention"] == 2 * 2 * 3 * 8


def test_fft_cost_convention():
    assert F.fft_size(1) == 1 and F.fft_size(7) == 16 and F.fft_size(64) == 128
    assert F.real_fft(128) == pytest.approx(2.5 * 128 * 7)
    # a signal's rfft, the product over 65 bins and the irfft
    assert F.fft_causal_conv(64, 1) == pytest.approx(2 * 2.5 * 128 * 7 + 6 * 65)


def test_training_step_is_three_forwards():
    model = SequenceModel(vocab_size=29, d_model=16, n_layers=1, max_len=32, mixer="tmm", mixer_options={"heads": 2})
    assert model.step_flops(4, 20) == pytest.approx(3 * (4 * model.flops(20) + model.parameter_flops(20)))
