"""Fused runs (``harness.run.fused``): members that differ in lr, weight decay or seed train in one
process with the same records (ids, curves, final metrics) as the runs made alone."""
from __future__ import annotations

import pytest
import torch

from harness.run.execute import execute
from harness.run.fused import execute_fused, fusion_groups
from tests.harness.helpers import TINY, make_config

MEMBERS = [("seed=0", "train.lr=0.003"), ("seed=0", "train.lr=0.01", "train.weight_decay=0.0"),
           ("seed=1", "train.lr=0.003")]
# on CPU with one thread the members' arithmetic is the alone runs' own: agreement to rounding (measured: exact)
RTOL = 1e-6
TIMING = ("train_time_s", "wall_s")


def curve_values(record: dict) -> list[dict]:
    return [{k: v for k, v in point.items() if k not in TIMING} for point in record["curve"]]


def assert_same_metrics(fused: dict, alone: dict, rtol: float = RTOL) -> None:
    assert fused["id"] == alone["id"] and fused["status"] == alone["status"] == "ok"
    assert fused["final"].keys() == alone["final"].keys()
    for key, value in alone["final"].items():
        if key not in TIMING and isinstance(value, float):
            assert fused["final"][key] == pytest.approx(value, rel=rtol), key
    assert len(fused["curve"]) == len(alone["curve"])
    for a, b in zip(curve_values(fused), curve_values(alone)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rtol)
        assert a["eval"].keys() == b["eval"].keys()
        for name in a["eval"]:
            assert a["eval"][name] == pytest.approx(b["eval"][name], rel=rtol), name
        assert a["tokens"] == b["tokens"] and a["train_flops"] == b["train_flops"]


# copy, and an MQAR mixture (its task draws each batch's setting from a generator it keeps per data generator)
TASKS = {"copy": TINY,
         "mqar": ("task=mqar", "task.vocab_size=64", "task.train_settings=[[16,2],[32,4]]", "task.train_weights=[1,1]",
                  "task.test_settings=[[16,2],[32,4]]", "task.eval_samples=4", "train.steps=4", "train.eval_every=2",
                  "train.warmup_steps=1", "model.d_model=16")}


def check_fused_equals_alone(tmp_path, common: tuple[str, ...], rtol: float) -> None:
    fused_cfgs = [make_config(*common, *m, results_dir=tmp_path / "fused") for m in MEMBERS]
    alone = [execute(make_config(*common, *m, results_dir=tmp_path / "alone")) for m in MEMBERS]
    fused = execute_fused(fused_cfgs)
    for f, a in zip(fused, alone):
        assert_same_metrics(f, a, rtol)
        assert f["fused"]["method"] == "loop" and f["fused"]["members"] == [r["id"] for r in alone]
        assert "fused" not in a
    # written where execute writes, so that a rerun of either kind skips them
    again = execute(fused_cfgs[1])
    assert again["id"] == fused[1]["id"] and "fused" in again


@pytest.mark.parametrize("task", sorted(TASKS))
def test_fused_members_get_the_records_of_the_runs_made_alone(tmp_path, task):
    check_fused_equals_alone(tmp_path, (*TASKS[task], "mixer=attention", "mixer.heads=2", "train.threads=1"), RTOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("step", ["none", "cuda_graph"])
def test_fused_members_on_the_gpu_get_the_records_of_the_runs_made_alone(tmp_path, task, step):
    """On CUDA MQAR draws each step's setting from a CPU generator it keeps per data generator: the
    members of different seeds need task objects of their own. fp32; rel 1e-4 (atomics in some
    CUDA backward kernels may sum in another order)."""
    check_fused_equals_alone(tmp_path, (*TASKS[task], "mixer=attention", "mixer.heads=2", "device=cuda",
                                        "train.precision=fp32", f"train.compile={step}"), 1e-4)


def test_a_member_that_diverges_is_recorded_and_the_others_go_on(tmp_path):
    common = (*TINY, "mixer=attention", "mixer.heads=2", "train.grad_clip=0")
    cfgs = [make_config(*common, "train.lr=0.003", results_dir=tmp_path),
            make_config(*common, "train.lr=1e30", results_dir=tmp_path)]
    ok, diverged = execute_fused(cfgs)
    assert ok["status"] == "ok" and diverged["status"] == "diverged"


def test_groups_are_the_configs_that_differ_only_in_lr_weight_decay_or_seed():
    cfgs = [make_config(*TINY, *m) for m in MEMBERS] + [make_config(*TINY, "model.d_model=32"),
                                                         make_config(*TINY, "model.d_model=32", "seed=4")]
    assert fusion_groups(cfgs) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="differ in more than"):
        execute_fused([cfgs[0], cfgs[3]])


def test_the_fused_launcher_says_what_it_fuses_and_writes_every_record(tmp_path):
    """``hydra/launcher=fused``: 2 seeds x 2 learning rates of one architecture in one group; every run
    gets its own record, with the id the basic launcher would give it."""
    import json
    import subprocess
    import sys

    from harness.run.records import run_id
    from tests.harness.test_sweep import ROOT

    args = [*TINY, "mixer=attention", "mixer.heads=2", "train=test", "seed=0,1", "train.lr=0.003,0.01",
            "model.n_layers=1", "benchmark=fused", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/logs"]
    proc = subprocess.run([sys.executable, "-m", "harness.run", "-m", "hydra/launcher=fused", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "4 runs in 1 groups (4 runs fused" in out
    assert out.index("preflight: group 0: 4 x attention on copy") < out.index("fused: 4 runs in one process")
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert len(records) == 4 and all(r["status"] == "ok" and r["fused"]["method"] == "loop" for r in records)
    cfg = make_config(*TINY, "mixer=attention", "mixer.heads=2", "seed=1", "train.lr=0.01", "model.n_layers=1",
                      "benchmark=fused", results_dir=tmp_path)
    assert run_id(cfg) in {r["id"] for r in records}
