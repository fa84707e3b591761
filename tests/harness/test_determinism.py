"""The same config and seed give identical evaluation sets and identical metrics on CPU; records
say whether deterministic algorithms were on."""
from __future__ import annotations

import torch

from harness.run.config import make_task
from harness.run.execute import execute
from tests.harness.helpers import TINY, make_config

TIMES = ("train_time_s", "wall_s")


def without_times(point: dict) -> dict:
    return {k: v for k, v in point.items() if k not in TIMES}


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    overrides = (*TINY, "mixer=attention", "mixer.heads=2", "task.eval_lengths=[2,4,8]")
    a = execute(make_config(*overrides, results_dir=tmp_path / "a"))
    b = execute(make_config(*overrides, results_dir=tmp_path / "b"))
    assert a["id"] == b["id"] and a["status"] == b["status"] == "ok"
    assert [without_times(p) for p in a["curve"]] == [without_times(p) for p in b["curve"]]  # exact, not approx
    assert without_times(a["final"]) == without_times(b["final"])
    assert a["train_flops"] == b["train_flops"]
    other_seed = execute(make_config(*overrides, "seed=1", results_dir=tmp_path / "a"))
    assert other_seed["final"]["train_loss"] != a["final"]["train_loss"]  # the seed matters


def test_evaluation_sets_are_the_same_for_every_run():
    sets = [make_task(make_config(*TINY, f"seed={seed}", f"task.protocol={p}")["task"]).eval_sets()
            for seed in (0, 1) for p in ("variable", "fixed")]
    for other in sets[1:]:
        assert other.keys() == sets[0].keys()
        for name, batch in sets[0].items():
            assert torch.equal(batch.inputs, other[name].inputs) and torch.equal(batch.mask, other[name].mask)


def test_records_state_whether_deterministic_algorithms_were_on(tmp_path):
    try:
        on = execute(make_config(*TINY, "mixer.heads=2", "deterministic=true", results_dir=tmp_path))
        assert on["environment"]["deterministic_algorithms"] is True
        off = execute(make_config(*TINY, "mixer.heads=2", results_dir=tmp_path))  # a reused process resets it
        assert off["environment"]["deterministic_algorithms"] is False
        assert on["id"] != off["id"]
        assert without_times(on["final"]) == without_times(off["final"])  # CPU kernels are deterministic anyway
    finally:
        torch.use_deterministic_algorithms(False)
