"""The copy task: exact format, scored positions, determinism, protocols and clear errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.copy import copy_sequences


def test_format_by_hand():
    symbols = torch.tensor([[3, 1, 4], [2, 7, 0]])
    batch = copy_sequences(symbols, torch.tensor([3, 2]), bos=10, sep=11, pad=12)
    # full sequences: [BOS 3 1 4 SEP 3 1 4] and [BOS 2 7 SEP 2 7 PAD PAD]
    assert batch.inputs.tolist() == [[10, 3, 1, 4, 11, 3, 1], [10, 2, 7, 11, 2, 7, 12]]
    assert batch.targets.tolist() == [[3, 1, 4, 11, 3, 1, 4], [2, 7, 11, 2, 7, 12, 12]]
    assert batch.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]]


def test_mask_covers_exactly_the_copy(generator):
    task = build_task("copy", max_train_len=12)
    batch = task.train_batch(64, generator)
    for inputs, targets, mask in zip(batch.inputs, batch.targets, batch.mask):
        sep = int((inputs == task.sep).nonzero())
        length = sep - 1
        assert mask.sum() == length
        assert mask.nonzero().flatten().tolist() == list(range(sep, sep + length))
        # the scored targets are the string itself, in order
        assert targets[mask].tolist() == inputs[1 : 1 + length].tolist()
        assert (inputs[mask.nonzero().flatten()[1:]] == targets[mask][:-1]).all()


def test_deterministic_from_the_seed():
    task = build_task("copy")
    a = task.train_batch(8, torch.Generator().manual_seed(5))
    b = task.train_batch(8, torch.Generator().manual_seed(5))
    c = task.train_batch(8, torch.Generator().manual_seed(6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs[:, :5], c.inputs[:, :5])


def test_eval_sets_are_fixed_and_independent_of_the_run():
    one, two = build_task("copy").eval_sets(), build_task("copy", protocol="fixed").eval_sets()
    assert list(one) == ["L8", "L16", "L32", "L64", "L128"]
    for name in one:
        assert torch.equal(one[name].inputs, two[name].inputs)
    assert one["L128"].inputs.shape == (256, 257)


def test_protocols(generator):
    fixed = build_task("copy", protocol="fixed", max_train_len=10).train_batch(32, generator)
    assert (fixed.mask.sum(1) == 10).all()
    variable = build_task("copy", protocol="variable", min_len=2, max_train_len=10).train_batch(256, generator)
    lengths = variable.mask.sum(1)
    assert lengths.min() == 2 and lengths.max() == 10


@pytest.mark.parametrize("options,field", [
    ({"protocol": "random"}, "task.protocol"),
    ({"alphabet_size": 1}, "task.alphabet_size"),
    ({"min_len": 0}, "task.min_len"),
    ({"min_len": 10, "max_train_len": 5}, "task.max_train_len"),
    ({"eval_lengths": []}, "task.eval_lengths"),
])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("copy", **options)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: .*copy"):
        build_task("kopy")


def test_eos_format_by_hand():
    symbols = torch.tensor([[3, 1, 4], [2, 7, 0]])
    batch = copy_sequences(symbols, torch.tensor([3, 2]), bos=10, sep=11, pad=12, eos=13)
    # [BOS 3 1 4 SEP 3 1 4 EOS] and [BOS 2 7 SEP 2 7 EOS PAD PAD]
    assert batch.inputs.tolist() == [[10, 3, 1, 4, 11, 3, 1, 4], [10, 2, 7, 11, 2, 7, 13, 12]]
    assert batch.targets.tolist() == [[3, 1, 4, 11, 3, 1, 4, 13], [2, 7, 11, 2, 7, 13, 12, 12]]
    assert batch.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]]
    task = build_task("copy", eos=True, eval_lengths=[4])
    assert task.vocab_size == 26 + 4 and task.max_input_len() == 2 * 32 + 2
    b = task.eval_sets()["L4"]
    logits = torch.nn.functional.one_hot(b.targets, task.vocab_size).float()
    assert task.metrics(logits, b)["exact_match"].eq(1).all()
    wrong_end = logits.clone()
    wrong_end[:, 9] = 0  # position 9 predicts the EOS after a copy of 4
    assert task.metrics(wrong_end, b)["exact_match"].eq(0).all()  # the string-level match needs the EOS


def test_packing_by_hand():
    from tasks.copy import pack_examples
    symbols = torch.tensor([[1, 2], [3, 0], [4, 5], [6, 7]])  # two rows of two examples
    lengths = torch.tensor([2, 1, 2, 2])
    examples = copy_sequences(symbols, lengths, bos=8, sep=9, pad=10, eos=11)
    packed = pack_examples(examples, lengths, per_row=2, row_length=11)
    B, S, E = 8, 9, 11
    # row 0: [B 1 2 S 1 2 E] [B 3 S 3 E] = 12 tokens: both whole; row 1: [B 4 5 S 4 5 E] [B 6 7 S ...] cut
    assert packed.inputs.tolist() == [[B, 1, 2, S, 1, 2, E, B, 3, S, 3], [B, 4, 5, S, 4, 5, E, B, 6, 7, S]]
    assert packed.targets.tolist() == [[1, 2, S, 1, 2, E, B, 3, S, 3, E], [4, 5, S, 4, 5, E, B, 6, 7, S, 6]]
    assert packed.mask.int().tolist() == [[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]]


def test_packed_training_rows(generator):
    task = build_task("copy", eos=True, packed_length=120, min_len=5, max_train_len=20)
    b = task.train_batch(16, generator)
    assert b.inputs.shape == (16, 120) and (b.inputs != task.pad).all()  # rows full, no padding
    assert (b.targets[b.mask] < task.sep).sum() + (b.targets[b.mask] == task.eos_token).sum() == b.mask.sum()
    assert b.mask.sum(1).min() >= 2 * 5 + 1  # at least one whole example scored per row
    for options, field in [({"packed_length": 120}, "task.packed_length"),
                           ({"eos": True, "packed_length": 10}, "task.packed_length")]:
        with pytest.raises(TaskConfigError, match=field):
            build_task("copy", **options)


def test_state_bits_beside_string_bits():
    from harness.run.model import SequenceModel
    from tasks.copy import string_bits
    assert string_bits(100, 26) == pytest.approx(100 * 4.70044, rel=1e-5)
    attention = SequenceModel(29, 16, 2, 64, "attention")
    assert attention.state_bits(50, 16) == 2 * (2 * 50 * 16) * 16  # keys and values, two layers, 16 bits
    mamba = SequenceModel(29, 16, 2, 64, "mamba", {"impl": "torch", "d_state": 8, "headdim": 8})
    assert mamba.state_bits(50) == mamba.state_bits(500)  # a fixed-size state: copying must fail past some L
