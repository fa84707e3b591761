"""The device a run trains on: a GPU of its own from the lock pool (``harness.run.gpus``), chosen by
index so that it works in any process (also one whose CUDA is already initialised, as in the
basic launcher or a reused joblib worker), and the determinism switches."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch

from harness.run import gpus
from harness.run.config import resolve_device

log = logging.getLogger("mixbench")
CUBLAS_DETERMINISTIC = ":4096:8"  # what torch asks for with deterministic algorithms on CUDA >= 10.2


def gpu_ids() -> list[str]:
    """Stable names of the visible GPUs (their UUIDs when torch exposes them, else their indices)."""
    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(str(uuid) if uuid is not None else str(i))
    return ids


@contextlib.contextmanager
def run_device(cfg: dict) -> Iterator[tuple[torch.device, dict]]:
    """``(device, facts)``: the CPU, or a GPU slot held until the run ends (``facts`` say which)."""
    device = resolve_device(cfg["device"])
    if device.type != "cuda":
        yield device, {}
        return
    jobs_per_gpu, lock_dir = cfg["gpu"]["jobs_per_gpu"], cfg["gpu"]["lock_dir"]
    waiting = lambda n: log.info("waiting for a free GPU: all %d slots under %s are held", n, lock_dir)  # noqa: E731
    with gpus.acquire(gpu_ids(), jobs_per_gpu, lock_dir, on_wait=waiting) as lease:
        torch.cuda.set_device(lease.index)
        log.info("GPU %d (%s), slot %d of %d", lease.index, lease.gpu_id, lease.slot + 1, jobs_per_gpu)
        try:
            yield torch.device("cuda", lease.index), {"gpu_index": lease.index, "gpu_id": lease.gpu_id,
                                                      "gpu_slot": lease.slot, "jobs_per_gpu": jobs_per_gpu}
        finally:
            torch.cuda.empty_cache()  # the next job on this GPU may be another process


def set_determinism(on: bool) -> None:
    """Deterministic algorithms (and cuBLAS's fixed workspace) on or off for this process.

    Set both ways, so that a reused process (basic launcher, joblib worker) does not carry the
    previous job's setting. ``CUBLAS_WORKSPACE_CONFIG`` only takes effect before cuBLAS starts;
    ``harness.run.execute`` sets it at start-up when ``deterministic=true`` is on the command line.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    if torch.are_deterministic_algorithms_enabled() != on:  # the call imports torch._inductor (1-2 s): only on change
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
