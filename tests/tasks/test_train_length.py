"""``Task.max_train_input_len``: the longest training input, which length-dependent mixer setups follow."""
from __future__ import annotations

import pytest
import torch

from harness.run.config import load, make_task


@pytest.mark.parametrize("task, longer_eval", [("copy", True), ("mqar_cpu", True), ("selective_copy", False),
                                               ("icl_regression", False)])
def test_training_batches_reach_but_never_pass_the_declared_length(task, longer_eval):
    t = make_task(load([f"task={task}"])["task"])
    gen = torch.Generator().manual_seed(0)
    widths = {t.train_batch(8, gen).inputs.shape[1] for _ in range(30)}
    assert max(widths) == t.max_train_input_len()
    assert (t.max_train_input_len() < t.max_input_len()) == longer_eval
