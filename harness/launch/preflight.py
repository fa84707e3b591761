"""Before a sweep trains anything: expand it as Hydra's basic sweeper will, compose every run's
config, check every field (and build each model on CPU), and count the runs already finished.
One bad run stops the whole sweep here, with its overrides and the error, before any training.

Registered in conf/config.yaml as a Hydra callback (``hydra.callbacks.preflight``); it runs on the
launching machine for every launcher (basic, joblib, Slurm), so GPU availability is not checked.
It also checks that every results folder is writable and that the launcher's ``n_jobs`` is
meaningful. A model too large to build here (out of memory) is not a configuration error: the
run is noted, and records ``oom`` when it runs. The preflight raises nothing but its own clean
stop (``SystemExit(2)`` after one logged line per problem). It then starts the sweep's progress line
(``harness.launch.progress``), which the basic launcher's jobs update through ``on_job_start`` /
``on_job_end``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.launch import progress
from harness.run.config import ConfigError, check_forward, make_model, to_dict, validate
from harness.run.faults import is_out_of_memory
from harness.run.records import FINISHED, check_writable, read_record, record_path

log = logging.getLogger("mixbench")
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def job_overrides(config: DictConfig) -> list[list[str]]:
    """Every job's overrides: ``hydra.sweeper.params`` (from the experiment), then the command line;
    a key given on both takes the command line's values (narrow or extend it), a new key adds a
    dimension to the product. Exactly BasicSweeper's own expansion."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_run(cfg: dict) -> str:
    """Validate one resolved run config (``ConfigError`` if bad): ``"finished"`` when a finished record
    exists, ``"oom"`` when its model is too large to build here (it will record ``oom``), else ``"to run"``."""
    task, _ = validate(cfg, check_device=False)
    try:
        model = make_model(cfg["model"], cfg["mixer"], task)
        if cfg["device"] == "cpu" or not torch.cuda.is_available():  # GPU runs check on their GPU (kernels may need it)
            check_forward(model, task, torch.device("cpu"), cfg["mixer"])
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - out of memory is the run's to record; anything else is a problem here
        if is_out_of_memory(err):
            return "oom"
        raise ConfigError(f"building the model raised {type(err).__name__}: {err}") from None
    finally:
        model = None  # noqa: F841
    path = record_path(Path(cfg["results_dir"]) / "runs", cfg)
    if cfg["force"] or not path.exists():
        return "to run"
    try:
        return "finished" if read_record(path)["status"] in FINISHED else "to run"
    except (OSError, ValueError):
        return "to run"


def n_jobs_problem(launcher: DictConfig | None) -> str | None:
    """A one-line problem with the launcher's ``n_jobs`` (joblib: an integer >= 1, or negative: all CPUs but some)."""
    if launcher is None or "n_jobs" not in launcher:
        return None
    n_jobs = launcher.n_jobs
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0:
        return f"hydra.launcher.n_jobs: must be an integer >= 1 (parallel runs; -1: one per CPU), got {n_jobs!r}"
    return None


def preflight(config: DictConfig, config_name: str | None) -> tuple[int, int, list[tuple[list[str], str]]]:
    """``(runs, finished, problems)`` of the sweep that ``config`` describes (runs too large to build
    here are logged and counted with those to run)."""
    jobs, finished, problems = preflight_jobs(config, config_name)
    return len(jobs), len(finished), problems


def preflight_jobs(config: DictConfig, config_name: str | None) -> tuple[list[list[str]], list[list[str]],
                                                                          list[tuple[list[str], str]]]:
    """``(jobs, finished jobs, problems)``: every job's overrides, those of the jobs already finished,
    and each job's configuration problem."""
    jobs = job_overrides(config)
    finished, problems, folders = [], [], {}
    for overrides in jobs:
        try:
            cfg = to_dict(compose(config_name=config_name, overrides=overrides))
            state = check_run(cfg)
            folders.setdefault(str(Path(cfg["results_dir"]) / "runs"), overrides)
        except ConfigError as err:
            problems.append((overrides, str(err)))
            continue
        if state == "finished":
            finished.append(overrides)
        if state == "oom":
            log.warning("preflight: %s -> out of memory while building the model here; it will be recorded as oom",
                        " ".join(overrides))
    for folder, overrides in folders.items():
        problem = check_writable(Path(folder))
        if problem:
            problems.append((overrides, problem))
    return jobs, finished, problems


class Preflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.sweeper.get("_target_") != BASIC:
            log.info("preflight: skipped (it knows the basic sweeper only)")
            return
        problem = n_jobs_problem(config.hydra.get("launcher"))
        if problem:
            log.error("preflight: configuration error: %s; nothing was run", problem)
            raise SystemExit(2)
        try:
            jobs, finished_jobs, problems = preflight_jobs(config, kwargs.get("config_name"))
            runs, finished = len(jobs), len(finished_jobs)
        except Exception as err:  # noqa: BLE001 - the preflight's own clean stop, never a traceback
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.error("preflight: could not check the sweep (%s: %s); nothing was run", type(err).__name__, first)
            raise SystemExit(2) from None
        for overrides, error in problems:
            log.error("preflight: %s -> configuration error: %s", " ".join(overrides), error)
        if problems:
            log.error("preflight: %d of %d runs have configuration errors; nothing was run", len(problems), runs)
            raise SystemExit(2)
        log.info("preflight: %d runs, configs valid; %d finished (skipped unless force=true), %d to run",
                 runs, finished, runs - finished)
        progress.begin(runs, finished_jobs)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """A job of the basic launcher starts in this process: the sweep line (``harness.launch.progress``)."""
        progress.job_started(list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        progress.job_ended(list(job_return.overrides or []), job_return.status == JobStatus.COMPLETED)
