"""The hardware profile, decided here only: ``gpu`` when CUDA is visible, ``cpu`` otherwise; and
what follows from it for the command line.

    python -m harness.launch [override ...]   # launcher overrides for the Makefile
    python -m harness.launch --suffix         # the experiment-name suffix: "" on GPU, "_cpu" on CPU

- ``with_profile(argv, group)``: ``<group>=gpu|cpu`` (``train``, ``scaling``, ``generation``) unless
  the command line chose one; a Slurm launch trains at the ``gpu`` profile (its jobs run on GPU nodes).
- ``overrides``: no CUDA: one single-threaded process per core (hydra-joblib-launcher), plus the
  given overrides (the Makefile passes the CPU-sized mixer list); with CUDA: as many processes per
  GPU as fit (``harness.launch.sizing``, probed on the sweep given after ``--``; several GPUs or more
  than one run per GPU go through conf/hydra/launcher/gpu_parallel.yaml, with ``concurrent_runs``
  recorded); one run per GPU when the sweep names ``gpu.jobs_per_gpu`` or a launcher itself.
"""
from __future__ import annotations

import os

import torch


def hardware() -> str:
    """``gpu`` when this process sees a CUDA device, else ``cpu``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def with_profile(argv: list[str], group: str) -> list[str]:
    """``argv`` plus ``<group>=<hardware()>`` unless the command line already chose the ``group``
    profile (``scaling.lengths=...`` and the like do not count; ``+train=...``, ``~train`` do). A
    Slurm launch gets the ``gpu`` profile: its jobs run on GPU nodes, not here."""
    if any(a.split("=")[0].lstrip("+~") == group for a in argv[1:]):
        return argv
    slurm = "hydra/launcher=slurm" in argv[1:]
    return argv + [f"{group}={'gpu' if slurm else hardware()}"]


def suffix() -> str:
    """The experiment-name suffix of this hardware: the recall, ICL and LM benchmarks have CPU-sized
    variants (conf/experiment/*_cpu.yaml)."""
    return "" if hardware() == "gpu" else "_cpu"


def overrides(cpu_only: list[str], sweep: list[str] | None = None) -> list[str]:
    """Launcher overrides for this machine; ``sweep``: the sweep's own overrides (``+experiment=...``
    and the user's), which the GPU sizing probes and which are not echoed."""
    if hardware() == "cpu":
        cores = os.cpu_count() or 1
        return ["hydra/launcher=cpu_parallel", f"hydra.launcher.n_jobs={cores}", f"concurrent_runs={cores}",
                "train.threads=1", *cpu_only]
    sweep = sweep or []
    asked = next((a.split("=", 1)[1] for a in sweep if a.startswith("gpu.jobs_per_gpu=")), None)
    if any(a.startswith("hydra/launcher=") for a in sweep):
        return []  # the sweep chose how it launches
    per_gpu = int(asked) if asked is not None else (packed_jobs(sweep) if sweep else 1)
    if torch.cuda.device_count() == 1 and per_gpu == 1:
        return []
    shared = [] if asked is not None else [f"gpu.jobs_per_gpu={per_gpu}"]
    caveat = [f"concurrent_runs={per_gpu}"] if per_gpu > 1 and not any(a.startswith("concurrent_runs=") for a in sweep) else []
    return ["hydra/launcher=gpu_parallel", *shared, *caveat]


def packed_jobs(sweep: list[str]) -> int:
    """Runs per GPU for the sweep ``sweep`` (``harness.launch.sizing``); 1 when the probe fails."""
    import logging

    from harness.launch.sizing import sweep_jobs_per_gpu  # imports the run pipeline: only when sizing

    try:
        return sweep_jobs_per_gpu(with_profile(["harness.launch", *sweep], "train")[1:])
    except Exception as err:  # noqa: BLE001 - a probe that cannot run leaves the safe default
        logging.getLogger("mixbench").warning("sizing: probe failed (%s: %s); one run per GPU", type(err).__name__, err)
        return 1
