"""The backbone's readout 'last' (MAD's compression decoder): sinusoidal positions as mad-lab's, FLOPs
against a hand count and the dense part against FlopCounterMode, no decoding, a clear error for others."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.run.model import LastStateDecoder, SequenceModel, sinusoidal_positions
from mixers.ops import flops as F


def test_sinusoidal_positions_by_hand():
    table = sinusoidal_positions(3, 5)  # half 2: frequencies 1 and 1e-4; a zero column for the odd width
    t = torch.arange(3.0)
    expected = torch.stack([torch.sin(t), torch.sin(t * 1e-4), torch.cos(t), torch.cos(t * 1e-4), torch.zeros(3)], 1)
    assert torch.allclose(table, expected, atol=1e-6)
    assert math.isclose(float(sinusoidal_positions(2, 4)[1, 0]), math.sin(1.0), rel_tol=1e-6)


def test_decoder_flops_and_parameters():
    n, d = 12, 16
    decoder = LastStateDecoder(d, 20, "layernorm")
    hand = n * d + 2 * (F.layer_norm(n, d) + F.linear(n, d, d) + n * d + 4.0 * n * d)
    assert decoder.flops(n) == pytest.approx(hand)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        decoder(torch.randn(1, n, d))
    assert counter.get_total_flops() == pytest.approx(2 * F.linear(n, d, d))
    plain = SequenceModel(8, d, 1, 20, "attention", {"heads": 2})
    last = SequenceModel(8, d, 1, 20, "attention", {"heads": 2}, readout="last")
    assert last.flops(n) - plain.flops(n) == pytest.approx(hand) and last.flop_terms(n)["readout"] == hand
    assert last.parameter_counts()["total"] - plain.parameter_counts()["total"] == 2 * (d * d + d) + 2 * (2 * d)


def test_unknown_readout_and_decoding_are_refused():
    with pytest.raises(ValueError, match="readout must be one of sequence, last"):
        SequenceModel(8, 16, 1, 20, "attention", {"heads": 2}, readout="first")
    model = SequenceModel(8, 16, 1, 20, "attention", {"heads": 2}, readout="last")
    with pytest.raises(ValueError, match="readout 'last'"):
        model.decode(torch.zeros(1, dtype=torch.long), [{}])


def test_compiled_steps_never_pad_a_model_that_reads_the_last_position():
    import contextlib

    import tasks
    from harness.run.step import StepRunner

    task = tasks.build("compression", vocab_size=8, seq_len=12, num_train_examples=None, eval_samples=4)
    model = SequenceModel(8, 16, 1, 12, "attention", {"heads": 2}, readout="last")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    runner = StepRunner("compile", model, task, optimizer, [1e-3], lambda step: 1.0, 0.0, contextlib.nullcontext,
                        torch.device("cpu"))
    runner._compiled = runner._forward_loss  # the padding decision is what is tested, not inductor
    batch = task.train_batch(2, torch.Generator().manual_seed(0))
    short = type(batch)(batch.inputs[:, -5:], batch.targets[:, -5:], batch.mask[:, -5:])  # 5 of the 12 positions
    runner(short, 0)
    assert runner.info["buckets"] == [5]  # not 8: padding would move the last position
