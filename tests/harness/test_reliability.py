"""Faults a hostile user or a bad machine causes, each kept from losing a result or writing where it
must not: out of memory while building, failed forced reruns, unwritable results, blow-ups on the
last update, forged records, planted symlinks, path-like names, the umask, concurrent sweeps, and
the one-line messages for bad input. (Kills of whole sweeps: test_kill.py and test_kill_parallel.py.)"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat

import pytest
import torch
from omegaconf import OmegaConf

from harness.launch.preflight import check_run, n_jobs_problem
from harness.report import cli
from harness.run import config as config_module
from harness.run import gpus, records
from harness.run import train as train_module
from harness.run.config import ConfigError, yaml_error_line
from harness.run.execute import execute, finished_record
from harness.run.faults import CPU_OOM
from tests.harness.helpers import TINY, make_config

CPU_OOM_MESSAGE = f"[enforce fail at alloc_cpu.cpp:118] data. {CPU_OOM}: you tried to allocate 400000000000 bytes."


def run_config(tmp_path, *overrides):
    return make_config(*TINY, "mixer.heads=2", *overrides, results_dir=tmp_path)


@pytest.fixture
def huge_models_oom(monkeypatch):
    """Building a model with d_model=100000 fails as the CPU allocator would (without allocating)."""
    real = config_module.SequenceModel

    def build(*args, **kwargs):
        if kwargs.get("d_model") == 100000:
            raise RuntimeError(CPU_OOM_MESSAGE)
        return real(*args, **kwargs)

    monkeypatch.setattr(config_module, "SequenceModel", build)


def test_oom_while_building_is_an_oom_record(tmp_path, huge_models_oom):
    record = execute(run_config(tmp_path, "model.d_model=100000"))
    assert record["status"] == "oom"
    assert record["sizes"]["while"] == "building the model" and record["sizes"]["requested_bytes"] == 400000000000
    on_disk = records.read_record(records.record_path(tmp_path / "runs", record["config"]))
    assert on_disk["status"] == "oom" and on_disk["id"] == record["id"]


def test_preflight_notes_oom_at_build_and_raises_only_config_errors(tmp_path, huge_models_oom, monkeypatch):
    assert check_run(run_config(tmp_path, "model.d_model=100000")) == "oom"  # not a configuration error
    assert check_run(run_config(tmp_path)) == "to run"
    with pytest.raises(ConfigError, match="train.lr: must be > 0"):
        check_run(run_config(tmp_path, "train.lr=-1"))

    def broken(*args, **kwargs):
        raise KeyError("something unforeseen")

    monkeypatch.setattr("harness.launch.preflight.check_forward", broken)
    with pytest.raises(ConfigError, match="building the model raised KeyError"):
        check_run(run_config(tmp_path))


def test_a_failed_forced_rerun_keeps_the_finished_record(tmp_path, monkeypatch, caplog, capsys):
    cfg = run_config(tmp_path)
    first = execute(cfg)
    path = records.record_path(tmp_path / "runs", cfg)
    kept = path.read_bytes()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("harness.run.execute.train", oom)
    with caplog.at_level(logging.WARNING, logger="mixbench"):
        rerun = execute({**cfg, "force": True})
    assert first["status"] == "ok" and rerun["status"] == "oom"
    assert path.read_bytes() == kept  # the finished result is intact
    beside = records.reruns_of(path)
    assert len(beside) == 1 and json.loads(beside[0].read_text())["rerun_of"] == path.name
    assert "is kept" in caplog.text and str(beside[0]) in caplog.text  # the log says so
    assert finished_record(path, force=False)["status"] == "ok"  # the sweep still skips it
    capsys.readouterr()
    cli.main(["--benchmark", "none", f"results_dir={tmp_path}"])  # the listing comes first (no plots drawn here)
    printed = capsys.readouterr().out
    assert "failed forced rerun kept beside the finished record" in printed and "oom" in printed  # the report too


def test_unwritable_results_folder_stops_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr("harness.run.execute.train", lambda *a, **k: pytest.fail("trained into an unwritable folder"))
    with pytest.raises(ConfigError, match="results_dir: records cannot be written"):
        execute(make_config(*TINY, "mixer.heads=2", results_dir=blocker / "results"))
    assert records.check_writable(blocker / "results" / "runs") is not None
    assert records.check_writable(tmp_path / "new" / "runs") is None
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_folder_stops_before_training(tmp_path):
    (tmp_path / "runs").mkdir()
    os.chmod(tmp_path / "runs", 0o555)
    try:
        with pytest.raises(ConfigError, match="results_dir: records cannot be written"):
            execute(run_config(tmp_path))
    finally:
        os.chmod(tmp_path / "runs", 0o755)


def test_blow_up_on_the_last_update_is_diverged_and_records_are_strict_json(tmp_path, monkeypatch):
    from harness.run.step import StepRunner
    real_step = StepRunner.__call__

    def last_step_blows_up(self, batch, step):
        loss = real_step(self, batch, step)
        if step + 1 == self.model_steps:  # a finite loss, then weights that are not
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("inf"))
        return loss

    monkeypatch.setattr(StepRunner, "__call__", last_step_blows_up)
    monkeypatch.setattr(StepRunner, "model_steps", run_config(tmp_path)["train"]["steps"], raising=False)
    record = execute(run_config(tmp_path))
    assert record["status"] == "diverged" and record["diverged_step"] == 4
    assert "evaluation" in record["error"]
    text = records.record_path(tmp_path / "runs", record["config"]).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_non_finite_numbers_are_written_as_null_and_old_nan_records_still_read(tmp_path):
    path = tmp_path / "r.json"
    records.write_atomic(path, {"status": "failed", "config": {}, "error": "x", "value": math.nan, "more": [math.inf]})
    assert json.loads(path.read_text())["value"] is None and json.loads(path.read_text())["more"] == [None]
    old = tmp_path / "old.json"
    old.write_text('{"status": "diverged", "config": {}, "diverged_step": 3, "loss": NaN}')
    assert math.isnan(records.read_record(old)["loss"])


def test_a_record_copied_onto_another_runs_name_is_forged(tmp_path):
    a, b = run_config(tmp_path), run_config(tmp_path, "seed=1")
    execute(a)
    path_a, path_b = records.record_path(tmp_path / "runs", a), records.record_path(tmp_path / "runs", b)
    shutil.copy(path_a, path_b)
    with pytest.raises(ValueError, match="forged or misnamed record"):
        records.read_record(path_b)
    assert finished_record(path_b, force=False) is None  # the sweep reruns it
    loaded, problems = records.load_records(tmp_path / "runs")
    assert [r["_path"] for r in loaded] == [str(path_a)]  # the report counts one seed, not two
    assert [p for p, _ in problems] == [path_b]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_records_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        records.write_atomic(tmp_path / "r.json", {"status": "failed", "config": {}, "error": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o666 & ~mask


def test_gpu_lock_files_never_follow_symlinks(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    gpus.lock_path(lock_dir, "g0", 0).symlink_to(victim)
    with pytest.raises(OSError):
        gpus.acquire(["g0"], 1, lock_dir, timeout_s=0)
    assert victim.read_text() == "precious\n"


def test_gpu_lock_folder_is_private_and_owned(tmp_path):
    fresh = gpus.private_lock_dir(tmp_path / "fresh")
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(gpus.LockDirError, match="writable by others"):
        gpus.acquire(["g0"], 1, shared, timeout_s=0)
    (tmp_path / "link").symlink_to(fresh)
    with pytest.raises(gpus.LockDirError, match="not a folder"):
        gpus.private_lock_dir(tmp_path / "link")
    if os.geteuid() == 0:  # only root can give a folder away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, 12345)
        with pytest.raises(gpus.LockDirError, match="belongs to user 12345"):
            gpus.private_lock_dir(theirs)
    assert OmegaConf.select(OmegaConf.create({"u": "${user_id:}"}), "u") == os.getuid()  # the default folder is per user


def test_report_paths_from_records_stay_inside_the_results_folder(tmp_path, capsys):
    """A record whose benchmark or profile is a path (written by hand: configs refuse them) writes nothing outside."""
    results = tmp_path / "results"
    for benchmark, profile in (("../../escaped", "cpu"), ("adhoc", "../../escaped"), ("adhoc", "/tmp/escaped")):
        cfg = run_config(results)
        cfg = {**cfg, "benchmark": benchmark, "train": {**cfg["train"], "profile": profile}}
        records.write_atomic(records.record_path(results / "runs", cfg),
                             {"id": records.run_id(cfg), "status": "failed", "config": cfg, "error": "x"})
        assert cli.main(["--benchmark", benchmark, f"results_dir={results}"]) == 1
        assert "not reported" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert not any(p.name.startswith("escaped") for p in results.rglob("*"))
    with pytest.raises(ValueError):
        records.results_folder(results, "../x")


def test_report_of_an_unknown_benchmark_exits_non_zero(tmp_path, capsys):
    cfg = run_config(tmp_path)
    records.write_atomic(records.record_path(tmp_path / "runs", cfg),
                         {"id": records.run_id(cfg), "status": "failed", "config": cfg, "error": "x"})
    assert cli.main(["--benchmark", "copy_benchmrk", f"results_dir={tmp_path}"]) == 1
    assert "no records match benchmark 'copy_benchmrk'" in capsys.readouterr().out


def test_a_run_in_flight_elsewhere_is_skipped(tmp_path, monkeypatch):
    """A second sweep over the same folder: the run whose lock another process holds is not computed twice."""
    cfg = run_config(tmp_path)
    other = records.RunLock(records.record_path(tmp_path / "runs", cfg))  # flock: held against any other open
    assert other.acquire()
    monkeypatch.setattr("harness.run.execute.train", lambda *a, **k: pytest.fail("computed a run in flight"))
    try:
        assert execute(cfg)["status"] == "in_flight"
        assert not records.record_path(tmp_path / "runs", cfg).exists()
    finally:
        other.release()
    assert not any((tmp_path / "locks").iterdir())  # a released lock leaves no file
    again = records.RunLock(records.record_path(tmp_path / "runs", cfg))
    assert again.acquire()  # and the run can be taken again
    again.release()


def test_one_line_messages_for_launcher_and_yaml_mistakes(tmp_path):
    assert "hydra.launcher.n_jobs: must be an integer >= 1" in n_jobs_problem(OmegaConf.create({"n_jobs": 0}))
    assert n_jobs_problem(OmegaConf.create({"n_jobs": 2})) is None and n_jobs_problem(None) is None
    import yaml

    broken = tmp_path / "broken.yaml"
    broken.write_text("benchmark: x\ntrain:\n  steps: [1, 2\n")
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load(broken.open())
    try:
        raise RuntimeError("while composing") from caught.value  # Hydra wraps it, or lets it through
    except RuntimeError as wrapped:
        line = yaml_error_line(wrapped)
    assert str(broken) in line and "line 3" in line and "\n" not in line
    assert yaml_error_line(ValueError("not YAML")) is None


def test_hydra_logs_go_under_the_results_folder_one_per_process():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_module.CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["results_dir=/somewhere"], return_hydra_config=True)
        run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
    assert run_dir.startswith("/somewhere/logs/") and sweep_dir.startswith("/somewhere/logs/")
    assert f"-{os.getpid()}" in run_dir and sweep_dir.endswith(f"-{os.getpid()}-multirun")


def test_options_that_build_but_cannot_run_stop_before_training_unrecorded(tmp_path, monkeypatch):
    """The forward check stays a configuration error now that building is inside the recorded part."""
    from harness.run.model import SequenceModel

    def cannot_run(self, inputs):
        raise RuntimeError("shape mismatch inside the mixer")

    monkeypatch.setattr(SequenceModel, "forward", cannot_run)
    with pytest.raises(ConfigError, match=r"mixer \(tmm\): builds but cannot run a forward pass \(RuntimeError"):
        execute(run_config(tmp_path))
    assert not (tmp_path / "runs").exists()
