"""How many runs share one GPU (``gpu.jobs_per_gpu``), sized from a short probe of the sweep's largest run.

A small model leaves most of an H200 idle (launch- and host-bound), so several processes on one
GPU multiply throughput. ``jobs_that_fit`` takes the probe's peak memory (plus each process's CUDA
context) against the GPU's memory, and its measured utilisation (the fraction of time a kernel ran,
from NVML) against a full GPU, capped at ``gpu.sizing.max_jobs``. The probe trains the run with the
largest declared footprint (``declared_bytes``: parameters, gradients and AdamW state, and
activations from batch x length x width x layers) for ``gpu.sizing.probe_steps`` steps and one
evaluation, as the run itself would. ``gpu.jobs_per_gpu`` on the command line overrides all of it.
Every run of a packed sweep records ``concurrent_runs``, the throughput caveat.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from harness.run.config import check_forward, make_model, validate
from harness.run.train import Trainer, TrainConfig

log = logging.getLogger("mixbench")
ACTIVATION_FLOATS_PER_WIDTH = 34  # floats kept per token, width and layer for backward (a transformer block's order)


def declared_bytes(cfg: dict) -> int:
    """A run's memory estimate before it runs: 16 bytes per parameter (fp32 weight, gradient, two AdamW
    moments) and ``ACTIVATION_FLOATS_PER_WIDTH`` 4-byte floats per token, width and layer."""
    task, tc = validate(cfg, check_device=False)
    model = make_model(cfg["model"], cfg["mixer"], task)
    params = sum(p.numel() for p in model.parameters())
    tokens = tc.batch_size * task.max_train_input_len()
    return 16 * params + 4 * ACTIVATION_FLOATS_PER_WIDTH * tokens * cfg["model"]["d_model"] * cfg["model"]["n_layers"]


def jobs_that_fit(peak_bytes: int, total_bytes: int, utilisation: float | None, max_jobs: int,
                  headroom: float, context_bytes: int) -> dict:
    """``{"jobs_per_gpu", "by_memory", "by_utilisation"}``: the runs one GPU holds at once (at least 1).
    ``utilisation`` in [0, 1] (None: not measured, memory and ``max_jobs`` decide)."""
    by_memory = max(1, math.floor(headroom * total_bytes / max(1, peak_bytes + context_bytes)))
    by_utilisation = max_jobs if not utilisation else max(1, math.floor(1.0 / utilisation))
    return {"jobs_per_gpu": max(1, min(by_memory, by_utilisation, max_jobs)), "by_memory": by_memory,
            "by_utilisation": by_utilisation}


def nvml_utilisation(device: torch.device) -> float | None:
    """The fraction of the last sample period in which a kernel ran on ``device``; None without NVML."""
    try:
        return torch.cuda.utilization(device) / 100.0
    except Exception:  # noqa: BLE001 - pynvml missing or unsupported: not measured
        return None


def probe(cfg: dict, steps: int, device: torch.device) -> dict:
    """Train ``cfg``'s model for ``steps`` steps and one evaluation on ``device``: peak bytes, the mean
    NVML utilisation over the steps after the first, and ms per step."""
    task, tc = validate(cfg)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg["model"], cfg["mixer"], task).to(device)
    check_forward(model, task, device, cfg["mixer"])
    short = TrainConfig(**{**tc.__dict__, "steps": steps, "warmup_steps": min(tc.warmup_steps, steps),
                           "eval_every": steps, "progress": False})
    trainer = Trainer(model, task, short, device)
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    samples, started = [], None
    for step in range(steps):
        if step == 1:
            started = time.perf_counter()
        task.set_step(step)
        trainer.step(step, task.train_batch(short.batch_size, generator))
        if step >= 1:
            value = nvml_utilisation(device)
            if value is not None:
                samples.append(value)
    ms = 1e3 * (time.perf_counter() - started) / max(1, steps - 1) if started else float("nan")
    result = trainer.result()
    return {"peak_bytes": int(result.memory["peak_bytes"]), "ms_per_step": ms,
            "utilisation": sum(samples) / len(samples) if samples else None}


def size(cfgs: list[dict], sizing: dict, device: torch.device) -> dict:
    """Probe the largest of ``cfgs`` (``declared_bytes``) and size ``jobs_per_gpu`` from it; what was decided and why."""
    from harness.run.fused import fusion_key  # runs that differ in lr, weight decay or seed need the same memory

    distinct = list({fusion_key(c): c for c in cfgs}.values())
    largest = max(distinct, key=declared_bytes)
    measured = probe(largest, sizing["probe_steps"], device)
    total = torch.cuda.get_device_properties(device).total_memory
    fit = jobs_that_fit(measured["peak_bytes"], total, measured["utilisation"], sizing["max_jobs"],
                        sizing["headroom"], sizing["context_bytes"])
    log.info("sizing: largest run %s/%s d_model %s: peak %.2f GB, utilisation %s, %.1f ms/step -> %d jobs per GPU "
             "(memory allows %d, utilisation %d, cap %d)", largest["mixer"]["name"], largest["task"]["name"],
             largest["model"]["d_model"], measured["peak_bytes"] / 1e9,
             "n/a" if measured["utilisation"] is None else f"{measured['utilisation']:.0%}", measured["ms_per_step"],
             fit["jobs_per_gpu"], fit["by_memory"], fit["by_utilisation"], sizing["max_jobs"])
    return {**measured, **fit}


def sweep_configs(overrides: list[str]) -> list[dict]:
    """Every run config of the sweep that ``overrides`` describe, as ``python -m harness.run -m`` expands it."""
    from hydra import compose, initialize_config_dir

    from harness.launch.preflight import job_overrides
    from harness.run.config import CONF_DIR, to_dict

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = compose("config", overrides=overrides, return_hydra_config=True)
        return [to_dict(compose("config", overrides=job)) for job in job_overrides(config)]


def sweep_jobs_per_gpu(overrides: list[str]) -> int:
    """``gpu.jobs_per_gpu`` for the sweep that ``overrides`` describe, probed on GPU 0; the log says why."""
    cfgs = sweep_configs(overrides)
    return size(cfgs, cfgs[0]["gpu"]["sizing"], torch.device("cuda", 0))["jobs_per_gpu"]
