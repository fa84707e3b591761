"""Bare causal Toeplitz product on the GPU: fused Triton kernel vs the FFT path vs a copy of x.

    python -m harness.bench.toeplitz_bench                    # conf/toeplitz_bench.yaml
    python -m harness.bench.toeplitz_bench lengths=[1024,4096] tiles=[[64,128]]
    python -m harness.bench.toeplitz_bench tune.lengths=[1024]      # also time the forward's launch grid

For each length (batch = tokens // n) and path: forward time, forward + backward time (medians of
``repeats`` after ``warmup``, CUDA events around each synchronised call, so host launch latency
counts), the forward's device time back to back (``pipelined``: mean of ``repeats`` calls between
two events, launch latency hidden as in training) and the allocator's peak above the inputs during forward +
backward. ``copy`` is ``y.copy_(x)`` of the same tensor: reading x and writing y once, the memory
bandwidth bound of a forward pass, measured rather than taken from a datasheet. Writes
results/scaling/gpu_toeplitz/toeplitz_kernel.{md,csv,json} with the environment; with
``tune.lengths``, also the forward alone at every point of the ``tune`` grid (bank tile, rows per
output tile, channels per tile, warps, pipeline stages) to toeplitz_tuning.{md,csv}, the evidence
for ``launch_config``'s defaults.
"""
from __future__ import annotations

import itertools
import logging
import statistics
from pathlib import Path

import pandas as pd
import torch

from harness.launch.entry import entry_point
from harness.run.config import ConfigError, resolve_device
from harness.run.environment import environment
from harness.run.faults import fault_fields
from harness.run.records import results_folder, write_atomic
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


def cuda_pipelined(fn, warmup: int, repeats: int) -> float:
    """Mean seconds per call of ``repeats`` back-to-back calls between two CUDA events (no sync in
    between, so the host enqueues ahead as in training): device time, launch latency hidden."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


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
            "forward_pipelined_ms": 1e3 * cuda_pipelined(forward, warmup, repeats),
            "forward_backward_ms": 1e3 * cuda_median(train_step, warmup, repeats),
            "activation_peak_MB": peak_above(train_step) / 2**20}


def fused_name(block: int, rows: int, dw_block: int | None = None) -> str:
    return f"fused {block}x{rows}" + (f" dw{dw_block}" if dw_block else "")


def fused_options(block: int, rows: int, dw_block: int | None = None) -> dict:
    return {"impl": "fused", "block": block, "rows": rows, **({"dw_block": dw_block} if dw_block else {})}


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
        copy_pipelined_ms = 1e3 * cuda_pipelined(lambda: y.copy_(x), cfg["warmup"], cfg["repeats"])
        base = {"length": n, "batch": batch, "copy_ms": copy_ms, "copy_pipelined_ms": copy_pipelined_ms}
        paths = [("fft", {"impl": "fft"})] + [(fused_name(*tiles), fused_options(*tiles)) for tiles in cfg["tiles"]]
        for name, options in paths:
            torch.manual_seed(0)
            layer = ToeplitzCausal(cfg["heads"], n).to(device)
            row = {**base, "path": name}
            try:
                row.update(measure_path(layer, options, x, grad, cfg["warmup"], cfg["repeats"]))
                row["forward_over_copy"] = row["forward_ms"] / copy_ms
                row["pipelined_over_copy"] = row["forward_pipelined_ms"] / copy_pipelined_ms
                row["status"] = "ok"
            except torch.OutOfMemoryError as err:  # other errors are bugs of the kernel: they stop the bench
                row.update(fault_fields(err))
            log.info("n=%-6d %-14s %s", n, name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
            rows.append(row)
            del layer
            torch.cuda.empty_cache()
    out = results_folder(cfg["results_dir"], "scaling") / "gpu_toeplitz"
    write_atomic(out / "toeplitz_kernel.json", {"config": cfg, "environment": environment(device), "rows": rows})
    write_table(pd.DataFrame(rows), out / "toeplitz_kernel")
    if cfg["tune"]["lengths"]:
        write_table(tune_forward(cfg, device, dtype), out / "toeplitz_tuning")
    return rows


def write_table(table: pd.DataFrame, stem: Path) -> None:
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")


def tune_forward(cfg: dict, device: torch.device, dtype: torch.dtype) -> pd.DataFrame:
    """Forward-only time of the fused kernel at every point of ``cfg["tune"]``, against the copy:
    ``forward`` includes building the tile bank; ``kernel`` is the product kernel alone."""
    from mixers.ops.toeplitz_triton import _apply, tile_bank, toeplitz_forward

    grid = cfg["tune"]
    e = cfg["d_model"] // cfg["heads"]
    rows = []
    for n in grid["lengths"]:
        batch = max(1, cfg["tokens_per_batch"] // n)
        gen = torch.Generator(device=device).manual_seed(n)
        x = torch.randn(batch, n, cfg["d_model"], device=device, dtype=dtype, generator=gen)
        weight = torch.randn(cfg["heads"], n, device=device, generator=gen)
        bias = torch.randn(cfg["heads"], n, device=device, generator=gen)
        y = torch.empty_like(x)
        copy_ms = 1e3 * cuda_median(lambda: y.copy_(x), cfg["warmup"], cfg["repeats"])
        for block, tile_rows, channels, warps, stages in itertools.product(
                grid["blocks"], grid["rows"], grid["channels"], grid["warps"], grid["stages"]):
            if tile_rows % block:
                continue
            point = {"length": n, "block": block, "rows": tile_rows, "channels": channels, "warps": warps,
                     "stages": stages}
            launch = {"BLOCK_C": channels, "num_warps": warps, "num_stages": stages}
            call = lambda: toeplitz_forward(x, weight, bias, cfg["heads"], block, tile_rows, **launch)  # noqa: E731
            bank, origin = tile_bank(weight, n, block, dtype, tile_rows)
            kernel = lambda: _apply(x, bank, origin, bias, e, tile_rows, False, **launch)  # noqa: E731
            try:
                ms = 1e3 * cuda_median(call, cfg["warmup"], cfg["repeats"])
                kernel_ms = 1e3 * cuda_median(kernel, cfg["warmup"], cfg["repeats"])
                point.update(forward_ms=ms, forward_over_copy=ms / copy_ms, kernel_ms=kernel_ms,
                             kernel_over_copy=kernel_ms / copy_ms, status="ok")
            except Exception as err:  # noqa: BLE001 (out of shared memory or registers: record, go on)
                point.update(status=type(err).__name__, error=str(err).splitlines()[0][:200])
            log.info("tune %s", point)
            rows.append(point)
    return pd.DataFrame(rows)


main = entry_point("toeplitz_bench", main_with, log)


if __name__ == "__main__":
    main()
