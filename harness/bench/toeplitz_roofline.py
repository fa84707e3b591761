"""How far each exact method could get toward the Toeplitz kernel's forward target (within 3x of a copy), from the committed measurements.

    python -m harness.bench.toeplitz_roofline          # conf/toeplitz_roofline.yaml

Reads ``toeplitz_kernel.csv`` (``python -m harness.bench.toeplitz_bench``) and, per length n at its fixed
token count, sets the target (``target_over_copy`` x the measured back-to-back copy of x) beside the
time each method would take at the GPU's datasheet peak with no memory traffic at all: the fused
kernel's dense tiles (``fused_tile_flops``) and an FFT convolution whose transforms are radix-16 DFT
matrix products (``matmul_fft_causal_conv``) on tensor cores, and a float32 FFT (``fft_causal_conv``)
on CUDA cores. ``needs_peak_fraction`` is the share of tensor-core peak the cheaper tensor-core
method would have to sustain to meet the target; ``spectrum_kB`` the bf16 spectrum of one channel,
which must stay on chip (228 kB of shared memory per H200 SM) for the traffic to stay at one read of
x and one write of y. Writes ``toeplitz_roofline.md`` next to the measurements. CPU is enough.
"""
from __future__ import annotations

import logging

import pandas as pd

from harness.launch.entry import entry_point
from harness.run.config import ConfigError
from harness.run.records import results_folder
from mixers.ops import flops as F
from mixers.tmm import fused_tile_flops

log = logging.getLogger("mixbench.toeplitz_roofline")


def roofline(measured: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per length of ``measured`` (toeplitz_kernel.csv rows): targets, bounds at peak, best measured."""
    d, tokens = cfg["d_model"], cfg["tokens_per_batch"]
    tensor, cuda_cores = cfg["peak_tensor_tflops"] * 1e12, cfg["peak_fp32_tflops"] * 1e12
    rows = []
    for n, runs in measured[measured.status == "ok"].groupby("length"):
        batch = tokens // n
        copy = runs.copy_pipelined_ms.iloc[0]
        target = cfg["target_over_copy"] * copy
        dense = 1e3 * batch * fused_tile_flops(n, d) / tensor
        matmul_fft = 1e3 * batch * F.matmul_fft_causal_conv(n, d) / tensor
        fp32_fft = 1e3 * batch * F.fft_causal_conv(n, d) / cuda_cores
        best = runs.loc[runs.forward_pipelined_ms.idxmin()]
        rows.append({
            "length": n, "target_ms": target, "dense_tiles_at_peak_ms": dense,
            "matmul_fft_at_peak_ms": matmul_fft, "fp32_fft_at_peak_ms": fp32_fft,
            "needs_peak_fraction": min(dense, matmul_fft) / target, "spectrum_kB": 4 * (F.fft_size(n) // 2 + 1) / 1e3,
            "best_measured_ms": best.forward_pipelined_ms, "best_path": best.path,
            "best_over_copy": best.forward_pipelined_ms / copy,
        })
    return pd.DataFrame(rows)


def main_with(cfg: dict) -> pd.DataFrame:
    folder = results_folder(cfg["results_dir"], "scaling") / "gpu_toeplitz"
    source = folder / "toeplitz_kernel.csv"
    if not source.exists():
        raise ConfigError(f"results_dir: no {source}; run python -m harness.bench.toeplitz_bench on a GPU first")
    table = roofline(pd.read_csv(source), cfg)
    text = table.to_markdown(index=False, floatfmt=".3f")
    (folder / "toeplitz_roofline.md").write_text(text + "\n")
    print(text)
    return table


main = entry_point("toeplitz_roofline", main_with, log)


if __name__ == "__main__":
    main()
