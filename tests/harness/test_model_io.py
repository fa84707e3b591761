"""Continuous read-in / read-out: same blocks in between, token models unchanged."""
from __future__ import annotations

import torch

from harness.run.model import SequenceModel


def test_continuous_io_swaps_only_the_ends():
    torch.manual_seed(0)
    tokens = SequenceModel(vocab_size=20, d_model=32, n_layers=2, max_len=16, mixer="attention", mixer_options={"heads": 2})
    torch.manual_seed(0)
    vectors = SequenceModel(vocab_size=0, d_model=32, n_layers=2, max_len=16, mixer="attention",
                            mixer_options={"heads": 2}, input_dim=5, output_dim=1)
    assert isinstance(tokens.embed, torch.nn.Embedding) and tokens.head.bias is None
    assert vectors.embed.weight.shape == (32, 5) and vectors.head.weight.shape == (1, 32)
    # the blocks between the ends are the same modules with the same parameter shapes
    assert [p.shape for p in tokens.blocks.parameters()] == [p.shape for p in vectors.blocks.parameters()]
    out = vectors(torch.randn(3, 16, 5))
    assert out.shape == (3, 16, 1)
    counts = vectors.parameter_counts()
    assert counts["total"] - counts["non_embedding"] == (5 * 32 + 32) + (32 + 1)
    assert tokens.parameter_counts()["total"] - tokens.parameter_counts()["non_embedding"] == 2 * 20 * 32
    flops = vectors.flop_terms(16)
    assert flops["embedding"] > 0 and flops["head"] == 2 * 16 * 32 * 1 + 16


def test_continuous_model_is_causal():
    model = SequenceModel(vocab_size=0, d_model=32, n_layers=2, max_len=12, mixer="tmm", mixer_options={"heads": 2},
                          input_dim=4, output_dim=1)
    x = torch.randn(2, 12, 4)
    y = x.clone()
    y[:, 7:] = torch.randn(2, 5, 4)
    assert torch.allclose(model(x)[:, :7], model(y)[:, :7], atol=1e-5)


def test_learned_position_embedding_is_causal_decodes_as_parallel_and_errors_name_the_field():
    import pytest

    torch.manual_seed(0)
    model = SequenceModel(11, 16, 2, 12, "attention", position="learned").eval()
    plain = SequenceModel(11, 16, 2, 12, "attention")
    assert model.parameter_counts()["total"] - plain.parameter_counts()["total"] == 12 * 16
    assert model.parameter_counts()["non_embedding"] == plain.parameter_counts()["non_embedding"]
    tokens = torch.randint(0, 11, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        changed = tokens.clone()
        changed[:, 6:] = (changed[:, 6:] + 1) % 11
        assert torch.allclose(model(changed)[:, :6], full[:, :6], atol=1e-6)  # causal
        assert not torch.allclose(model(tokens[:, 1:])[:, 0], full[:, 1], atol=1e-3)  # position matters
        logits, states = model.prefill(tokens[:, :4])
        steps = [logits[:, -1]]
        for t in range(4, 10):
            step_logits, states = model.decode(tokens[:, t], states, position=t)
            steps.append(step_logits)
    assert torch.allclose(torch.stack(steps, 1), full[:, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="position"):
        model.decode(tokens[:, 0], states)
    with pytest.raises(ValueError, match="model.position"):
        SequenceModel(11, 16, 1, 12, "attention", position="sinusoidal")
