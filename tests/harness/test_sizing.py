"""How many runs share a GPU: the arithmetic, the sweep the probe looks at, the launcher overrides."""
from __future__ import annotations

import pytest
import torch

from harness.launch import profile
from harness.launch import sizing
from tests.harness.helpers import TINY, make_config

GB = 10**9


def test_memory_utilisation_and_the_cap_each_bound_the_jobs_per_gpu():
    fit = lambda peak, util, cap=8: sizing.jobs_that_fit(peak, 100 * GB, util, cap, 0.9, GB)["jobs_per_gpu"]  # noqa: E731
    assert fit(9 * GB, None) == 8 and fit(9 * GB, None, cap=4) == 4     # 90 GB / 10 GB = 9 by memory
    assert fit(29 * GB, None) == 3                                      # 90 / 30
    assert fit(GB, 0.30) == 3                                           # a GPU 30% busy: 3 runs
    assert fit(200 * GB, 0.05) == 1                                     # never below one


def test_the_probe_picks_the_sweeps_largest_run():
    cfgs = sizing.sweep_configs(["+experiment=recall_benchmark", "mixer=attention", "train=cpu"])  # widths 64-256
    assert len(cfgs) > 1 and len({c["model"]["d_model"] for c in cfgs}) > 1
    largest = max(cfgs, key=sizing.declared_bytes)
    assert largest["model"]["d_model"] == max(c["model"]["d_model"] for c in cfgs)
    small, wide = make_config(*TINY), make_config(*TINY, "model.d_model=64")
    assert sizing.declared_bytes(wide) > sizing.declared_bytes(small)


def test_launcher_overrides_on_one_gpu_follow_the_sizing(monkeypatch):
    monkeypatch.setattr(profile, "hardware", lambda: "gpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(profile, "packed_jobs", lambda sweep: 3)
    sweep = ["+experiment=recall_benchmark"]
    assert profile.overrides([], sweep) == ["hydra/launcher=gpu_parallel", "gpu.jobs_per_gpu=3", "concurrent_runs=3"]
    # the user's number wins and is not repeated; a launcher of the user's own is left alone
    assert profile.overrides([], [*sweep, "gpu.jobs_per_gpu=2"]) == ["hydra/launcher=gpu_parallel", "concurrent_runs=2"]
    assert profile.overrides([], [*sweep, "gpu.jobs_per_gpu=1"]) == []
    assert profile.overrides([], [*sweep, "hydra/launcher=fused"]) == []
    monkeypatch.setattr(profile, "packed_jobs", lambda sweep: 1)
    assert profile.overrides([], sweep) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_probe_measures_a_run_on_the_gpu():
    measured = sizing.probe(make_config(*TINY, "device=cuda", "train=gpu", "train.steps=10"), 5, torch.device("cuda"))
    assert measured["peak_bytes"] > 0 and measured["ms_per_step"] > 0
    assert measured["utilisation"] is None or 0 <= measured["utilisation"] <= 1
