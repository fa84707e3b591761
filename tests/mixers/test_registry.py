"""Registry behaviour, clear errors, and the FLOP accounting every mixer reports."""
from __future__ import annotations

import pytest
import torch

import mixers
from tests.conftest import MIXER_CASES, case_mixer


def test_unknown_mixer_lists_the_valid_ones():
    with pytest.raises(mixers.UnknownMixerError) as err:
        mixers.build("transformer", 16, 32)
    for name in mixers.available():
        assert name in str(err.value)


def test_unknown_option_names_the_valid_options():
    with pytest.raises(TypeError, match="valid options: .*heads"):
        mixers.build("tmm", 16, 32, haeds=2)


@pytest.mark.parametrize("name", ["tmm", "attention"])
def test_d_model_not_divisible_by_heads(name):
    with pytest.raises(ValueError, match="heads"):
        mixers.build(name, 30, 32, heads=4)


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
def test_contract(case):
    mixer = mixers.build(case_mixer(case), 16, 64, **MIXER_CASES[case])
    assert isinstance(mixer, mixers.Mixer)
    assert mixer.backend and mixer.time_complexity != "?"
    terms = mixer.flop_terms(64)
    assert set(terms) <= {"matmul", "attention", "fft", "scan", "elementwise"}
    assert mixer.flops(64) == pytest.approx(sum(terms.values())) and mixer.flops(64) > 0
    assert mixer.flops(64) > mixer.flops(32)
    assert mixer(torch.randn(2, 5, 16)).shape == (2, 5, 16)


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
def test_declared_complexity_without_building_matches_the_instance(case):
    """The scaling benchmark declares variants it cannot build (CUDA-only kernels) from the class."""
    mixer = mixers.build(case_mixer(case), 16, 64, **MIXER_CASES[case])
    declared = type(mixer).declared_complexity(**MIXER_CASES[case])
    assert declared == {key: getattr(mixer, key) for key in declared}


def test_declared_complexity_follows_the_options():
    tmm = mixers.mixer_class("tmm")
    assert tmm.declared_complexity()["time_exponent"] == 1.0
    assert tmm.declared_complexity(impl="fused")["time_complexity"] == "O(n^2)"
    assert tmm.declared_complexity(impl="fused")["memory_exponent"] == 1.0
    assert tmm.declared_complexity(impl="dense")["memory_exponent"] == 2.0
    assert mixers.mixer_class("gltm").declared_complexity(pattern="square")["time_exponent"] == 1.5
