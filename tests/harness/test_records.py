"""Records: ids from configs, atomic writes, skip-if-finished, statuses for failures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.run import records
from harness.run.execute import execute
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


def test_record_names_the_backend_of_the_model_on_its_run_device(tmp_path, monkeypatch):
    """impl=auto mixers pick their kernels by device (fla, Triton on CUDA): the backend is read after the move."""
    from harness.run.model import SequenceModel
    move = SequenceModel.to

    def to(self, *args, **kwargs):
        self.moved = True
        return move(self, *args, **kwargs)

    monkeypatch.setattr(SequenceModel, "to", to)
    monkeypatch.setattr(SequenceModel, "backend",
                        property(lambda self: "moved" if getattr(self, "moved", False) else "built"))
    assert execute(make_config(*TINY, results_dir=tmp_path))["backend"] == "moved"


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


def test_keys_added_later_keep_old_ids_at_their_default(tmp_path):
    cfg = make_config(*TINY, results_dir=tmp_path)
    old = {k: v for k, v in cfg.items() if k not in ("deterministic", "gpu")}  # a config from before those keys
    assert records.run_id(old) == records.run_id(cfg)
    assert records.run_id({**cfg, "deterministic": True}) != records.run_id(cfg)
    assert records.run_id({**cfg, "gpu": {"jobs_per_gpu": 4, "lock_dir": "/elsewhere"}}) == records.run_id(cfg)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-a-record", "ok-without-final", "unknown-status"])
def test_corrupt_or_partial_record_is_reported_with_its_path_and_rerun(tmp_path, damage):
    cfg = make_config(*TINY, results_dir=tmp_path)
    path = records.record_path(tmp_path / "runs", cfg)
    first = execute(cfg)
    text = path.read_text()
    broken = {"truncated": text[: len(text) // 2], "empty": "", "not-a-record": "[1, 2]",
              "ok-without-final": json.dumps({k: v for k, v in first.items() if k != "final"}),
              "unknown-status": json.dumps({**first, "status": "running"})}[damage]
    path.write_text(broken)
    found, problems = records.load_records(tmp_path / "runs")
    assert found == [] and [p for p, _ in problems] == [path]
    again = execute(cfg)
    assert again["status"] == "ok" and again["started"] >= first["started"]
    assert records.read_record(path)["id"] == first["id"]  # rewritten whole


def test_diverged_is_a_finished_result_but_failed_and_oom_are_rerun(tmp_path):
    cfg = make_config(*TINY, results_dir=tmp_path)
    path = records.record_path(tmp_path / "runs", cfg)
    base = {"id": records.run_id(cfg), "config": cfg, "started": "then"}
    records.write_atomic(path, {**base, "status": "diverged", "diverged_step": 3, "error": "loss is nan"})
    assert execute(cfg)["started"] == "then"
    for status in ("failed", "oom"):
        records.write_atomic(path, {**base, "status": status, "error": "x"})
        assert execute(cfg)["status"] == "ok"
        records.write_atomic(path, {**base, "status": status, "error": "x"})


def test_stray_temporary_files_are_not_records(tmp_path):
    runs = tmp_path / "runs"
    records.write_atomic(runs / "a.json", {"status": "oom", "config": {}, "error": "x"})
    (runs / ".a-x1y2.tmp").write_text('{"status": "o')  # left by a SIGKILL during a write
    found, problems = records.load_records(runs)
    assert len(found) == 1 and problems == []
    assert records.stray_temporaries(runs) == [runs / ".a-x1y2.tmp"]


def test_every_shipped_record_keeps_its_id():
    """Each record in results/published/runs/ is named by, and holds, the id its own config hashes to today."""
    runs = sorted((Path(__file__).resolve().parents[2] / "results" / "published" / "runs").glob("*.json"))
    assert runs, "no shipped records found"
    for path in runs:
        record = json.loads(path.read_text())
        assert record["id"] == records.run_id(record["config"]), path.name
        assert path.name == records.record_path(path.parent, record["config"]).name


def test_group_fields_added_later_keep_old_ids_at_their_default(tmp_path):
    cfg = make_config(*TINY, results_dir=tmp_path)
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "position"}}
    assert records.run_id(old) == records.run_id(cfg)
    assert records.run_id({**cfg, "model": {**cfg["model"], "position": "learned"}}) != records.run_id(cfg)
    regression = {**cfg, "task": {"name": "icl_regression", "n_dims": 8}}
    with_defaults = {**regression, "task": {**regression["task"], "curriculum": False, "curriculum_start_dims": 5,
                                            "curriculum_start_points": 11, "curriculum_interval": 2000}}
    assert records.run_id(with_defaults) == records.run_id(regression)
    on = {**with_defaults, "task": {**with_defaults["task"], "curriculum": True}}
    assert records.run_id(on) != records.run_id(regression)


def test_a_copy_record_says_the_decoding_state_in_bits_after_each_prompt(tmp_path):
    """``state_bits``: after ``[BOS] s [SEP]`` (L + 2 tokens) at each evaluation length, 32 bits a
    value; attention holds keys and values of every token read, in every layer."""
    cfg = make_config("mixer=attention", *TINY[:-2], "task.eval_lengths=[4,8]", "model.d_model=16", "mixer.heads=2",
                      results_dir=tmp_path)
    record = execute(cfg)
    layers, d = cfg["model"]["n_layers"], cfg["model"]["d_model"]
    assert record["state_bits"] == {f"L{n}": layers * 2 * (n + 2) * d * 32 for n in (4, 8)}
