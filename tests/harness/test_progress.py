"""The sweep's progress line: done, running, left, and an ETA from the trained runs' pace."""
from __future__ import annotations

from harness.launch.progress import SweepProgress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_eta_over_a_parallel_sweep_with_a_finished_run():
    clock = Clock()
    sweep = SweepProgress(5, finished=[["seed=0", "mixer=tmm"]], clock=clock)
    assert sweep.line() == "sweep: 0/5 done (0 trained), 0 running, 5 left; ETA —"
    assert sweep.started(["mixer=tmm", "seed=0"]).endswith("1 running, 4 left; ETA —")  # same job, any order
    assert sweep.ended(["mixer=tmm", "seed=0"]) == "sweep: 1/5 done (0 trained, 1 finished before), 0 running, 4 left; ETA —"
    sweep.started(["seed=1"])
    sweep.started(["seed=2"])  # two at once
    clock.now = 60.0
    # one trained run per minute of wall time so far, three still to train
    assert sweep.ended(["seed=1"]) == ("sweep: 2/5 done (1 trained, 1 finished before), 1 running, 2 left; "
                                       "ETA 3 min 0 s")
    clock.now = 80.0
    line = sweep.ended(["seed=2"], ok=False)
    assert line == "sweep: 3/5 done (1 trained, 1 failed, 1 finished before), 0 running, 2 left; ETA 1 min 20 s"


def test_duration_reads_as_a_person_would():
    assert [duration(s) for s in (4.4, 61, 3725)] == ["4 s", "1 min 1 s", "1 h 2 min"]
