"""The fused sweep (``hydra/launcher=fused``, the plug-in in ``harness/launch/plugins/hydra_plugins/mixbench_launcher``): compose
every job's config, group those that differ only in ``harness.run.fused.FUSABLE`` fields, say which
runs it fuses before anything trains, then run each group in this process (``execute_fused``; a
group of one through ``execute``, as the basic launcher would). Hydra gets one ``JobReturn`` per job.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.run.config import to_dict
from harness.run.execute import execute, stop_on_sigterm
from harness.run.fused import FUSABLE, execute_fused, fusion_groups

log = logging.getLogger("mixbench")


def run_config(sweep_config: DictConfig) -> dict:
    """The run's resolved config, as the task function sees it (without the ``hydra`` node)."""
    cfg = OmegaConf.create(OmegaConf.to_container(sweep_config, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return to_dict(cfg)


def describe(cfg: dict) -> str:
    return f"seed={cfg['seed']} train.lr={cfg['train']['lr']} train.weight_decay={cfg['train']['weight_decay']}"


def plan(cfgs: list[dict]) -> list[list[int]]:
    """The groups, logged: which runs share a process, and in what they differ."""
    groups = fusion_groups(cfgs)
    fused = sum(len(g) for g in groups if len(g) > 1)
    log.info("preflight: fused launcher: %d runs in %d groups (%d runs fused; members differ "
             "only in %s)", len(cfgs), len(groups), fused, ", ".join(FUSABLE))
    for n, group in enumerate(groups):
        first = cfgs[group[0]]
        log.info("preflight: group %d: %d x %s on %s: %s", n, len(group), first["mixer"]["name"], first["task"]["name"],
                 "; ".join(describe(cfgs[i]) for i in group))
    return groups


def launch_fused(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    sweep_configs = []
    for idx, overrides in enumerate(job_overrides):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + idx
        sweep_configs.append(sweep_config)
    cfgs = [run_config(c) for c in sweep_configs]
    returns: list[JobReturn | None] = [None] * len(cfgs)
    for group in plan(cfgs):
        members = [cfgs[i] for i in group]

        def run_group(_cfg: DictConfig, members=members) -> list[str]:
            stop_on_sigterm()
            records = execute_fused(members) if len(members) > 1 else [execute(members[0])]
            return [r["status"] for r in records]

        ret = run_job(hydra_context=hydra_context, task_function=run_group, config=sweep_configs[group[0]],
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        for k, i in enumerate(group):
            value = ret._return_value[k] if ret.status == JobStatus.COMPLETED else ret._return_value
            returns[i] = JobReturn(overrides=list(filter_overrides(job_overrides[i])), cfg=ret.cfg,
                                   hydra_cfg=ret.hydra_cfg, working_dir=ret.working_dir, task_name=ret.task_name,
                                   status=ret.status, _return_value=value)
    return returns  # type: ignore[return-value]
