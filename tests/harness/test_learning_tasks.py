"""Tiny models really learn the new tasks, through the real harness, in seconds."""
from __future__ import annotations

import pytest
import torch

from harness.run.execute import execute
from tests.harness.helpers import make_config


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and do not fight other jobs for the cores; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_attention_solves_mqar_with_two_pairs(tmp_path):
    cfg = make_config("task=mqar", "mixer=attention", "train.threads=1", "mixer.heads=2", "model.d_model=32", "task.vocab_size=64",
                      "task.train_settings=[[16,2]]", "task.train_weights=[1]", "task.test_settings=[[16,2]]",
                      "task.eval_samples=256", "train.steps=500", "train.batch_size=128", "train.eval_every=500",
                      results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["final"]["eval"]["L16-kv2"]["accuracy"] >= 0.9, record["final"]["eval"]  # guessing: 0.5


def test_icl_regression_error_falls_below_the_zero_predictor(tmp_path):
    cfg = make_config("task=icl_regression", "mixer=attention", "train.threads=1", "task.n_dims=4", "task.n_points=9",
                      "task.eval_samples=512", "train.steps=200", "train.batch_size=128", "train.eval_every=200",
                      results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    e = record["final"]["eval"]["prompts"]
    model = sum(e[f"err_k{k}"] for k in range(1, 9)) / 8
    zero = sum(e[f"zero_k{k}"] for k in range(1, 9)) / 8
    assert model < 0.85 * zero, (model, zero)  # least squares: 0 from 4 examples on
