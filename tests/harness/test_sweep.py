"""Sweeps: experiment params that the command line narrows or extends, a preflight that checks every
run before any trains, parallel runs through joblib with faults recorded and reported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf
import pytest

import mixers
from harness.launch.preflight import job_overrides, preflight
from harness.report import cli as report
from harness.report import kit
from harness.run.execute import CONF_DIR, execute
from tests.harness.helpers import TINY, make_config

ROOT = Path(__file__).resolve().parents[2]


def sweep(*overrides: str, check: bool = False):
    """``(job overrides, preflight result if check)`` of ``python -m harness.run -m <overrides>``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config("config", list(overrides), run_mode=RunMode.MULTIRUN,
                                                          with_log_configuration=False)
        return job_overrides(cfg), preflight(cfg, "config") if check else None


def values(jobs: list[list[str]], key: str) -> set[str]:
    return {o.split("=", 1)[1] for job in jobs for o in job if o.split("=", 1)[0] == key}


def experiment_mixers(experiment: str = "copy_benchmark") -> set[str]:
    """The registered mixers a benchmark's sweep runs: its ``mixer`` entries (conf/mixer/<entry>.yaml)
    by the mixer each names (``based_linear`` is ``based`` without its window)."""
    jobs, _ = sweep(f"+experiment={experiment}", "train=test")
    return {OmegaConf.load(Path(CONF_DIR) / "mixer" / f"{entry}.yaml").name for entry in values(jobs, "mixer")}


# Registered mixers each benchmark's sweep leaves out, and why; every other registered mixer runs.
LEFT_OUT = {
    **{name: {"mamba2": "the same model as mamba, whose default is version=2"}
       for name in ("copy_benchmark", "selective_copy_benchmark", "recall_benchmark", "icl_benchmark", "lm_benchmark",
                    "mad_benchmark")},
    # (the recall benchmark runs based as based_linear: without its window, as Zoology's recall sweeps)
    **{name: {m: "a CPU budget: the _cpu variants run the four mixers mamba, hyena, tmm, attention"
              for m in set(mixers.available()) - {"mamba", "hyena", "tmm", "attention"}}
       for name in ("recall_benchmark_cpu", "icl_benchmark_cpu", "lm_benchmark_cpu", "mad_benchmark_cpu")},
}


@pytest.mark.parametrize("experiment", sorted(LEFT_OUT))
def test_each_benchmark_sweeps_every_registered_mixer_but_those_it_names(experiment):
    assert set(mixers.available()) - experiment_mixers(experiment) == set(LEFT_OUT[experiment])
    assert experiment_mixers(experiment) <= set(mixers.available())


def test_every_benchmark_experiment_says_what_it_leaves_out():
    experiments = {p.stem for p in (Path(CONF_DIR) / "experiment").glob("*_benchmark*.yaml")}
    assert experiments == set(LEFT_OUT), "add the new benchmark's left-out mixers (and why) to LEFT_OUT"


def test_experiment_params_are_the_sweep():
    jobs, _ = sweep("+experiment=copy_benchmark", "train=test")
    mixers = experiment_mixers()
    assert len(jobs) == len(mixers) * 2 * 2
    assert values(jobs, "mixer") == mixers and {"mamba", "hyena", "tmm", "attention"} <= mixers


def test_command_line_narrows_and_extends_the_sweep():
    jobs, _ = sweep("+experiment=copy_benchmark", "mixer=tmm,attention", "model.d_model=64,128", "train=test")
    assert len(jobs) == 2 * 2 * 2 * 2  # mixers narrowed to 2, protocols 2, seeds 2, d_model added with 2
    assert values(jobs, "mixer") == {"tmm", "attention"}
    assert values(jobs, "model.d_model") == {"64", "128"}
    assert values(jobs, "task.protocol") == {"variable", "fixed"} and values(jobs, "seed") == {"0", "1"}
    jobs, _ = sweep("+experiment=copy_benchmark", "seed=0,1,2,3", "task.protocol=fixed", "train=test")
    assert len(jobs) == len(experiment_mixers()) * 1 * 4 and values(jobs, "seed") == {"0", "1", "2", "3"}


