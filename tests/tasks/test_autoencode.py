"""The autoencode task: targets are the inputs (delay positions later), every such position scored."""
from __future__ import annotations

import pytest
import torch

import tasks
from tasks.base import TaskConfigError


@pytest.mark.parametrize("delay", [0, 3])
def test_targets_are_the_inputs_delay_positions_back(delay):
    task = tasks.build("autoencode", vocab_size=10, seq_len=12, delay=delay)
    batch = task.train_batch(4, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 12) and int(batch.inputs.max()) < 10
    assert torch.equal(batch.targets[:, delay:], batch.inputs[:, : 12 - delay])
    assert batch.mask[:, delay:].all() and not batch.mask[:, :delay].any()


def test_perfect_logits_score_one_and_evaluation_sets_are_fixed():
    task = tasks.build("autoencode", vocab_size=5, seq_len=6, eval_samples=7)
    sets, again = task.eval_sets(), task.eval_sets()
    assert list(sets) == ["L6"] and torch.equal(sets["L6"].inputs, again["L6"].inputs) and len(sets["L6"]) == 7
    batch = sets["L6"]
    logits = torch.nn.functional.one_hot(batch.targets, 5).float()
    assert task.metrics(logits, batch)["exact_match"].eq(1).all()


@pytest.mark.parametrize("options, field", [({"vocab_size": 1}, "vocab_size"), ({"seq_len": 0}, "seq_len"),
                                            ({"delay": 8, "seq_len": 8}, "delay"), ({"eval_samples": 0}, "eval_samples")])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=f"task.{field}"):
        tasks.build("autoencode", **options)
