"""Parallel runs on one machine, each job isolated from the others' faults (the ``cpu_parallel`` and
``gpu_parallel`` launchers, conf/hydra/launcher/).

joblib's loky pool shares one executor among all jobs: when the OOM killer (or anyone) kills one
worker, the executor breaks, every job in flight is lost and the sweep aborts. Here each of the
``n_jobs`` slots has an executor of its own with one worker process (reused from job to job, so a
worker imports torch once): a worker that dies costs only the job it ran, which is recorded as
``failed`` (``harness.run.execute.record_lost_run``); its slot starts a fresh worker and the sweep
goes on. At the end the sweep reports the lost jobs (exit status 1), like any failed job. Each job's
start and end update the sweep's progress line (``harness.launch.progress``: done, running, left, ETA).

Each worker watches its parent (``watch_parent``): when the launching process dies (``kill -9``,
a closed terminal), the worker exits within a second instead of training on, and starting new
runs, as an orphan. The run it was in writes nothing (an interrupted write leaves at most a
temporary file; ``harness.report`` lists those), and the same command later runs what is missing.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import OmegaConf, open_dict, read_write

from harness.launch import progress

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a worker looks at its parent


class RunLost(RuntimeError):
    """The worker process running a job died (killed, out of memory); the job was recorded as failed."""


def parent_alive(parent_pid: int) -> bool:
    """Whether this process still has ``parent_pid`` as its parent (a dead parent's children are re-parented)."""
    return os.getppid() == parent_pid


def watch_parent(parent_pid: int, poll_s: float = POLL_S) -> threading.Thread | None:
    """A daemon thread that ends this process (exit status 1) once ``parent_pid`` is no longer its
    parent. Started once per process; returns it (None when already watching)."""
    if getattr(watch_parent, "started", None) == os.getpid():
        return None
    watch_parent.started = os.getpid()

    def watch() -> None:
        while parent_alive(parent_pid):
            time.sleep(poll_s)
        log.error("the sweep's launching process (pid %d) is gone: this worker (pid %d) stops; "
                  "the run in flight writes nothing", parent_pid, os.getpid())
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def run_job_here(parent_pid: int, *args: Any) -> JobReturn:
    """In a worker: watch the parent, then run the job as joblib's launcher does."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    watch_parent(parent_pid)
    return execute_job(*args)


def n_slots(n_jobs: int, n_runs: int) -> int:
    """joblib's meaning of ``n_jobs`` (negative: all CPUs but ``-n_jobs - 1``), at most one slot per run."""
    if n_jobs < 0:
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return max(1, min(n_jobs, n_runs))


def lost_job(launcher, idx: int, overrides: Sequence[str], err: BaseException) -> JobReturn:
    """Record the job whose worker died as ``failed``; its ``JobReturn`` fails with ``RunLost``."""
    from harness.run.config import to_dict
    from harness.run.execute import record_lost_run

    reason = f"the worker process running it died ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.num = idx
    task_cfg = OmegaConf.create(OmegaConf.to_container(sweep_config, resolve=False))
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    try:
        where = record_lost_run(to_dict(task_cfg), reason)
        note = f"recorded as failed: {where}" if where else "not recorded (its record exists or it is in flight elsewhere)"
    except Exception as record_err:  # noqa: BLE001 - a config that cannot be read back still fails the job below
        note = f"could not be recorded ({type(record_err).__name__}: {record_err})"
    message = f"job #{idx} ({' '.join(filter_overrides(overrides))}): {reason}; {note}"
    log.error(message)
    return JobReturn(overrides=list(overrides), cfg=task_cfg, hydra_cfg=None, working_dir=None, task_name="run",
                     status=JobStatus.FAILED, _return_value=RunLost(message))


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """Run ``job_overrides`` on ``n_jobs`` isolated slots; one ``JobReturn`` per job, in order."""
    from joblib.externals.loky.process_executor import BrokenProcessPool, ProcessPoolExecutor

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    slots = n_slots(int(launcher.joblib.get("n_jobs", -1)), len(job_overrides))
    log.info("launching %d jobs on %d isolated worker processes, sweep output dir: %s", len(job_overrides), slots,
             sweep_dir)
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
    singleton_state = Singleton.get_state()
    pending = list(enumerate(job_overrides))
    results: list[JobReturn | None] = [None] * len(job_overrides)
    executors: list[Any] = [None] * slots
    taken = threading.Lock()

    def slot(i: int) -> None:
        while True:
            with taken:
                if not pending:
                    return
                idx, overrides = pending.pop(0)
            if executors[i] is None:
                executors[i] = ProcessPoolExecutor(max_workers=1)
            job = (initial_job_idx + idx, overrides, launcher.hydra_context, launcher.config,
                   launcher.task_function, singleton_state)
            progress.job_started(overrides)
            try:
                results[idx] = executors[i].submit(run_job_here, os.getpid(), *job).result()
            except BrokenProcessPool as err:  # this slot's worker died: its job only
                executors[i].shutdown(wait=False, kill_workers=True)
                executors[i] = None
                results[idx] = lost_job(launcher, initial_job_idx + idx, overrides, err)
            except Exception as err:  # noqa: BLE001 - the job could not be sent or its result not read back
                results[idx] = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=err)
            except BaseException:  # noqa: BLE001 - Ctrl-C reached the worker: the main thread stops the sweep
                return
            progress.job_ended(overrides, results[idx].status == JobStatus.COMPLETED)

    threads = [threading.Thread(target=slot, args=(i,), name=f"slot-{i}", daemon=True) for i in range(slots)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)  # wakes up for Ctrl-C
    finally:
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=False, kill_workers=True)
    return [r for r in results if r is not None]
