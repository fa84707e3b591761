"""The MAD report: MAD's score by hand (best of the grid per setting, mean over settings, mean over
tasks), incomplete models marked, and the whole benchmark dispatched to it whatever the task."""
from __future__ import annotations

import pandas as pd
import torch
import pytest

from harness.report import cli as report
from harness.report.mad import mad_task, scores, settings_table
from harness.run.execute import execute
from tests.harness.helpers import make_config


def fake(mixer, task, lr, wd, acc, **options):
    return {"status": "ok", "final": {"accuracy_all": acc},
            "config": {"benchmark": "mad_benchmark", "seed": 0, "mixer": {"name": mixer}, "task": {"name": task, **options},
                       "model": {"d_model": 64}, "train": {"lr": lr, "weight_decay": wd, "profile": "test"}}}


def test_mad_score_by_hand():
    records = [
        fake("attention", "compression", 1e-3, 0.0, 0.5, seq_len=32), fake("attention", "compression", 1e-3, 0.1, 0.7, seq_len=32),
        fake("attention", "compression", 1e-4, 0.0, 0.3, seq_len=64),
        fake("attention", "noisy_recall", 1e-3, 0.0, 0.9, noise_vocab_size=0, frac_noise=0.0),
        fake("tmm", "compression", 1e-3, 0.0, 0.4, seq_len=32),
        fake("tmm", "compression", 1e-3, 0.1, 0.1, seq_len=32, eval_samples=99),  # another evaluation size: same setting
    ]
    assert mad_task(records[3]) == "in_context_recall" and mad_task(records[0]) == "compression"
    table, values = scores(records)
    assert values["attention"] == pytest.approx({"compression": 0.5, "in_context_recall": 0.9, "MAD score": 0.7})
    assert values["tmm"] == pytest.approx({"compression": 0.4})  # one of two settings: no MAD score
    rows = table.set_index("model")
    assert rows.loc["attention", "MAD score (%)"] == "70.0" and rows.loc["tmm", "compression (%)"] == "40.0 (1/2)"
    assert rows.loc["tmm", "MAD score (%)"].startswith("-") and "incomplete" in rows.loc["tmm", "MAD score (%)"]
    cells = settings_table(records)
    assert list(cells["setting"][:2]) == ["seq_len=32", "seq_len=64"]
    assert cells.iloc[0]["attention"].startswith("70.0") and "wd 0.1" in cells.iloc[0]["attention"]


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_whole_benchmark_goes_to_the_mad_report(tmp_path):
    tiny = ("train.steps=2", "train.eval_every=1", "train.warmup_steps=1", "mixer=attention", "mixer.heads=2",
            "train.threads=1", "model.d_model=16", "benchmark=mad_benchmark")
    for task in (("task=compression", "task.vocab_size=4", "task.seq_len=4", "task.num_train_examples=8", "task.eval_samples=4"),
                 ("task=noisy_recall", "task.vocab_size=8", "task.noise_vocab_size=0", "task.frac_noise=0.0",
                  "task.seq_len=8", "task.num_train_examples=8", "task.eval_samples=4"),
                 ("task=selective_copy", "task.seq_len=8", "task.num_tokens=2", "task.eval_samples=4")):
        record = execute(make_config(*tiny, *task, results_dir=tmp_path))
        assert record["status"] == "ok", record.get("error")
    assert report.main(["--benchmark", "mad_benchmark", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "mad" / "test"  # results_folder: mad_benchmark -> mad/
    for name in ("scores.md", "scores.csv", "scores.tex", "settings.csv", "grid.csv", "scores.png", "scores.pdf",
                 "settings.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "scores.csv")
    assert list(table["model"]) == ["attention"]
    assert {"compression (%)", "in_context_recall (%)", "selective_copy (%)", "MAD score (%)"} <= set(table.columns)
    assert not (out / "table.md").exists()  # not the copy report's table: selective_copy came here too
