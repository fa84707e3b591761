"""Bad input fails before any training, with a message naming the field and the valid values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mixers
from harness.config import ConfigError
from harness.run import execute
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
    (("train.warmup_steps=5000",), "train.warmup_steps"),
    (("device=tpu",), "device: must be one of auto, cpu, cuda"),
    (("model.n_layers=0",), "model.n_layers"),
])
def test_invalid_config_is_rejected_before_training(tmp_path, overrides, message):
    cfg = make_config(*overrides, results_dir=tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        execute(cfg)
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
