"""Launch presets: one GPU per job from the lock pool (checked without GPUs), and the Slurm preset
rendered to the sbatch script submitit would submit (checked without a cluster)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from harness.run import device as run_device_module
from harness.run import gpus
from harness.launch.profile import with_profile
from harness.run.execute import CONF_DIR
from tests.harness.helpers import make_config


def test_every_job_gets_its_own_gpu(tmp_path):
    leases = [gpus.acquire(["g0", "g1", "g2"], 1, tmp_path, prefer=0, timeout_s=0) for _ in range(3)]
    assert sorted(lease.index for lease in leases) == [0, 1, 2]
    with pytest.raises(TimeoutError):  # a fourth job waits rather than share
        gpus.acquire(["g0", "g1", "g2"], 1, tmp_path, timeout_s=0)
    leases[1].release()
    assert gpus.acquire(["g0", "g1", "g2"], 1, tmp_path, timeout_s=0).index == 1


def test_sharing_only_when_asked_and_spread_out(tmp_path):
    leases = [gpus.acquire(["g0", "g1"], 2, tmp_path, prefer=0, timeout_s=0) for _ in range(4)]
    assert [lease.index for lease in leases] == [0, 1, 0, 1]  # second slots only once every GPU has a job
    with pytest.raises(TimeoutError):
        gpus.acquire(["g0", "g1"], 2, tmp_path, timeout_s=0)


def test_a_job_keeps_to_its_last_gpu(tmp_path):
    with gpus.acquire(["g0", "g1", "g2"], 1, tmp_path, prefer=2, timeout_s=0) as lease:
        assert lease.index == 2
    assert gpus.acquire(["g0", "g1", "g2"], 1, tmp_path, timeout_s=0).index == 2  # no second CUDA context


def test_a_killed_job_frees_its_gpu(tmp_path):
    path = gpus.lock_path(tmp_path, "g0", 0)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            gpus.acquire(["g0"], 1, tmp_path, timeout_s=0)
    finally:
        holder.kill()
        holder.wait()
    assert gpus.acquire(["g0"], 1, tmp_path, timeout_s=0).index == 0


def test_runs_on_a_multi_gpu_machine_take_different_devices(tmp_path, monkeypatch):
    """harness.run.device with CUDA faked: two runs at once get cuda:0 and cuda:1; the GPU is set before use."""
    chosen = []
    monkeypatch.setattr(run_device_module, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(run_device_module, "gpu_ids", lambda: ["GPU-aaaa", "GPU-bbbb"])
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cfg = make_config(f"gpu.lock_dir={tmp_path}")
    with run_device_module.run_device(cfg) as (first, facts1), run_device_module.run_device(cfg) as (second, facts2):
        assert {first, second} == {torch.device("cuda", 0), torch.device("cuda", 1)}
        assert chosen == [first.index, second.index]
        assert {facts1["gpu_id"], facts2["gpu_id"]} == {"GPU-aaaa", "GPU-bbbb"}
    assert make_config()["gpu"]["jobs_per_gpu"] == 1  # the default: no sharing


def launcher_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)


def test_gpu_parallel_runs_one_job_per_gpu_slot():
    cfg = launcher_config("gpu_parallel", "gpu.jobs_per_gpu=2")
    assert cfg.hydra.launcher.n_jobs == 2 * max(1, torch.cuda.device_count())
    assert cfg.hydra.launcher._target_.endswith("IsolatedLauncher")  # joblib's settings, one worker per slot


def test_slurm_preset_renders_a_job_array_without_a_cluster(tmp_path, monkeypatch):
    """Hydra's submitit launcher, with the preset, down to the sbatch script; sbatch is never called."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    scripts, real_executor = [], submitit.AutoExecutor
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun is here"

    class RenderingExecutor:
        def __init__(self, folder, cluster, **kwargs):
            self.real = real_executor(folder=folder, cluster=cluster, **kwargs)

        def update_parameters(self, **params):
            self.real.update_parameters(**params)  # submitit checks every name against sbatch's options

        def map_array(self, fn, *iterables):
            jobs = list(zip(*iterables))
            slurm = self.real._executor
            slurm.parameters["map_count"] = len(jobs)  # what submitit adds for a job array
            scripts.append(slurm._make_submission_file_text(slurm._submitit_command_str, "uid"))
            return [FakeJob(job) for job in jobs]

    class FakeJob:
        def __init__(self, args):
            self.args = args

        def results(self):
            return [self.args]

    monkeypatch.setattr(submitit, "AutoExecutor", RenderingExecutor)
    cfg = launcher_config("slurm", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.partition=gpu",
                          "hydra.launcher.account=lab", "+experiment=copy_benchmark", "hydra.job.name=mixbench")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    jobs = [["mixer=tmm", "seed=0"], ["mixer=tmm", "seed=1"], ["mixer=attention", "seed=0"]]
    launched = launcher.launch(jobs, initial_job_idx=0)
    assert [job[0] for job in launched] == jobs and [job[2] for job in launched] == [0, 1, 2]
    script = scripts[0]
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=120", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=mixbench", f"#SBATCH --output={tmp_path}/.submitit/%A_%a/%A_%a_0_log.out"):
        assert line in script.splitlines(), (line, script)
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script


def test_slurm_sweeps_default_to_the_gpu_profile():
    assert with_profile(["run", "-m", "hydra/launcher=slurm"], "train")[-1] == "train=gpu"
    assert with_profile(["run", "hydra/launcher=slurm", "train=cpu"], "train")[-1] == "train=cpu"
