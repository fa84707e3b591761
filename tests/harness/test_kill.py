"""Kill a 6-run sweep during its third run, start it again: exactly the missing runs execute, and
no record is lost, duplicated, changed or half-written. Ctrl-C (SIGINT to the process group)
stops it the same way, cleanly, with exit code 130."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [str(s) for s in range(6)]


def sweep_command(results: Path, logs: Path) -> list[str]:
    # runs of ~0.5 s each, so that the kill lands inside run 3's training
    return [sys.executable, "-m", "harness.run", "-m", "train=test", *TINY, "mixer.heads=2", "train.steps=60",
            "train.eval_every=20", f"seed={','.join(SEEDS)}", f"results_dir={results}", f"hydra.sweep.dir={logs}"]


def interactive() -> None:
    """Ctrl-C's default in the child: a suite started in the background (``&``, nohup) passes on an
    ignored SIGINT, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=interactive, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def snapshot(runs: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(runs.iterdir())} if runs.exists() else {}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_sweep_resumes_with_exactly_the_missing_runs(tmp_path, sig):
    runs = tmp_path / "runs"
    proc = start(sweep_command(tmp_path, tmp_path / "logs1"))
    started, lines, deadline = 0, [], time.monotonic() + 300  # a hang guard; a loaded machine is slow
    try:
        for line in proc.stdout:
            lines.append(line)
            if "[mixbench][INFO] - run " in line:
                started += 1
                if started == 3:  # run 3 has begun training
                    os.killpg(proc.pid, sig)  # the whole sweep, as Ctrl-C in a terminal or a node failure would
                    break
            assert time.monotonic() < deadline, "".join(lines[-20:])
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines)
    assert started == 3, output[-3000:]
    if sig == signal.SIGINT:  # a clean stop: says so and exits 130
        assert proc.returncode == 130, output[-3000:]
        assert "interrupted" in output and "finished records are intact" in output
    before = snapshot(runs)
    assert len(before) == 2 and all(name.endswith(".json") for name in before), sorted(before)  # nothing half-written
    assert all(json.loads(text)["status"] == "ok" for text in before.values())
    if sig == signal.SIGINT:
        return  # resuming is the same after either; the SIGKILL case checks it

    resumed = subprocess.run(sweep_command(tmp_path, tmp_path / "logs2"), cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert "preflight: 6 runs, configs valid; 2 finished (skipped unless force=true), 4 to run" in log
    assert log.count("[mixbench][INFO] - skip: ") == 2
    assert log.count("[mixbench][INFO] - run ") == 4
    after = snapshot(runs)
    assert {k: after[k] for k in before} == before  # finished records untouched
    records = [json.loads(text) for text in after.values()]
    assert len(after) == 6 and all(name.endswith(".json") for name in after)
    assert sorted(str(r["config"]["seed"]) for r in records) == SEEDS  # none lost, none twice
    assert len({r["id"] for r in records}) == 6 and all(r["status"] == "ok" for r in records)