def test_preflight_finds_every_bad_run_and_counts_finished_ones(tmp_path):
    _, (runs, finished, problems) = sweep("mixer=tmm,attention", "model.d_model=30,32", "train=test",
                                          f"results_dir={tmp_path}", check=True)
    assert runs == 4 and len(problems) == 2
    assert all("model.d_model=30" in job for job, _ in problems)
    assert {e.split(":")[0] for _, e in problems} == {"mixer (tmm)", "mixer (attention)"}
    execute(make_config(*TINY, "mixer.heads=2", results_dir=tmp_path))
    _, (runs, finished, problems) = sweep(*TINY, "mixer.heads=2", "seed=0,1", "train=test", f"results_dir={tmp_path}",
                                          check=True)
    assert (runs, finished, problems) == (2, 1, [])


def run_sweep(*overrides: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.run", "-m", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_a_bad_run_stops_the_sweep_before_anything_trains(tmp_path):
    proc = run_sweep("mixer=tmm", "model.d_model=30,32", "train=test", f"results_dir={tmp_path}",
                     f"hydra.sweep.dir={tmp_path}/logs")
    assert proc.returncode == 2, proc.stderr
    assert "model.d_model=30" in proc.stdout + proc.stderr and "nothing was run" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_parallel_sweep_records_faults_and_goes_on(tmp_path):
    """joblib, two processes: one run diverges, the other finishes; the report shows both as such."""
    proc = run_sweep("hydra/launcher=cpu_parallel", "train=test", "train.threads=1", "concurrent_runs=2", *TINY, "mixer.heads=2",
                     "train.grad_clip=0", "train.lr=0.003,1e6", "train.steps=30", "train.eval_every=10",
                     "benchmark=faults", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "sweep: 0/2 done (0 trained), 0 running, 2 left; ETA —" in log  # the whole sweep's line, from the slots
    assert "sweep: 2/2 done (2 trained), 0 running, 0 left; ETA 0 s" in log
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    by_lr = {r["config"]["train"]["lr"]: r for r in records}
    assert by_lr[0.003]["status"] == "ok"
    assert by_lr[1e6]["status"] == "diverged" and 1 <= by_lr[1e6]["diverged_step"] <= 30
    assert report.main(["--benchmark", "faults", f"results_dir={tmp_path}"]) == 0
    table = (tmp_path / "faults" / "test" / "table.md").read_text()
    assert "1/1 ok" in table and f"0/1 ok (1 diverged at step {by_lr[1e6]['diverged_step']})" in table


def test_the_scaling_and_generation_benchmarks_measure_every_registered_mixer():
    """They list their variants by hand (several per mixer, some CUDA-only); none is left out."""
    conf = Path(CONF_DIR)
    scaled = {v["mixer"] for v in OmegaConf.to_container(OmegaConf.load(conf / "scaling.yaml"))["variants"].values()}
    missing = sorted(set(mixers.available()) - scaled)
    assert not missing, f"add a variant for {missing} to conf/scaling.yaml (variants: name: {{mixer: <name>}})"
    generated = set(OmegaConf.load(conf / "generation.yaml")["mixers"])
    missing = sorted(set(mixers.available()) - generated)
    assert not missing, f"add {missing} to mixers: in conf/generation.yaml"


def test_the_basic_launcher_shows_the_whole_sweep_and_what_finished_before(tmp_path):
    args = ("train=test", *TINY, "mixer.heads=2", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/logs")
    first = run_sweep("seed=0", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 1/1 done (1 trained), 0 running, 0 left; ETA 0 s" in first.stdout + first.stderr
    again = run_sweep("seed=0,1", *args)
    log = again.stdout + again.stderr
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 0/2 done (0 trained), 1 running, 1 left; ETA —" in log
    assert "sweep: 2/2 done (1 trained, 1 finished before), 0 running, 0 left; ETA 0 s" in log
