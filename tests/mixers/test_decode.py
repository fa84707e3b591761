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
def test_state_size_grows_as_declared(case):
    mixer = mixers.build(case_mixer(case), 16, 64, **MIXER_CASES[case])
    if mixer.state_exponent == 0:  # a fixed-size state, or a cache that stops growing (sliding windows)
        assert mixer.state_size(30) == mixer.state_size(60) > 0
    else:
        assert mixer.state_size(60) > mixer.state_size(10) > 0  # grows with the context


def state_leaves(state, path: str = "state") -> list[tuple[str, object]]:
    """Every leaf of a decoding state (nested dicts, lists, tuples) with its path."""
    if isinstance(state, dict):
        return [leaf for key, value in state.items() for leaf in state_leaves(value, f"{path}[{key!r}]")]
    if isinstance(state, (list, tuple)):
        return [leaf for i, value in enumerate(state) for leaf in state_leaves(value, f"{path}[{i}]")]
    return [(path, state)]


def values_held(state, other_state, batch: int) -> int:
    """Values held per sequence by ``state``, given the same mixer's state after a different input
    ``other_state`` of the same length: the size of every tensor that depends on the input (complex values
    count two reals), per sequence. What does not depend on the input is no held value: a step counter
    (a function of position), a Python number, a filter computed once from the parameters."""
    leaves, others = state_leaves(state), state_leaves(other_state)
    assert [p for p, _ in leaves] == [p for p, _ in others], "the state's structure depends on the input"
    total = 0
    for (path, value), (_, other) in zip(leaves, others):
        if not isinstance(value, torch.Tensor) or (value.shape == other.shape and torch.equal(value, other)):
            continue
        assert value.is_floating_point() or value.is_complex(), f"{path}: an input-dependent {value.dtype} tensor"
        assert value.dim() >= 1 and value.shape[0] == batch, f"{path} {tuple(value.shape)} depends on the input but has no leading batch axis"
        total += value[0].numel() * (2 if value.is_complex() else 1)
    return total


@pytest.mark.parametrize("case", DECODABLE)
@pytest.mark.parametrize("prompt", [1, 30])  # 30: past every case's sliding window (8)
def test_state_size_counts_the_values_decoding_holds(case, prompt):
    """``state_size(t)`` equals the values in the state that prefill returns after t tokens and that step
    returns after each further token (the tensors themselves, summed), beyond any sliding window too."""
    torch.manual_seed(prompt)
    batch = 3
    mixer = mixers.build(case_mixer(case), 16, 64, **MIXER_CASES[case]).eval()
    x, other = torch.randn(2, batch, prompt + 2, 16).unbind(0)
    with torch.no_grad():
        (_, state), (_, other_state) = mixer.prefill(x[:, :prompt]), mixer.prefill(other[:, :prompt])
        assert values_held(state, other_state, batch) == mixer.state_size(prompt), (case, prompt)
        for t in range(prompt, prompt + 2):
            (_, state), (_, other_state) = mixer.step(x[:, t], state), mixer.step(other[:, t], other_state)
            assert values_held(state, other_state, batch) == mixer.state_size(t + 1), (case, t + 1)


@pytest.mark.parametrize("mixer,options", [("attention", {"heads": 2}), ("h3", {"d_state": 8}), ("retnet", {"heads": 2})])
def test_model_state_bits_count_the_values_its_decoding_holds(mixer, options):
    """The backbone's count (every layer's mixer state and Zoology's short convolution) against its states."""
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer=mixer, mixer_options=options,
                          short_conv=3).eval()
    tokens, other = torch.randint(0, 11, (2, 3, 9)).unbind(0)
    with torch.no_grad():
        (_, states), (_, other_states) = model.prefill(tokens[:, :8]), model.prefill(other[:, :8])
        assert values_held(states, other_states, 3) * 32 == model.state_bits(8)
        (_, states), (_, other_states) = model.decode(tokens[:, 8], states), model.decode(other[:, 8], other_states)
        assert values_held(states, other_states, 3) * 32 == model.state_bits(9)
