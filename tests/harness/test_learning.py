"""Tiny models really learn tiny copy tasks, through the real harness.

No wall-clock assertion: these machines are noisy (a loaded 2-core CI box takes 3x longer), and the
suite's time is watched by CI's budget, not by a timed test."""
from __future__ import annotations

import pytest

from harness.run.execute import execute
from tests.harness.helpers import make_config

SHORT_COPY = ("task.max_train_len=8", "task.eval_lengths=[4,8]", "task.eval_samples=128")


@pytest.mark.parametrize("mixer,protocol,steps", [
    ("attention", "fixed", 300), ("tmm", "fixed", 300), ("attention", "variable", 1000),
])
def test_tiny_model_learns_copy(tmp_path, mixer, protocol, steps):
    cfg = make_config(f"mixer={mixer}", f"task.protocol={protocol}", f"train.steps={steps}", *SHORT_COPY,
                      results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["final"]["eval"]["L8"]["accuracy"] >= 0.95, record["final"]["eval"]
