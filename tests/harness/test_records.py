"""Records: ids from configs, atomic writes, skip-if-finished, statuses for failures."""
from __future__ import annotations

import json
import os

import pytest

from harness import records
from harness.run import execute
from tests.harness.helpers import make_config

TINY = ("train.steps=4", "train.eval_every=2", "train.warmup_steps=1", "task.max_train_len=4", "task.eval_lengths=[4]",
        "task.eval_samples=8", "model.d_model=16", "mixer.heads=2")


def test_run_id_ignores_where_results_go_but_not_what_runs(tmp_path):
    a = make_config(*TINY, results_dir=tmp_path / "a")
    b = make_config(*TINY, results_dir=tmp_path / "b")
    c = make_config(*TINY, "seed=1", results_dir=tmp_path / "a")
    assert records.run_id(a) == records.run_id(b) != records.run_id(c)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    records.write_atomic(path, {"status": "ok", "config": {}})

    def broken_dump(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        records.write_atomic(path, {"status": "ok", "config": {"new": 1}})
    assert json.loads(path.read_text()) == {"status": "ok", "config": {}}  # old record intact
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind


def test_finished_run_is_skipped_unless_forced(tmp_path):
    cfg = make_config(*TINY, results_dir=tmp_path)
    first = execute(cfg)
    assert first["status"] == "ok"
    again = execute(cfg)
    assert again["started"] == first["started"]  # read back, not rerun
    forced = execute({**cfg, "force": True})
    assert forced["id"] == first["id"]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1


def test_record_contents(tmp_path):
    record = execute(make_config(*TINY, results_dir=tmp_path))
    assert record["backend"] == "torch-fft"
    assert record["params"]["total"] > record["params"]["mixer"] > 0
    assert record["environment"]["packages"]["torch"]
    assert record["memory"]["peak_bytes"] > 0
    assert record["throughput"]["tokens_per_s"] > 0
    assert record["train_flops"] > 0
    assert [p["step"] for p in record["curve"]] == [2, 4]
    assert record["config"]["train"]["profile"] == "test"


def test_divergence_is_recorded_not_raised(tmp_path):
    record = execute(make_config(*TINY, "train.lr=1e6", "train.grad_clip=0", "train.steps=40", "train.eval_every=5",
                                 results_dir=tmp_path))
    assert record["status"] == "diverged"
    assert 1 <= record["diverged_step"] <= 40


def test_unreadable_record_is_reported_with_its_path(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "broken.json").write_text('{"status": "ok", "conf')
    found, problems = records.load_records(runs)
    assert found == [] and problems[0][0] == runs / "broken.json"
