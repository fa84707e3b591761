"""The scaling benchmark runs end to end on small CPU sizes, and no mixer's declared complexity is
contradicted by what it does: memory saved for backward (deterministic) and analytic FLOPs."""
from __future__ import annotations

import math

import pytest

from harness.bench.scaling import loglog_slope, main_with
import mixers
from tests.conftest import MIXER_CASES, case_mixer

VARIANTS = {
    "tmm": {"mixer": "tmm"},
    "tmm-dense": {"mixer": "tmm", "impl": "dense"},
    "attention": {"mixer": "attention"},
    "mamba": {"mixer": "mamba", "impl": "torch", "d_state": 16, "headdim": 16, "chunk_size": 16},
    "hyena": {"mixer": "hyena"},
    "mamba1": {"mixer": "mamba1", "impl": "torch", "d_state": 8, "chunk_size": 32},
    "mamba2": {"mixer": "mamba2", "impl": "torch", "d_state": 16, "headdim": 16, "chunk_size": 16},
    "tnn": {"mixer": "tnn"},
    "gltm": {"mixer": "gltm"},
    "gltm-square": {"mixer": "gltm", "pattern": "square"},  # declared from the class without building it
    "linear_attention": {"mixer": "linear_attention"},
    "gla": {"mixer": "gla"},
    "hgrn2": {"mixer": "hgrn2", "expand_ratio": 8},
    "rwkv7": {"mixer": "rwkv7", "head_dim": 8},
    "based": {"mixer": "based"},
    "sliding_window_attention": {"mixer": "sliding_window_attention"},
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    # batch 1 at every length, so per-pass work (filters, kernel spectra, dense matrices) is not
    # amortised over a batch and the per-sequence slopes are the declared exponents
    cfg = {"scaling": {"profile": "test", "device": "cpu", "d_model": 16, "tokens_per_batch": 1,
                       "lengths": [128, 256, 512, 1024, 2048], "warmup": 1, "repeats": 2, "dtype": "fp32", "threads": None},
           "variants": VARIANTS, "only": None, "results_dir": str(out), "fit_from": 0.4}
    res = main_with(cfg)
    res["out_dir"] = out / "scaling" / "test"
    return res


def test_writes_tables_and_plots(result):
    for name in ("measurements.json", "table.md", "table.csv", "table.tex", "time_ms.md", "memory_mb.md",
                 "time_vs_length.png", "time_vs_length.pdf", "memory_vs_length.png", "memory_vs_length.pdf"):
        assert (result["out_dir"] / name).stat().st_size > 0, name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_saved_memory_does_not_contradict_declared_complexity(result, variant):
    v = result["variants"][variant]
    assert all(r["status"] == "ok" for r in v["rows"])
    slope = v["fitted"]["saved_memory"]
    assert slope <= v["declared"]["memory"] + 0.15, (variant, slope)
    assert slope >= v["declared"]["memory"] - 0.25, (variant, slope)


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
def test_analytic_flops_do_not_contradict_declared_time_complexity(case):
    mixer = mixers.build(case_mixer(case), 32, 8192, **MIXER_CASES[case])
    lengths = [1024, 2048, 4096, 8192]
    slope = loglog_slope(lengths, [mixer.flops(n) for n in lengths])
    declared = mixer.time_exponent
    assert declared - 0.05 <= slope <= declared + 0.2, (case, slope, declared)  # + log factors


def test_loglog_slope():
    assert loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert math.isnan(loglog_slope([1], [1]))


def test_fitted_slopes_include_the_flop_slope_of_gltm():
    import mixers
    from harness.bench.scaling import fitted_slopes
    rows = []
    for n in (1024, 2048, 4096, 8192):
        m = mixers.build("gltm", 64, n, pattern="power2", heads=4, block_size=64)
        rows.append({"status": "ok", "length": n, "batch": 1, "median_s": 1.0, "saved_bytes": 1.0,
                     "analytic_forward_flops": m.flops(n)})
    slope = fitted_slopes(rows, 0.0)["flops"]
    assert 1.0 < slope < 1.1  # n log n: above linear, far below the 1.4 the timed slope showed


def test_the_table_shows_the_flop_slope_beside_the_time_slope_where_it_was_fitted():
    from harness.report.scaling import scaling_tables

    def result(fitted: dict) -> dict:
        row = {"status": "ok", "length": 8, "params": 1, "median_s": 1e-3, "saved_bytes": 2**20}
        variant = {"backend": "torch", "rows": [row], "fitted": {"time": 1.41, "saved_memory": 1.0, "fit_lengths": [8],
                                                                 **fitted},
                   "declared": {"time_complexity": "O(n log n)", "memory_complexity": "O(n)"}}
        return {"environment": {"device": "cpu"}, "variants": {"gltm": variant}}

    summary = scaling_tables(result({"flops": 1.03}))[0]
    columns = list(summary.columns)
    assert columns.index("FLOP slope") == columns.index("time slope") + 1
    assert summary["FLOP slope"].tolist() == ["1.03"] and summary["time slope"].tolist() == ["1.41"]
    assert "FLOP slope" not in scaling_tables(result({}))[0].columns  # measured before the FLOP fit: no column
