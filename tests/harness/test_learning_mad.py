"""Tiny attention models learn tiny instances of MAD's tasks through the real harness, in seconds."""
from __future__ import annotations

import pytest
import torch

from harness.run.execute import execute
from tests.harness.helpers import make_config


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_attention_learns_a_small_memorization_map(tmp_path):
    # 7 keys, a fixed training set of 64 examples holding every key; guessing a value: 1 / 8
    cfg = make_config("task=memorization", "mixer=attention", "train.threads=1", "mixer.heads=2", "model.d_model=32",
                      "task.vocab_size=16", "task.seq_len=8", "task.num_train_examples=64", "task.eval_samples=128",
                      "train.steps=200", "train.batch_size=32", "train.eval_every=200", results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["final"]["eval"]["test"]["accuracy"] >= 0.95, record["final"]["eval"]


def test_attention_learns_to_compress_a_short_sequence_into_its_last_state(tmp_path):
    # 3 tokens of 3 symbols then the compression token, given back from the last state (readout 'last')
    cfg = make_config("task=compression", "mixer=attention", "train.threads=1", "mixer.heads=2", "model.d_model=32",
                      "task.vocab_size=4", "task.seq_len=4", "task.num_train_examples=null", "task.eval_samples=128",
                      "train.steps=300", "train.batch_size=32", "train.eval_every=300", results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["final"]["eval"]["test"]["accuracy"] >= 0.95, record["final"]["eval"]  # guessing: 1/3 (+ the last)
    assert record["recipe"]["readout"] == "last" and record["flops_per_sequence"]["readout"] > 0
