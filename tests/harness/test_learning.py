"""Tiny models really learn tiny copy tasks, through the real harness, in seconds."""
from __future__ import annotations

import time

import pytest

from harness.run import execute
from tests.harness.helpers import make_config

SHORT_COPY = ("task.max_train_len=8", "task.eval_lengths=[4,8]", "task.eval_samples=128")


@pytest.mark.parametrize("mixer,protocol,steps", [
    ("attention", "fixed", 300), ("tmm", "fixed", 300), ("attention", "variable", 1000),
])
def test_tiny_model_learns_copy(tmp_path, mixer, protocol, steps):
    cfg = make_config(f"mixer={mixer}", f"task.protocol={protocol}", f"train.steps={steps}", *SHORT_COPY,
                      results_dir=tmp_path)
    started = time.perf_counter()
    record = execute(cfg)
    elapsed = time.perf_counter() - started
    assert record["status"] == "ok", record.get("error")
    assert record["final"]["eval"]["L8"]["accuracy"] >= 0.95, record["final"]["eval"]
    assert elapsed < 60, f"took {elapsed:.0f} s"
