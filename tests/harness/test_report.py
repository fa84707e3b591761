"""The report builds its tables and plots from a handful of records, failures shown as such."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.report import cli as report
from harness.report import kit
from harness.run.execute import execute
from harness.run.records import write_atomic
from tests.harness.helpers import make_config

TINY = ("train.steps=4", "train.eval_every=2", "train.warmup_steps=1", "task.max_train_len=4",
        "task.eval_lengths=[2,4,8]", "task.eval_samples=8", "model.d_model=16", "benchmark=tiny")


def make_records(tmp_path):
    for mixer, heads in (("tmm", "mixer.heads=2"), ("attention", "mixer.heads=2")):
        for protocol in ("variable", "fixed"):
            for seed in (0, 1):
                execute(make_config(f"mixer={mixer}", heads, f"task.protocol={protocol}", f"seed={seed}", *TINY,
                                    results_dir=tmp_path))
    # a run that ran out of memory, as a sweep would record it
    oom = dict(json.loads(next((tmp_path / "runs").glob("copy-tmm-*.json")).read_text()))
    oom.update(status="oom", error="CUDA out of memory", id="x")
    oom["config"] = {**oom["config"], "seed": 7}
    for key in ("final", "curve", "memory", "throughput", "timing"):
        oom.pop(key, None)
    write_atomic(tmp_path / "runs" / "copy-tmm-oom.json", oom)


def test_report_writes_tables_and_plots(tmp_path, capsys):
    make_records(tmp_path)
    (tmp_path / "runs" / "half-written.json").write_text("{")
    assert report.main(["--benchmark", "tiny", f"results_dir={tmp_path}"]) == 0
    out_dir = tmp_path / "tiny" / "test"
    for name in ("table.md", "table.csv", "table.tex", "accuracy_vs_length.png", "accuracy_vs_length.pdf",
                 "loss_vs_flops.png", "loss_vs_flops.pdf", "loss_vs_memory.png", "loss_vs_memory.pdf",
                 "thresholds.md", "thresholds.csv", "thresholds.tex"):
        assert (out_dir / name).stat().st_size > 0, name
    assert "half-written.json" in capsys.readouterr().out
    table = pd.read_csv(out_dir / "table.csv")
    assert sorted(zip(table["mixer"], table["protocol"])) == [
        ("attention", "fixed"), ("attention", "variable"), ("tmm", "fixed"), ("tmm", "variable")]
    assert {"exact L2 (%)", "exact L8 (%)", "acc L2 (%)", "acc L8 (%)", "FLOPs to 90% exact", "FLOPs to 99% exact",
            "params", "backend", "tokens/s", "activations saved (MB)", "CPU peak RSS (MB)"} <= set(table.columns)
    assert (table["activations saved (MB)"].astype(float) > 0).all()
    tmm_rows = table[table["mixer"] == "tmm"]
    assert any("1 oom" in note for note in tmm_rows["runs"])  # shown as a failure, not as zeros
    assert "±" in table["acc L4 (%)"].iloc[0]
    assert (out_dir / "table.md").read_text().startswith("# tiny (test profile)")


def test_flops_to_reach():
    curve = [{"train_flops": 1.0, "accuracy_in": 0.5}, {"train_flops": 2.0, "accuracy_in": 0.95},
             {"train_flops": 3.0, "accuracy_in": 0.999}]
    assert kit.flops_to_reach(curve, 0.9) == 2.0
    assert kit.flops_to_reach(curve, 0.99) == 3.0
    assert kit.flops_to_reach(curve, 1.0) is None


def test_time_to_reach_thresholds():
    curve = [{"train_flops": 1.0, "train_time_s": 2.0, "accuracy_in": 0.5, "loss_in": 2.0},
             {"train_flops": 4.0, "train_time_s": 8.0, "accuracy_in": 0.95, "loss_in": 0.5}]
    assert kit.time_to_reach(curve, 0.9, "accuracy_in") == (4.0, 8.0)
    assert kit.time_to_reach(curve, 1.0, "loss_in", below=True) == (4.0, 8.0)
    assert kit.time_to_reach(curve, 0.1, "loss_in", below=True) is None


def test_report_shows_every_fault_and_every_unreadable_file(tmp_path, capsys):
    ok = execute(make_config("mixer=tmm", "mixer.heads=2", *TINY, results_dir=tmp_path))
    ok.pop("_path", None)
    bare = {k: v for k, v in ok.items() if k not in ("final", "curve", "memory", "throughput", "timing")}
    runs = tmp_path / "runs"
    write_atomic(runs / "copy-tmm-div.json", {**bare, "status": "diverged", "diverged_step": 3, "error": "loss is nan",
                                              "config": {**ok["config"], "seed": 1}})
    write_atomic(runs / "copy-tmm-fail.json", {**bare, "status": "failed", "error": "ValueError: x", "traceback": "...",
                                               "config": {**ok["config"], "seed": 2}})
    (runs / "copy-tmm-partial.json").write_text(json.dumps({k: v for k, v in ok.items() if k != "curve"}))
    (runs / ".copy-tmm-abc-123.tmp").write_text("{")
    assert report.main(["--benchmark", "tiny", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"{runs / 'copy-tmm-partial.json'}: ValueError: partial record: status 'ok' without curve" in out
    assert str(runs / ".copy-tmm-abc-123.tmp") in out
    table = pd.read_csv(tmp_path / "tiny" / "test" / "table.csv")
    assert list(table["runs"]) == ["1/3 ok (1 diverged at step 3; 1 failed)"]
    assert list(table["seeds"]) == ["0,1,2"]


def test_a_task_without_a_report_of_its_own_gets_the_generic_one(tmp_path, monkeypatch):
    execute(make_config("mixer=tmm", "mixer.heads=2", *TINY, results_dir=tmp_path))
    monkeypatch.setattr(report, "task_reports", lambda: {})  # as for a task no report module names
    assert report.main(["--benchmark", "tiny", f"results_dir={tmp_path}"]) == 0
    out_dir = tmp_path / "tiny" / "test"
    for name in ("table.md", "table.csv", "table.tex", "learning_curves.png", "learning_curves.pdf"):
        assert (out_dir / name).stat().st_size > 0, name
    table = pd.read_csv(out_dir / "table.csv")
    assert {"accuracy L2 (%)", "exact_match L8 (%)", "loss L4", "params", "runs"} <= set(table.columns)
    assert list(table["runs"]) == ["1/1 ok"]


def test_a_failing_report_falls_back_to_the_generic_one_and_others_go_on(tmp_path, monkeypatch, capsys):
    execute(make_config("mixer=tmm", "mixer.heads=2", *TINY, results_dir=tmp_path))
    execute(make_config("mixer=tmm", "mixer.heads=2", *TINY, "benchmark=other", results_dir=tmp_path))
    from harness.report import copy

    def broken(*args):
        raise KeyError("train_lengths")

    monkeypatch.setattr(copy, "report", broken)
    assert report.main(["--all", f"results_dir={tmp_path}"]) == 0
    assert "harness.report.copy failed (KeyError" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "test" / "learning_curves.png").exists()
    real = report.report_benchmark
    monkeypatch.setattr(report, "report_benchmark",
                        lambda records, name, d: (_ for _ in ()).throw(RuntimeError("odd")) if name == "other"
                        else real(records, name, d))
    assert report.main(["--all", f"results_dir={tmp_path}"]) == 1  # every benchmark reported, then the failure
    out = capsys.readouterr().out
    assert "other: the report failed" in out and "reports failed for: other" in out
    assert "wrote " + str(tmp_path / "tiny" / "test") in out


def test_the_report_takes_results_dir_as_every_entry_point_does(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main(["--all", "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        report.main(["--all", "seed=1"])
    assert "the settings are results_dir=DIR, published_dir=DIR, reports_dir=DIR" in capsys.readouterr().err
