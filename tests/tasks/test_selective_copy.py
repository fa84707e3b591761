"""Selective copying (Mamba / MAD): exact layout, scored positions, determinism, errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.selective_copy import assemble_selective_copy


def test_layout_by_hand():
    # data 3 1 at context positions 1 and 4 of 6, noise 8, copy 9: the model emits 3 1 after the separator
    batch = assemble_selective_copy(torch.tensor([[3, 1]]), torch.tensor([[1, 4]]), seq_len=9, noise=8, copy=9)
    assert batch.inputs.tolist() == [[8, 3, 8, 8, 1, 8, 9, 8, 8]]
    assert batch.targets.tolist() == [[0, 0, 0, 0, 0, 0, 0, 3, 1]]
    assert batch.mask.tolist() == [[False] * 7 + [True, True]]


def test_mask_covers_exactly_the_outputs_and_data_come_in_order(generator):
    task = build_task("selective_copy", seq_len=40, num_tokens=5)
    b = task.train_batch(64, generator)
    assert b.inputs.shape == (64, 40) and (b.mask.sum(1) == 5).all() and b.mask[:, -5:].all()
    assert (b.inputs[:, 34] == task.copy).all() and (b.inputs[:, 35:] == task.noise).all()
    context = b.inputs[:, :34]
    for row in range(64):
        data = context[row][context[row] != task.noise]
        assert data.tolist() == b.targets[row, -5:].tolist()
    assert (context != task.noise).sum(1).eq(5).all()


def test_deterministic_and_fixed_eval_sets():
    task = build_task("selective_copy", seq_len=40, num_tokens=5, eval_lengths=[40, 80], eval_samples=8)
    a, b = task.train_batch(4, torch.Generator().manual_seed(2)), task.train_batch(4, torch.Generator().manual_seed(2))
    assert torch.equal(a.inputs, b.inputs)
    sets = task.eval_sets()
    assert list(sets) == ["L40", "L80"] and sets["L80"].inputs.shape == (8, 80)
    assert torch.equal(sets["L40"].inputs, task.eval_sets()["L40"].inputs)
    assert task.in_distribution("L40") and not task.in_distribution("L80")


@pytest.mark.parametrize("options,field", [
    ({"seq_len": 33, "num_tokens": 16}, "task.seq_len"),
    ({"vocab_size": 2}, "task.vocab_size"),
    ({"num_tokens": 0}, "task.num_tokens"),
    ({"eval_lengths": [20]}, "task.eval_lengths"),
])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("selective_copy", **options)
