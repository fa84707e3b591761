"""Before a sweep trains anything: expand it as Hydra's basic sweeper will, compose every run's
config, check every field (and build each model on CPU), and count the runs already finished.
One bad run stops the whole sweep here, with its overrides and the error, before any training.

Registered in conf/config.yaml as a Hydra callback (``hydra.callbacks.preflight``); it runs on the
launching machine for every launcher (basic, joblib, Slurm), so GPU availability is not checked.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.run.config import ConfigError, check_forward, make_model, to_dict, validate
from harness.run.records import FINISHED, read_record, record_path

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


def check_run(cfg: dict) -> bool:
    """Validate one resolved run config (``ConfigError`` if bad); whether a finished record exists."""
    task, _ = validate(cfg, check_device=False)
    model = make_model(cfg["model"], cfg["mixer"], task)
    if cfg["device"] == "cpu" or not torch.cuda.is_available():  # GPU runs check on their GPU (kernels may need it)
        check_forward(model, task, torch.device("cpu"), cfg["mixer"])
    path = record_path(Path(cfg["results_dir"]) / "runs", cfg)
    if cfg["force"] or not path.exists():
        return False
    try:
        return read_record(path)["status"] in FINISHED
    except (OSError, ValueError):
        return False


def preflight(config: DictConfig, config_name: str | None) -> tuple[int, int, list[tuple[list[str], str]]]:
    """``(runs, finished, problems)`` of the sweep that ``config`` describes."""
    jobs = job_overrides(config)
    finished, problems = 0, []
    for overrides in jobs:
        try:
            finished += check_run(to_dict(compose(config_name=config_name, overrides=overrides)))
        except ConfigError as err:
            problems.append((overrides, str(err)))
    return len(jobs), finished, problems


class Preflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.sweeper.get("_target_") != BASIC:
            log.info("preflight: skipped (it knows the basic sweeper only)")
            return
        runs, finished, problems = preflight(config, kwargs.get("config_name"))
        for overrides, error in problems:
            log.error("preflight: %s -> configuration error: %s", " ".join(overrides), error)
        if problems:
            log.error("preflight: %d of %d runs have configuration errors; nothing was run", len(problems), runs)
            raise SystemExit(2)
        log.info("preflight: %d runs, configs valid; %d finished (skipped unless force=true), %d to run",
                 runs, finished, runs - finished)
