"""The generation benchmark runs end to end and its decoding reproduces the parallel logits."""
from __future__ import annotations

import pytest

from harness.bench.generation import main_with
from harness.run.config import ConfigError


def test_generation_benchmark_tiny(tmp_path):
    cfg = {"generation": {"profile": "test", "device": "cpu", "vocab_size": 11, "d_model": 32, "n_layers": 1,
                          "batch_size": 2, "prompt_length": 8, "new_tokens": 5, "repeats": 1, "dtype": "fp32"},
           "mixers": ["tmm", "attention", "mamba", "hyena"], "results_dir": str(tmp_path)}
    result = main_with(cfg)
    rows = {r["mixer"]: r for r in result["rows"]}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["max_abs_logit_diff"] <= 1e-4 * max(1.0, row["logit_scale"]), row
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0
    assert rows["mamba"]["state_after_prompt"] == rows["mamba"]["state_after_generation"]
    assert rows["attention"]["state_after_generation"] > rows["attention"]["state_after_prompt"]
    assert (tmp_path / "generation" / "test" / "table.md").exists()


def test_a_cpu_generation_run_on_a_kernel_machine_decodes_through_the_torch_path(tmp_path, mamba_kernels_installed):
    cfg = {"generation": {"profile": "test", "device": "cpu", "vocab_size": 11, "d_model": 32, "n_layers": 1,
                          "batch_size": 2, "prompt_length": 8, "new_tokens": 5, "repeats": 1, "dtype": "fp32"},
           "mixers": ["mamba1", "mamba2"], "results_dir": str(tmp_path)}
    rows = {r["mixer"]: r for r in main_with(cfg)["rows"]}
    assert rows["mamba1"]["status"] == rows["mamba2"]["status"] == "ok", rows
    assert rows["mamba1"]["backend"] == "torch-selective-scan-chunked"
    assert rows["mamba2"]["backend"] == "torch-ssd-chunked"


def test_bf16_generation_on_cpu_is_refused(tmp_path):
    cfg = {"generation": {"profile": "test", "device": "cpu", "vocab_size": 11, "d_model": 32, "n_layers": 1,
                          "batch_size": 2, "prompt_length": 8, "new_tokens": 5, "repeats": 1, "dtype": "bf16"},
           "mixers": ["tmm"], "results_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="generation.dtype: bf16 weights are used on CUDA only"):
        main_with(cfg)
