"""Decoding one token at a time from a prefilled state gives the parallel forward's outputs."""
from __future__ import annotations

import pytest
import torch

import mixers
from harness.run.model import SequenceModel
from tests.conftest import MIXER_CASES, case_mixer

DECODABLE = [c for c in sorted(MIXER_CASES) if mixers.build(case_mixer(c), 16, 8, **MIXER_CASES[c]).supports_decode]


def test_every_mixer_but_the_transformers_reference_decodes():
    assert set(DECODABLE) == set(MIXER_CASES) - {"mamba-v1"}


@pytest.mark.parametrize("case", DECODABLE)
@pytest.mark.parametrize("prompt", [1, 5, 17])
def test_prefill_then_step_equals_forward(case, prompt):
    torch.manual_seed(0)
    mixer = mixers.build(case_mixer(case), 16, 32, **MIXER_CASES[case]).double().eval()
    with torch.no_grad():  # non-zero per-position biases, so their indexing is checked too
        for p in mixer.parameters():
            if p.dim() == 2 and p.shape[-1] == 32:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :prompt])
        assert torch.allclose(y, full[:, :prompt], atol=1e-10)
        for t in range(prompt, 24):
            y_t, state = mixer.step(x[:, t], state)
            assert torch.allclose(y_t, full[:, t], atol=1e-9), (case, t)


@pytest.mark.parametrize("mixer,options", [("tmm", {"heads": 2}), ("attention", {"heads": 2}),
                                           ("hyena", {"filter_width": 8}),
                                           ("mamba", {"impl": "torch", "d_state": 8, "headdim": 8, "chunk_size": 4})])
def test_model_decode_logits_equal_parallel_logits(mixer, options):
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer=mixer, mixer_options=options)
    model = model.double().eval()
    tokens = torch.randint(0, 11, (3, 20))
    with torch.no_grad():
        full = model(tokens)
        logits, states = model.prefill(tokens[:, :6])
        assert torch.allclose(logits, full[:, :6], atol=1e-10)
        for t in range(6, 20):
            step_logits, states = model.decode(tokens[:, t], states)
            assert torch.allclose(step_logits, full[:, t], atol=1e-9)


@pytest.mark.parametrize("case", DECODABLE)
def test_state_size(case):
    mixer = mixers.build(case_mixer(case), 16, 64, **MIXER_CASES[case])
    if mixer.state_exponent == 0:  # a fixed-size state, or a cache that stops growing (sliding windows)
        assert mixer.state_size(30) == mixer.state_size(60) > 0
    else:
        assert mixer.state_size(60) > mixer.state_size(10) > 0  # grows with the context
