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
