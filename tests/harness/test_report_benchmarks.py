"""Each benchmark's report: tables and figures from a handful of tiny records, dispatched by task."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.report import cli as report
from harness.report import kit
from harness.report.recall import best_lr
from harness.run.execute import execute
from tests.harness.helpers import make_config

TINY = ("train.steps=2", "train.eval_every=1", "train.warmup_steps=1", "mixer.heads=2", "train.threads=1")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and do not fight other jobs for the cores; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(tmp_path, *overrides):
    record = execute(make_config(*TINY, *overrides, results_dir=tmp_path))
    assert record["status"] == "ok", record.get("error")
    return record


def test_recall_report_picks_the_best_learning_rate_and_draws_zoologys_figure(tmp_path):
    mqar = ("task=mqar", "task.vocab_size=64", "task.train_settings=[[16,2]]", "task.train_weights=[1]",
            "task.test_settings=[[16,2],[16,4],[32,4]]", "task.eval_samples=4", "benchmark=recall")
    for mixer, lrs in (("tmm", (0.01,)), ("attention", (0.001, 0.01))):
        for d in (16, 32):
            for lr in lrs:
                run(tmp_path, f"mixer={mixer}", f"model.d_model={d}", f"train.lr={lr}", *mqar)
    assert report.main(["--benchmark", "recall", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "recall" / "test"
    for name in ("table.md", "table.csv", "table.tex", "lr_sweep.csv", "accuracy_vs_d_model.png",
                 "accuracy_vs_d_model.pdf", "accuracy_vs_state.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    models = table[~table["mixer"].str.startswith("reference")]
    assert sorted(zip(models["mixer"], models["d_model"])) == [("attention", 16), ("attention", 32), ("tmm", 16), ("tmm", 32)]
    assert {"params", "best lr", "acc L16-kv2 (%)", "acc L32-kv4 (%)", "mean acc (%)", "converged",
            "state (values)"} <= set(table.columns)
    references = table[table["mixer"].str.startswith("reference")]  # first: 1/K, then 2/V (V = 64)
    assert list(table["mixer"][:2]) == list(references["mixer"])
    assert list(references["acc L16-kv2 (%)"]) == ["50.00", "3.12"] and list(references["acc L32-kv4 (%)"]) == ["25.00", "3.12"]
    assert "references 1/K and 2/V" in (out / "table.md").read_text()
    assert len(pd.read_csv(out / "lr_sweep.csv")) == 6


def test_recall_cells_at_or_below_one_over_k_are_flagged_and_rising_runs_marked():
    from harness.report.recall import convergence_note, flagged, protocol, still_rising

    assert flagged([0.25, 0.25], 0.25).endswith("<=1/K") and not flagged([0.5, 0.3], 0.25).endswith("<=1/K")

    def run(*accs):
        return {"curve": [{"accuracy_in": a} for a in accs]}
    assert still_rising(run(0.1, 0.5, 0.6, 0.7)) == pytest.approx(0.2)  # +20 pts over the last 3 evals
    assert still_rising(run(0.1, 0.700, 0.704, 0.708)) is None            # +0.8 pt: flat
    assert still_rising(run(0.5, 0.9, 0.995)) is None                     # at Zoology's 99% stop
    assert convergence_note([run(0.1, 0.5, 0.6, 0.7), run(0.7, 0.7, 0.7)]).startswith("pre-convergence (1/2 runs")
    assert convergence_note([run(0.7, 0.7, 0.7)]) == "yes"
    assert "2402.18668" in protocol("recall_benchmark") and "2312.04927" in protocol("recall_zoology_figure2")


def test_best_lr_is_the_highest_mean_accuracy_over_seeds():
    def rec(acc, status="ok"):
        return {"status": status, "final": {"accuracy_all": acc}}
    lr, runs = best_lr({0.001: [rec(0.5), rec(0.7)], 0.01: [rec(0.9), rec(0.2)], 0.1: [rec(1.0, "diverged")]})
    assert lr == 0.001 and len(runs) == 2


def test_icl_report_regression_with_baselines_and_language(tmp_path):
    for mixer in ("tmm", "attention"):
        run(tmp_path, f"mixer={mixer}", "task=icl_regression", "task.n_dims=3", "task.n_points=5", "task.eval_samples=8",
            "benchmark=icl", "model.d_model=16")
        run(tmp_path, f"mixer={mixer}", "task=icl_language", "task.max_len=32", "task.max_strings=12",
            "task.eval_samples=4", "benchmark=icl", "model.d_model=16")
    assert report.main(["--benchmark", "icl", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "icl" / "test"
    for name in ("regression_table.csv", "regression_error_vs_examples.png", "language_table.csv",
                 "language_learning_curves.pdf"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "regression_table.csv")
    assert list(table["mixer"]) == ["attention", "tmm", "(least squares)", "(zero predictor)"]
    assert float(table[table["mixer"] == "(least squares)"]["err/d k=4"].iloc[0]) < 1e-6  # exact from d = 3 on
    language = pd.read_csv(out / "language_table.csv")
    assert {"accuracy (%)", "TVD"} <= set(language.columns) and len(language) == 2


def test_lm_report_shows_matched_counts_flops_and_memory(tmp_path):
    (tmp_path / "a.txt").write_text("some text to model, byte by byte\n" * 50)
    (tmp_path / "b.txt").write_text("other text for validation\n" * 50)
    files = (f"task.train_files=[{tmp_path / 'a.txt'}]", f"task.validation_files=[{tmp_path / 'b.txt'}]")
    for mixer in ("tmm", "attention"):
        for task, length in (("lm_text", "task.context_len=16"), ("copy_text", "task.seq_len=16")):
            run(tmp_path, f"mixer={mixer}", f"task={task}", length, *files, "task.eval_samples=4", "benchmark=lm",
                "model=matched", "model.match_params=30000")
    assert report.main(["--benchmark", "lm", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "lm" / "test"
    for name in ("table.csv", "loss_vs_flops.png", "loss_vs_memory.png", "loss_vs_memory.pdf"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert sorted(zip(table["task"], table["mixer"])) == [("copy_text", "attention"), ("copy_text", "tmm"),
                                                          ("lm_text", "attention"), ("lm_text", "tmm")]
    assert all(abs(p / 30000 - 1) <= 0.02 for p in table["params"]) and set(table["target"]) == {30000}
    assert {"bits/token", "copy acc (%)", "train FLOPs", "peak memory (MB)"} <= set(table.columns)


def test_selective_copy_benchmark_is_reported_by_the_copy_report(tmp_path):
    for mixer in ("tmm", "attention"):
        run(tmp_path, "+experiment=selective_copy_benchmark", f"mixer={mixer}", "model.d_model=16",
            "task.seq_len=16", "task.num_tokens=3", "task.eval_lengths=[16,24]", "task.eval_samples=4", "train=test")
    assert report.main(["--benchmark", "selective_copy_benchmark", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "selective_copy" / "test"
    for name in ("table.md", "thresholds.md", "accuracy_vs_length.png", "loss_vs_flops.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert set(table["mixer"]) == {"tmm", "attention"} and {"acc L16 (%)", "acc L24 (%)"} <= set(table.columns)
