"""Timing and memory of one forward + backward pass, the building block of the scaling benchmark."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from harness.run.memory import saved_activation_bytes  # one home: the run records count the same bytes


def forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype | None) -> None:
    """One training pass of ``module`` on ``x (batch, n, d)``: forward (autocast to ``dtype`` on CUDA),
    backward with the fixed output gradient ``grad``."""
    if dtype is not None and x.is_cuda:
        with torch.autocast("cuda", dtype=dtype):
            y = module(x)
    else:
        y = module(x)
    y.backward(grad.to(y.dtype))


def time_forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype | None,
                          warmup: int, repeats: int) -> dict:
    """Median and spread of ``repeats`` timed passes after ``warmup`` untimed ones (CUDA events on GPU)."""
    for _ in range(warmup):
        forward_backward(module, x, grad, dtype)
        x.grad = None
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward_backward(module, x, grad, dtype)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            forward_backward(module, x, grad, dtype)
            times.append(time.perf_counter() - t0)
        x.grad = None
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def memory_forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype | None) -> dict:
    """Bytes saved for backward; on CUDA also the allocator's peak, whole and above what was
    allocated before the pass (parameters, input, output gradient)."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    out: dict = {}
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with saved_activation_bytes() as saved:
        forward_backward(module, x, grad, dtype)
    out["saved_bytes"] = saved["bytes"]
    if x.is_cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_bytes=peak, activation_peak_bytes=peak - before)
    x.grad = None
    return out
