"""Launcher overrides that fit this machine, printed for the Makefile.

    python -m harness.launch [override ...]

- no CUDA: one single-threaded process per core (hydra-joblib-launcher), plus the given overrides
  (the Makefile passes the CPU-sized mixer list);
- one GPU: nothing (runs one after another on it);
- several GPUs: one process per GPU (conf/hydra/launcher/gpu_parallel.yaml).
"""
from __future__ import annotations

import os
import sys

import torch


def overrides(cpu_only: list[str]) -> list[str]:
    if not torch.cuda.is_available():
        cores = os.cpu_count() or 1
        return ["hydra/launcher=cpu_parallel", f"hydra.launcher.n_jobs={cores}", f"concurrent_runs={cores}",
                "train.threads=1", *cpu_only]
    if torch.cuda.device_count() > 1:
        return ["hydra/launcher=gpu_parallel"]
    return []


if __name__ == "__main__":
    print(" ".join(overrides(sys.argv[1:])))
