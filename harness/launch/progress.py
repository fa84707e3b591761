"""One line for the whole sweep, beside each run's own bar: runs done, running, left, and an ETA.

    sweep: 5/16 done (3 trained, 2 finished before), 2 running, 9 left; ETA 6 min 10 s

The preflight (``harness.launch.preflight``) starts it with the sweep's jobs and those already
finished (which a sweep skips); the launcher tells it when each job starts and ends: the basic
launcher through the preflight callback's ``on_job_start`` / ``on_job_end`` (jobs run in this
process), the isolated launcher from its slots (``harness.launch.isolated``). It is logged at each
start and end, so it reads the same in a terminal, a log file or a Slurm output. The ETA is the
wall time per trained run so far (which counts the runs in parallel) times the runs still to
train; none before the first trained run ends.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Iterable, Sequence

log = logging.getLogger("mixbench.sweep")


def job_key(overrides: Iterable[str]) -> tuple[str, ...]:
    """A job's identity within a sweep: its overrides, sorted."""
    return tuple(sorted(str(o) for o in overrides))


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class SweepProgress:
    """Counts of a sweep's jobs (thread-safe: the isolated launcher's slots report from threads)."""

    def __init__(self, total: int, finished: Sequence[Sequence[str]] = (), clock=time.monotonic):
        self.total, self.clock = total, clock
        self.finished_before = {job_key(o) for o in finished}
        self.running: dict[tuple[str, ...], float] = {}
        self.done = self.trained = self.failed = 0
        self.first_start: float | None = None
        self.lock = threading.Lock()
        self.pid = os.getpid()  # a copy in another process (a worker) stays silent

    def to_train(self) -> int:
        return self.total - len(self.finished_before)

    def line(self) -> str:
        left = self.total - self.done - len(self.running)
        skipped = self.done - self.trained - self.failed
        parts = [f"{self.trained} trained"] + ([f"{self.failed} failed"] if self.failed else []) + \
            ([f"{skipped} finished before"] if skipped else [])
        eta = "—"
        remaining = self.to_train() - self.trained - self.failed
        if self.trained + self.failed and self.first_start is not None:
            per_run = (self.clock() - self.first_start) / (self.trained + self.failed)
            eta = duration(max(0, remaining) * per_run)
        return (f"sweep: {self.done}/{self.total} done ({', '.join(parts)}), {len(self.running)} running, "
                f"{left} left; ETA {eta}")

    def started(self, overrides: Sequence[str]) -> str:
        with self.lock:
            key = job_key(overrides)
            self.running[key] = self.clock()
            if self.first_start is None and key not in self.finished_before:
                self.first_start = self.running[key]
            return self.line()

    def ended(self, overrides: Sequence[str], ok: bool = True) -> str:
        with self.lock:
            key = job_key(overrides)
            self.running.pop(key, None)
            self.done += 1
            if key not in self.finished_before:
                if ok:
                    self.trained += 1
                else:
                    self.failed += 1
            return self.line()


current: SweepProgress | None = None


def begin(total: int, finished: Sequence[Sequence[str]] = ()) -> SweepProgress:
    """Start this process's sweep line (the preflight calls it)."""
    global current
    current = SweepProgress(total, finished)
    log.info(current.line())
    return current


def job_started(overrides: Sequence[str]) -> None:
    if current is not None and current.pid == os.getpid():
        log.info(current.started(overrides))


def job_ended(overrides: Sequence[str], ok: bool = True) -> None:
    if current is not None and current.pid == os.getpid():
        log.info(current.ended(overrides, ok))
