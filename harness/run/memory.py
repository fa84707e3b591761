"""Memory of a run: the activation memory autograd saves for backward in one training step (device
independent: it compares mixers), and the peak: CUDA allocator statistics on GPU, process peak RSS
on CPU (which measures the runtime as much as the model)."""
from __future__ import annotations

import resource
from contextlib import contextmanager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def saved_activation_bytes():
    """Counts the bytes of tensors autograd saves for backward inside the block (deterministic,
    device-independent activation memory; a tensor saved twice counts twice)."""
    total = {"bytes": 0}

    def pack(t: torch.Tensor):
        total["bytes"] += t.numel() * t.element_size()
        # detached: a saved *output* returned as itself would hold its own grad_fn, a cycle through
        # autograd's C++ nodes that no garbage collection frees (every GPU run leaked its first graph,
        # which also kept an AccumulateGrad node on the default stream alive and broke CUDA graph capture)
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


SAVED_METHOD = "bytes autograd saves for backward in one eager forward + loss of the first training batch"


def step_saved_bytes(forward_loss, batch) -> int:
    """The bytes autograd saves for backward in ``forward_loss(batch)`` (the training step's forward and
    loss, at its precision), measured eagerly and discarded: nothing is updated."""
    with saved_activation_bytes() as saved:
        loss = forward_loss(batch)
    del loss  # frees the graph and what it saved before the real step
    return saved["bytes"]


class PeakMemory:
    """Measures peak memory between ``start()`` and ``read()``.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, plus the bytes allocated at
    ``mark_static()`` (weights, gradients and optimizer state after the first step), so that the
    activation peak is ``peak - static``. CPU: the process's peak resident set size (VmHWM), reset
    at ``start()`` through /proc/self/clear_refs where Linux allows it, so each run in a sweep is
    measured on its own; elsewhere the lifetime peak (``ru_maxrss``), which the record says.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.static_bytes: int | None = None
        self.method = ""
        self.start_bytes = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.method = "VmHWM (peak RSS of this run, reset at start)"
        except OSError:
            self.method = "ru_maxrss (peak RSS of the whole process)"
        self.start_bytes = (_status_kib("VmRSS") or 0) * 1024

    def mark_static(self) -> None:
        """Call right after the first optimizer step, before gradients are freed."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.static_bytes = torch.cuda.memory_allocated(self.device)

    def read(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            static = self.static_bytes or self.start_bytes
            return {"peak_bytes": peak, "static_bytes": static, "activation_peak_bytes": max(0, peak - static),
                    "method": self.method}
        hwm = _status_kib("VmHWM")
        peak = hwm * 1024 if hwm is not None and "VmHWM" in self.method else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak_bytes": peak, "start_bytes": self.start_bytes,
                "peak_above_start_bytes": max(0, peak - self.start_bytes), "method": self.method}
