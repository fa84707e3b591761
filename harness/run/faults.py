"""What a run that did not finish becomes in its record: ``oom`` with the sizes that failed,
``diverged`` at a step (raised by the training loop), ``failed`` with the traceback."""
from __future__ import annotations

import re
import traceback

import torch

CPU_OOM = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or the CPU allocator's refusal (a plain ``RuntimeError``)."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and CPU_OOM in str(err))


def requested_bytes(message: str) -> int | None:
    """The allocation that failed, from CUDA's 'Tried to allocate 2.00 GiB' or the CPU's 'allocate 400 bytes'."""
    m = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", message)
    if m:
        scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[m.group(2)]
        return int(float(m.group(1)) * scale)
    m = re.search(r"you tried to allocate (\d+) bytes", message)
    return int(m.group(1)) if m else None


def oom_fields(err: BaseException, sizes: dict, device: torch.device) -> dict:
    """Record fields of an out-of-memory run: the sizes of the run and what the allocator was asked for."""
    message = str(err)
    out = {"status": "oom", "error": message.splitlines()[0] if message else type(err).__name__,
           "sizes": {**sizes, "requested_bytes": requested_bytes(message)}}
    if device.type == "cuda":
        out["sizes"]["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["sizes"]["device_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return out


def failed_fields(err: BaseException) -> dict:
    """Record fields of a run that raised: the error and its traceback (call it inside the ``except``)."""
    return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def fault_fields(err: BaseException) -> dict:
    """The fields of a benchmark row (or record) whose measurement raised: ``oom`` with the first line
    of the allocator's message, or ``failed`` with the traceback. Call it inside the ``except``."""
    if is_out_of_memory(err):
        message = str(err)
        return {"status": "oom", "error": message.splitlines()[0] if message else type(err).__name__}
    return failed_fields(err)
