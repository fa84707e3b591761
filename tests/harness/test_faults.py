"""Runs that do not finish are recorded as such (oom with sizes, diverged at step k, failed with the
traceback) and the sweep goes on; an interrupt (Ctrl-C, SIGTERM) writes nothing half-done."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from harness.run import faults

from harness.run import execute as run

from harness.run import train
from harness.run.execute import execute
from harness.run.records import load_records
from tasks.copy import CopyTask
from tests.harness.helpers import TINY, make_config

TINY_TMM = (*TINY, "mixer.heads=2")


def record_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []


def test_cuda_oom_is_recorded_with_the_sizes(tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.5 GiB is free.")

    monkeypatch.setattr(run, "train", oom)
    record = execute(make_config(*TINY_TMM, "train.batch_size=7", results_dir=tmp_path))
    assert record["status"] == "oom"
    assert record["error"].startswith("CUDA out of memory")
    assert record["sizes"]["requested_bytes"] == 2 * 2**30
    assert record["sizes"]["batch_size"] == 7 and record["sizes"]["d_model"] == 16
    assert record["sizes"]["max_input_len"] == 9 and record["sizes"]["params"] > 0
    assert json.loads((tmp_path / "runs" / record_files(tmp_path)[0]).read_text())["status"] == "oom"


def test_cpu_allocator_failure_counts_as_oom():
    err = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 400000000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert faults.is_out_of_memory(err) and not faults.is_out_of_memory(RuntimeError("shape mismatch"))
    assert faults.requested_bytes(str(err)) == 400000000000000


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_is_diverged_at_its_step(tmp_path, monkeypatch, bad):
    calls = {"n": 0}
    real = CopyTask.loss

    def loss_goes_bad_at_step_6(self, logits, batch):
        loss = real(self, logits, batch)
        if torch.is_grad_enabled():  # training steps only, not evaluation
            calls["n"] += 1  # call 1: the activation-memory measurement before step 0 (memory.saved_bytes)
            if calls["n"] >= 7:
                return loss * bad
        return loss

    monkeypatch.setattr(CopyTask, "loss", loss_goes_bad_at_step_6)
    record = execute(make_config(*TINY_TMM, "train.steps=10", "train.eval_every=4", results_dir=tmp_path))
    assert record["status"] == "diverged"
    assert record["diverged_step"] == 6  # found at the evaluation after step 8, reported where it happened
    assert str(bad) in record["error"]


def test_other_exceptions_are_failed_with_traceback_and_the_next_run_goes_on(tmp_path, monkeypatch):
    real = run.train

    def broken_once(*args, **kwargs):
        monkeypatch.setattr(run, "train", real)
        raise ValueError("boom in the training loop")

    monkeypatch.setattr(run, "train", broken_once)
    failed = execute(make_config(*TINY_TMM, "seed=0", results_dir=tmp_path))
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: boom in the training loop"
    assert "Traceback" in failed["traceback"] and "broken_once" in failed["traceback"]
    assert execute(make_config(*TINY_TMM, "seed=1", results_dir=tmp_path))["status"] == "ok"
    rerun = execute(make_config(*TINY_TMM, "seed=0", results_dir=tmp_path))  # failed runs are rerun
    assert rerun["status"] == "ok"
    records, problems = load_records(tmp_path / "runs")
    assert sorted(r["status"] for r in records) == ["ok", "ok"] and problems == []


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
def test_interrupt_stops_cleanly_and_keeps_finished_records(tmp_path, monkeypatch, interrupt):
    finished = execute(make_config(*TINY_TMM, "seed=0", results_dir=tmp_path))
    before = {p: p.read_bytes() for p in (tmp_path / "runs").iterdir()}
    real = CopyTask.loss

    def interrupted(self, logits, batch):
        if interrupt == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # handled by run.stop_on_sigterm: raises KeyboardInterrupt here
        return real(self, logits, batch)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        run.stop_on_sigterm()
        monkeypatch.setattr(CopyTask, "loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            execute(make_config(*TINY_TMM, "seed=1", results_dir=tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {p: p.read_bytes() for p in (tmp_path / "runs").iterdir()} == before  # nothing new, nothing touched
    assert finished["status"] == "ok"
