"""The hardware profile, decided here only: ``gpu`` when CUDA is visible, ``cpu`` otherwise; and
what follows from it for the command line.

    python -m harness.launch [override ...]   # launcher overrides for the Makefile
    python -m harness.launch --suffix         # the experiment-name suffix: "" on GPU, "_cpu" on CPU

- ``with_profile(argv, group)``: ``<group>=gpu|cpu`` (``train``, ``scaling``, ``generation``) unless
  the command line chose one; a Slurm launch trains at the ``gpu`` profile (its jobs run on GPU nodes).
- ``overrides``: no CUDA: one single-threaded process per core (hydra-joblib-launcher), plus the
  given overrides (the Makefile passes the CPU-sized mixer list); one GPU: nothing (runs one after
  another on it); several GPUs: one process per GPU (conf/hydra/launcher/gpu_parallel.yaml).
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


def overrides(cpu_only: list[str]) -> list[str]:
    if hardware() == "cpu":
        cores = os.cpu_count() or 1
        return ["hydra/launcher=cpu_parallel", f"hydra.launcher.n_jobs={cores}", f"concurrent_runs={cores}",
                "train.threads=1", *cpu_only]
    if torch.cuda.device_count() > 1:
        return ["hydra/launcher=gpu_parallel"]
    return []
