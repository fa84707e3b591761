"""Bad input fails before any training, with a message naming the field and the valid values."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.run.config import ConfigError, check_forward, make_model, validate
from harness.run.execute import execute
import mixers
from tests.harness.helpers import make_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides,message", [
    (("model.max_len=20",), "model.max_len: is 20 but task copy feeds inputs of up to 257 tokens"),
    (("model.d_model=30", "mixer=attention"), "heads"),
    (("model.d_model=30", "mixer=tmm"), "d_model=30 is not divisible by heads=4"),
    (("+mixer.haeds=2",), "valid options: heads"),
    (("task.min_len=0",), "task.min_len"),
    (("task.protocol=shifted",), "task.protocol"),
    (("train.steps=0",), "train.steps"),
    (("train.precision=fp8",), "train.precision: must be one of fp32, bf16"),
    (("device=cpu", "train.precision=bf16"), "train.precision: bf16 runs as CUDA autocast, but this run's device is cpu"),
    (("train.warmup_steps=5000",), "train.warmup_steps"),
    (("train.weight_decay_exempt=all",), "train.weight_decay_exempt: must be one of conventions, matrices, got 'all'"),
    (("device=tpu",), "device: must be one of auto, cpu, cuda"),
    (("model.n_layers=0",), "model.n_layers"),
    # found by fuzzing the loader (test_config_fuzz.py): wrong types, null, negatives, floats for ints, unknown keys
    (("train.steps=abc",), "train.steps: must be an integer, got 'abc' (str)"),
    (("train.steps=true",), "train.steps: must be an integer, got True (bool)"),
    (("train.batch_size=1.5",), "train.batch_size: must be an integer, got 1.5 (float)"),
    (("train.lr=abc",), "train.lr: must be a finite number"),
    (("train.lr=1e300",), "train.lr: must be a finite number"),
    (("train.lr=nan",), "train.lr: must be a finite number"),
    (("train.betas=0.9",), "train.betas: must be a list of 2"),
    (("train.batch_size=1180591620717411303424",), re.compile(r"train.batch_size: \d+ is out of range")),
    (("model.d_model=null",), "model.d_model: must be an integer, got None"),
    (("model.mlp_ratio=0.001",), "model.mlp_ratio: must be 0 (no MLP) or > 0 and leave the MLP at least one hidden unit"),
    (("seed=-1",), re.compile(r"seed: must be an integer in \[0, 2\*\*63\)")),
    (("+model.dropout=0.1",), re.compile(r"model: unknown field\(s\) \['dropout'\]; valid fields: channel_mixer, d_model")),
    (("+sed=1",), re.compile(r"config: unknown field\(s\) \['sed'\]")),
    (("model.dropout=0.1",), "override: Could not override 'model.dropout'"),
    (("task.alphabet_size=abc",), "task.alphabet_size: must be an integer"),
    (("task.eval_lengths=[4,x]",), "task.eval_lengths: must be a list of integers"),
    (("mixer.heads=2.0",), "mixer.heads: must be an integer, got 2.0"),
    (("mixer=mamba", "mixer.chunk_size=0", "mixer.impl=torch"), "mixer.chunk_size: must be an integer >= 1, got 0"),
    (("mixer.heads=0",), "mixer.heads: must be an integer >= 1, got 0"),
    (("mixer=mamba2", "mixer.headdim=-4"), "mixer.headdim: must be an integer >= 1, got -4"),
    (("benchmark=../../elsewhere",), "benchmark: must be a plain name"),
    (("train.profile=/tmp/x",), "train.profile: must be a plain name"),
    (("mixer=mamba", "mixer.d_conv=0", "mixer.impl=torch"), "mixer.d_conv: must be an integer >= 1, got 0"),
    (("mixer=hyena", "mixer.filter_lr=-1"), re.compile(r"mixer \(hyena\): gives some parameters lr=-1(\.0)?, which must be >= 0")),
    (("gpu.jobs_per_gpu=0",), "gpu.jobs_per_gpu: must be an integer >= 1"),
])
def test_invalid_config_is_rejected_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message if isinstance(message, re.Pattern) else re.escape(message)):
        execute(make_config(*overrides, results_dir=tmp_path))
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing recorded


def test_unknown_mixer_lists_valid_mixers(tmp_path):
    cfg = make_config(results_dir=tmp_path)
    cfg["mixer"]["name"] = "transformer"
    with pytest.raises(ConfigError, match="valid mixers: " + ", ".join(mixers.available())):
        execute(cfg)


def test_unknown_task_lists_valid_tasks(tmp_path):
    cfg = make_config(results_dir=tmp_path)
    cfg["task"]["name"] = "kopy"
    with pytest.raises(ConfigError, match="valid tasks: .*copy"):
        execute(cfg)


def test_command_line_reports_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.run", "mixer=tmm", "model.d_model=30", "train=test",
                           f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/log"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "configuration error: mixer (tmm): tmm: d_model=30 is not divisible by heads=4" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_unknown_config_group_option_lists_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.run", "mixer=transformer", "train=test",
                           f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/log"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "transformer" in out and "attention" in out and "tmm" in out


@pytest.mark.parametrize("mixer_file", sorted(p.stem for p in (ROOT / "conf" / "mixer").glob("*.yaml")))
def test_every_mixer_config_passes_validation(mixer_file):
    """The defaults in conf/mixer/ have the types their mixer's signature declares, and build and run."""
    cfg = make_config(f"mixer={mixer_file}")
    task, _ = validate(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # mamba_ssm kernels run on CUDA only
    check_forward(make_model(cfg["model"], cfg["mixer"], task).to(device), task, device, cfg["mixer"])
