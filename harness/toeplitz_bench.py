"""Bare causal Toeplitz product on the GPU: fused Triton kernel vs the FFT path vs a copy of x.

    python -m harness.toeplitz_bench                    # conf/toeplitz_bench.yaml
    python -m harness.toeplitz_bench lengths=[1024,4096] blocks=[64]

For each length (batch = tokens // n) and path: forward time, forward + backward time (medians of
``repeats`` after ``warmup``, CUDA events) and the allocator's peak above the inputs during forward +
backward. ``copy`` is ``y.copy_(x)`` of the same tensor: reading x and writing y once, the memory
bandwidth bound of a forward pass, measured rather than taken from a datasheet. Writes
results/scaling/gpu_toeplitz/toeplitz_kernel.{md,csv,json} with the environment.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path

import pandas as pd
import torch

from harness.cli import entry_point
from harness.config import ConfigError, resolve_device
from harness.environment import environment
from harness.records import write_atomic
from mixers.tmm import ToeplitzCausal

log = logging.getLogger("mixbench.toeplitz_bench")


def cuda_median(fn, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` CUDA-event-timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_above(fn) -> int:
    """Bytes the allocator peaked at during ``fn()`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure_path(layer: ToeplitzCausal, options: dict, x: torch.Tensor, grad: torch.Tensor, warmup: int,
                 repeats: int) -> dict:
    """Times and peak memory of ``layer(x, **options)``."""
    def forward():
        with torch.no_grad():
            layer(x, **options)

    def train_step():
        layer(x, **options).backward(grad)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    return {"forward_ms": 1e3 * cuda_median(forward, warmup, repeats),
            "forward_backward_ms": 1e3 * cuda_median(train_step, warmup, repeats),
            "activation_peak_MB": peak_above(train_step) / 2**20}


def main_with(cfg: dict) -> list[dict]:
    device = resolve_device(cfg["device"])
    if device.type != "cuda":
        raise ConfigError("device: the fused kernel runs on CUDA only; no CUDA device is visible")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg["dtype"]]
    rows = []
    for n in cfg["lengths"]:
        batch = max(1, cfg["tokens_per_batch"] // n)
        gen = torch.Generator(device=device).manual_seed(n)
        x = torch.randn(batch, n, cfg["d_model"], device=device, dtype=dtype, generator=gen).requires_grad_()
        grad = torch.randn(batch, n, cfg["d_model"], device=device, dtype=dtype, generator=gen)
        y = torch.empty_like(x)
        copy_ms = 1e3 * cuda_median(lambda: y.copy_(x), cfg["warmup"], cfg["repeats"])
        base = {"length": n, "batch": batch, "copy_ms": copy_ms}
        paths = [("fft", {"impl": "fft"})] + [(f"fused {b}", {"impl": "fused", "block": b}) for b in cfg["blocks"]]
        for name, options in paths:
            torch.manual_seed(0)
            layer = ToeplitzCausal(cfg["heads"], n).to(device)
            row = {**base, "path": name}
            try:
                row.update(measure_path(layer, options, x, grad, cfg["warmup"], cfg["repeats"]))
                row["forward_over_copy"] = row["forward_ms"] / copy_ms
                row["status"] = "ok"
            except torch.OutOfMemoryError as err:
                row.update(status="oom", error=str(err).splitlines()[0])
            log.info("n=%-6d %-14s %s", n, name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
            rows.append(row)
            del layer
            torch.cuda.empty_cache()
    out = Path(cfg["results_dir"]) / "scaling" / "gpu_toeplitz"
    write_atomic(out / "toeplitz_kernel.json", {"config": cfg, "environment": environment(device), "rows": rows})
    table = pd.DataFrame(rows)
    table.to_csv(out / "toeplitz_kernel.csv", index=False)
    (out / "toeplitz_kernel.md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")
    return rows


main = entry_point("toeplitz_bench", main_with, log)


if __name__ == "__main__":
    main()
