"""The overhead script measures a real run against a bare loop and prints its table."""
from __future__ import annotations

import pytest
import torch

from harness.bench import overhead
from harness.run.config import load, make_model, validate
from harness.run.train import train
from tests.harness.helpers import TINY


def test_overhead_table_accounts_for_the_run():
    rows = dict(overhead.measure(["train=test", *TINY, "mixer.heads=2"], repeats=1, with_startup=False))
    total, pure = rows["= run total (compose to record)"], rows["= run total (compose to record)"] - rows[
        "= harness overhead (total - pure training)"]
    assert total > 0 and pure == rows["pure training (bare loop, same batches)"] > 0
    parts = [v for k, v in rows.items() if not k.startswith(("[per process]", "="))]
    assert abs(sum(parts) - total) < 0.05 * total + 0.05  # the parts add up to the run (up to untimed glue)
    text = overhead.table(list(rows.items()))
    assert "evaluation (learning curve + final)" in text and "% of run" in text


@pytest.mark.parametrize("task", ["copy", "icl_regression"])  # icl_regression has its own (squared-error) loss
def test_the_bare_loop_trains_exactly_as_a_run_does(task):
    """The overhead's pure-training loop and ``train`` share one step: the same weights after it."""
    extra = ("task.n_dims=3", "task.n_points=6") if task == "icl_regression" else ("task.max_train_len=4", "task.eval_lengths=[4]")
    cfg = load(["train=test", f"task={task}", "model.d_model=16", "mixer.heads=2", "train.steps=3",
                "train.eval_every=3", "train.warmup_steps=1", "train.progress=false", "task.eval_samples=4", *extra])
    _, bare = overhead.bare_training(cfg)
    task_obj, tc = validate(cfg)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg["model"], cfg["mixer"], task_obj)
    train(model, task_obj, tc, torch.device("cpu"), torch.Generator().manual_seed(cfg["seed"]))
    for (name, a), b in zip(model.named_parameters(), bare.parameters()):
        assert torch.equal(a, b), name
