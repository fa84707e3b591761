"""MAD's protocol as sweeps: the difficulty sweep expands to MAD's settings (baseline plus one axis
changed at a time), every line composes with its experiment and passes the preflight, and the
budget follows the training-set size as MAD's 200 epochs do."""
from __future__ import annotations

import pytest

from harness.launch.mad import load_sweep, sweep_lines
from harness.run.config import ConfigError, epoch_steps
from tests.harness.helpers import make_config
from tests.harness.test_sweep import sweep, values

# MAD's settings per task (mad-lab configs/tasks/*.yml: 1 baseline + the changes), selective copy without
# its training-set-size axis
MAD_SETTINGS = {"compression": 11, "memorization": 6, "in_context_recall": 11, "noisy_recall": 14, "fuzzy_recall": 11,
                "selective_copy": 9}


def settings(lines: list[str]) -> set[tuple]:
    out = set()
    for line in lines:
        fixed = [o for o in line.split() if "," not in o]
        (axis, levels), = [o.split("=") for o in line.split() if "," in o] or [("", "")]
        for level in levels.split(",") if axis else [None]:
            out.add(tuple(sorted(fixed + ([f"{axis}={level}"] if axis else []))))
    return out


def test_the_gpu_sweep_is_mads_settings():
    spec = load_sweep("mad_sweep")
    assert set(spec["tasks"]) == set(MAD_SETTINGS)
    for label, count in MAD_SETTINGS.items():
        one = sweep_lines({"tasks": {label: spec["tasks"][label]}})
        assert len(settings(one)) == count, label
    lines = sweep_lines({"tasks": {"noisy_recall": spec["tasks"]["noisy_recall"]}})
    assert "task.frac_noise=0.2,0.4,0.6,0.8" in lines[-1].split() and "task.noise_vocab_size=16" in lines[-1].split()


def test_sweep_lines_by_hand_and_errors():
    spec = {"tasks": {"x": {"task": "memorization", "baseline": {"vocab_size": 8, "seq_len": 4},
                            "changes": {"vocab_size": [16, 8, 32]}}}}
    assert sweep_lines(spec) == ["task=memorization task.seq_len=4 task.vocab_size=8,16,32"]
    assert sweep_lines({"tasks": {"y": {"task": "compression", "baseline": {"seq_len": 4}}}}) == [
        "task=compression task.seq_len=4"]
    with pytest.raises(ConfigError, match="tasks.x.changes.seq: the baseline gives no seq"):
        sweep_lines({"tasks": {"x": {"task": "memorization", "baseline": {}, "changes": {"seq": [1]}}}})
    with pytest.raises(ConfigError, match="tasks.x: needs 'task'"):
        sweep_lines({"tasks": {"x": {"baseline": {}}}})


def test_epoch_budget():
    assert epoch_steps(200, 12800, 128) == 20000 and epoch_steps(200, 800, 128) == 1400  # 7 batches an epoch
    with pytest.raises(ConfigError, match="task.num_train_examples"):
        epoch_steps(200, None, 128)
    small = make_config("+experiment=mad_benchmark", "task=compression", "task.num_train_examples=800", "mixer=attention")
    assert small["train"]["steps"] == 1400 and small["train"]["eval_every"] == 140 and small["train"]["warmup_steps"] == 0
    copy = make_config("+experiment=mad_benchmark", "task=selective_copy", "mixer=attention")
    assert copy["train"]["steps"] == 20000  # fresh examples: MAD's 12,800 an epoch


@pytest.mark.parametrize("experiment,name,grid", [("mad_benchmark_cpu", "mad_sweep_cpu", 2), ("mad_benchmark", "mad_sweep", 6)])
def test_every_task_composes_into_the_grid(experiment, name, grid):
    tasks = load_sweep(name)["tasks"]
    for line in (sweep_lines({"tasks": {label: spec}})[0] for label, spec in tasks.items()):
        jobs, _ = sweep(f"+experiment={experiment}", *line.split(), "mixer=attention")
        assert len(jobs) == grid * len(line.split(",")), line
        assert values(jobs, "mixer") == {"attention"} and values(jobs, "task") == {line.split()[0].split("=")[1]}


@pytest.mark.parametrize("line", [0, 4])  # compression (readout 'last') and fuzzy recall of the CPU sweep
def test_cpu_lines_pass_the_preflight(tmp_path, line):
    chosen = sweep_lines(load_sweep("mad_sweep_cpu"))[line]
    _, (runs, finished, problems) = sweep("+experiment=mad_benchmark_cpu", *chosen.split(), "mixer=attention",
                                          "train.lr=0.001", f"results_dir={tmp_path}", check=True)
    assert runs == 2 and finished == 0 and not problems, problems
