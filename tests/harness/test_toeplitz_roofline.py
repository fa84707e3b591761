"""The roofline behind the Toeplitz kernel's forward target (within 3x of a copy): FLOP counts and the table built from measurements."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.bench.toeplitz_roofline import main_with, roofline
from harness.run.config import ConfigError
from mixers.ops import flops as F
from mixers.tmm import fused_tile_flops

CFG = {"d_model": 512, "tokens_per_batch": 131072, "target_over_copy": 3, "peak_tensor_tflops": 1000,
       "peak_fp32_tflops": 50, "results_dir": "unused"}


def test_one_stage_matmul_fft_is_a_dense_dft():
    # length 8 -> n_fft 16 -> complex transforms of 8 points; radix 8: one stage of 8 x 8 products
    n_fft, half = 16, 8
    assert F.matmul_fft_causal_conv(8, 3, radix=8) == 3 * (2 * half * 8 * 8 * 1 + 6 * (n_fft // 2 + 1))
    # more, smaller stages cost fewer FLOPs than one dense DFT of the same size
    assert F.matmul_fft_causal_conv(4096, 1, radix=16) < F.matmul_fft_causal_conv(4096, 1, radix=4096)


def measured(n: int, copy: float, rows: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"length": n, "copy_pipelined_ms": copy, "path": path, "forward_pipelined_ms": ms,
                          "status": "ok"} for path, ms in rows])


def test_roofline_targets_and_bounds_follow_the_counts():
    table = roofline(measured(1024, 0.1, [("fft", 5.0), ("fused 64x128", 0.2)]), CFG)
    row = table.iloc[0]
    batch = 131072 // 1024
    assert row.target_ms == pytest.approx(0.3)
    assert row.dense_tiles_at_peak_ms == pytest.approx(1e3 * batch * fused_tile_flops(1024, 512) / 1e15)
    assert row.matmul_fft_at_peak_ms == pytest.approx(1e3 * batch * F.matmul_fft_causal_conv(1024, 512) / 1e15)
    assert row.fp32_fft_at_peak_ms == pytest.approx(1e3 * batch * F.fft_causal_conv(1024, 512) / 50e12)
    assert row.needs_peak_fraction == pytest.approx(min(row.dense_tiles_at_peak_ms, row.matmul_fft_at_peak_ms) / 0.3)
    assert row.best_path == "fused 64x128" and row.best_over_copy == pytest.approx(2.0)
    assert row.spectrum_kB == pytest.approx(4 * 1025 / 1e3)
    assert math.isfinite(row.needs_peak_fraction)


def test_missing_measurements_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="results_dir: no .*toeplitz_kernel.csv"):
        main_with({**CFG, "results_dir": str(tmp_path)})
