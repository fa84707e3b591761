"""Faults of whole sweeps, run as a user would: a parallel sweep whose worker is killed (as the OOM
killer would) loses only that run, recorded as failed, and goes on; when the launching process is
killed (``kill -9``), its workers exit instead of training on as orphans. A sweep with a model too
large to build and an invalid run stops before anything trains, naming the invalid run. A config
file with a YAML syntax error is named in one line."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.helpers import TINY
from tests.harness.test_kill import ROOT, start

# building a model with d_model=100000 fails as the CPU allocator would, without allocating
OOM_AT_BUILD = """
import runpy, sys
import harness.run.config as config
real = config.SequenceModel
def build(*args, **kwargs):
    if kwargs.get("d_model") == 100000:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 400000000000 bytes.")
    return real(*args, **kwargs)
config.SequenceModel = build
sys.argv = ["harness.run", *sys.argv[1:]]
runpy.run_module("harness.run", run_name="__main__", alter_sys=True)
"""


def workers_of(parent: int) -> list[int]:
    """The loky worker processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"popen_loky" in command:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_worker_costs_its_run_only_and_orphans_exit_with_the_parent(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "harness.run", "-m", "train=test", *TINY, "mixer.heads=2", "train.steps=60",
               "train.eval_every=30", "seed=0,1,2,3", "hydra/launcher=cpu_parallel", "hydra.launcher.n_jobs=2",
               "train.threads=1", f"results_dir={tmp_path}"]
    proc = start(command)
    started, lines, deadline = 0, [], time.monotonic() + 240
    killed_worker, orphans, lost = None, [], ""
    try:
        for line in proc.stdout:
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines[-20:])
            if "[mixbench][INFO] - run " in line:
                started += 1
                if started == 1:  # a worker trains: kill it, as the OOM killer would
                    killed_worker = workers_of(proc.pid)[0]
                    os.kill(killed_worker, signal.SIGKILL)
            if "recorded as failed" in line:
                lost = line
            elif lost and "[mixbench][INFO] - ok: " in line:
                orphans = workers_of(proc.pid)  # the other worker went on; now kill the launching process alone
                os.kill(proc.pid, signal.SIGKILL)
                break
        gone_by = time.monotonic() + 10
        while any(alive(p) for p in orphans) and time.monotonic() < gone_by:
            time.sleep(0.2)
        survivors = [p for p in orphans if alive(p)]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, so that the test never leaks processes
        proc.wait()
    output = "".join(lines)
    assert orphans and not survivors, output[-3000:]  # the orphaned workers exited within 10 s
    assert "worker process running it died" in lost, output[-3000:]
    records = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    statuses = sorted(r["status"] for r in records)
    assert statuses.count("failed") == 1 and statuses.count("ok") >= 1, statuses  # the killed run only
    failed = next(r for r in records if r["status"] == "failed")
    assert "died" in failed["error"]
    assert all(p.suffix == ".json" for p in runs.iterdir())


def test_oom_at_build_with_an_invalid_run_stops_before_training_naming_it(tmp_path):
    command = [sys.executable, "-c", OOM_AT_BUILD, "-m", "train=test", *TINY, "mixer.heads=2",
               "model.d_model=16,100000", "train.lr=0.001,-1", f"results_dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert done.returncode == 2, log[-3000:]
    assert "out of memory while building the model here; it will be recorded as oom" in log
    assert re.search(r"preflight: .*train\.lr=-1 .*-> configuration error: train\.lr: must be > 0", log)
    assert "2 of 4 runs have configuration errors; nothing was run" in log
    assert "Traceback" not in log and "[mixbench][INFO] - run " not in log
    assert not (tmp_path / "runs").exists()


def test_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    (tmp_path / "cfg" / "experiment").mkdir(parents=True)
    broken = tmp_path / "cfg" / "experiment" / "broken.yaml"
    broken.write_text("benchmark: x\ntrain:\n  steps: [1, 2\n")
    done = subprocess.run([sys.executable, "-m", "harness.run", "--config-dir", str(tmp_path / "cfg"),
                           "+experiment=broken", f"results_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and str(broken) in message[0] and "line 3" in message[0], done.stderr
