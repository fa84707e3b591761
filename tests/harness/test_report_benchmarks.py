"""Each benchmark's report: tables and figures from a handful of tiny records, dispatched by task."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.report import cli as report
from harness.report import kit
from harness.report.recall import best_lr
from harness.run.execute import execute
from harness.run.records import load_records
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


def test_icl_report_regression_with_baselines_plateau_and_the_settings_that_vary(tmp_path):
    regression = ("task=icl_regression", "task.n_dims=3", "task.n_points=5", "task.eval_samples=8", "benchmark=icl",
                  "model.d_model=16")
    for mixer in ("tmm", "attention"):
        run(tmp_path, f"mixer={mixer}", *regression)
    run(tmp_path, "mixer=attention", *regression, "task.curriculum=true", "task.curriculum_start_dims=2",
        "task.curriculum_start_points=3", "model.position=learned")
    assert report.main(["--benchmark", "icl", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "icl" / "test"
    for name in ("regression_table.csv", "regression_error_vs_examples.png", "regression_error_vs_examples.pdf"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "regression_table.csv")
    baselines = ["(least squares)", "(averaging)", "(3-nearest neighbours)", "(one-step gradient descent)",
                 "(zero predictor)"]
    assert list(table["mixer"]) == ["attention", "attention", "tmm", *baselines]
    assert {"task.curriculum", "model.position", "left plateau"} <= set(table.columns)
    models = table[~table["mixer"].isin(baselines)]
    assert sorted(zip(models["mixer"], models["task.curriculum"].astype(str), models["model.position"])) == [
        ("attention", "False", "none"), ("attention", "True", "learned"), ("tmm", "False", "none")]
    assert all(note in ("0/1", "1/1") for note in models["left plateau"])
    rows = table.set_index("mixer")
    assert float(rows.loc["(least squares)", "err/d k=4"]) < 1e-6  # exact from d = 3 on
    # optimal one-step gradient descent beats averaging at every k >= 1 (same step direction, smaller step)
    assert float(rows.loc["(one-step gradient descent)", "err/d k=1"]) < float(rows.loc["(averaging)", "err/d k=1"])
    assert "0.9 x the zero predictor" in (out / "regression_table.md").read_text()


def test_left_plateau_compares_the_last_error_with_the_zero_predictor():
    from harness.report.icl import left_plateau

    def rec(err, zero):
        return {"final": {"eval": {"prompts": {"err_k2": err, "zero_k2": zero}}}}
    assert left_plateau(rec(0.5, 1.0), 3) and not left_plateau(rec(0.95, 1.0), 3)
    assert not left_plateau(rec(0.9, 1.0), 3)  # strictly below 0.9 x zero


def test_icl_report_language_with_ngram_baselines_cached_and_token_accuracy(tmp_path, monkeypatch):
    language = ("task=icl_language", "task.max_len=32", "task.max_strings=12", "task.eval_samples=4",
                "benchmark=icl", "model.d_model=16")
    for mixer in ("tmm", "attention"):
        run(tmp_path, f"mixer={mixer}", *language)
    assert report.main(["--benchmark", "icl", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "icl" / "test"
    for name in ("language_table.csv", "language_learning_curves.png", "language_learning_curves.pdf"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "language_table.csv")
    assert list(table["mixer"]) == ["attention", "tmm", "(1-gram)", "(2-gram)", "(3-gram)", "(4-gram)"]
    assert {"accuracy per sequence (%)", "accuracy per token (%)", "TVD", "L1 (RegBench's)"} <= set(table.columns)
    for _, row in table.iterrows():
        assert float(row["L1 (RegBench's)"]) == pytest.approx(2 * float(row["TVD"]), abs=2e-3)
        assert 0 <= float(row["accuracy per token (%)"]) <= 100  # the records carry the token counts
    # the n-gram scores equal the task's own baseline_metrics on the evaluation set the records name
    from harness.report.icl import ngram_baselines
    import tasks
    [cache] = out.glob("ngram_baselines_*.json")
    record = next(r for r in load_records(tmp_path / "runs")[0] if r["config"]["task"]["name"] == "icl_language")
    task = tasks.build("icl_language", max_len=32, max_strings=12, eval_samples=4)
    batch = task.eval_sets()["test"]
    expected = task.baseline_metrics(batch, 3)
    cached = ngram_baselines(record, out)
    assert cached["matches_records"] is True and cached["source"] == "regenerated"
    assert cached["orders"]["3"]["accuracy"] == pytest.approx(float(expected["accuracy"].mean()))
    assert cached["orders"]["3"]["token_accuracy"] == pytest.approx(
        float(expected["correct_tokens"].sum() / expected["scored_tokens"].sum()))
    # computed once: a second report reads the cache
    monkeypatch.setattr(type(task), "baseline_metrics", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert report.main(["--benchmark", "icl", f"results_dir={tmp_path}"]) == 0
    assert cache.exists() and "(4-gram)" in (out / "language_table.md").read_text()


def test_icl_language_columns_for_the_regbench_settings_that_vary_ngrams_on_the_frozen_set(tmp_path):
    language = ("task=icl_language", "task.max_len=32", "task.max_strings=12", "task.eval_samples=4",
                "benchmark=icl", "model.d_model=16", "mixer=tmm")
    from harness.run import eval_sets
    import tasks
    cfg = make_config(*TINY, *language, results_dir=tmp_path)["task"]
    eval_sets.freeze(tasks.build("icl_language", max_len=32, max_strings=12, eval_samples=4).eval_sets(), cfg, tmp_path)
    run(tmp_path, *language)
    run(tmp_path, *language, "task.exclude_eval_automata=false", "task.train_automata=3")
    assert report.main(["--benchmark", "icl", f"results_dir={tmp_path}"]) == 0
    table = pd.read_csv(tmp_path / "icl" / "test" / "language_table.csv")
    assert {"task.exclude_eval_automata", "task.train_automata"} <= set(table.columns)
    assert len(table) == 2 + 4  # the two settings, then the n-grams of their one evaluation set
    [cache] = (tmp_path / "icl" / "test").glob("ngram_baselines_*.json")
    assert '"source": "frozen"' in cache.read_text() and '"matches_records": true' in cache.read_text()


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
    assert {"bits/token", "copy acc (%)", "train FLOPs", "activations saved (MB)", "CPU peak RSS (MB)"} <= set(table.columns)


def test_copy_report_headlines_exact_match_keeps_attention_variants_apart_and_bounds_memory(tmp_path):
    jelassi = ("benchmark=copy_jelassi", "model.d_model=16", "task.eos=true", "task.min_len=2", "task.max_train_len=4",
               "task.packed_length=24", "task.eval_lengths=[4,8]", "task.eval_samples=4")
    for mixer in ("attention", "attention_nope", "attention_hard_alibi", "linear_attention"):
        run(tmp_path, f"mixer={mixer}", *jelassi)
    assert report.main(["--benchmark", "copy_jelassi", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / "copy_jelassi" / "test"
    for name in ("table.md", "thresholds.md", "memory_bound.md", "memory_bound.csv", "accuracy_vs_length.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert sorted(zip(table["mixer"], table["mixer.position"].fillna("-"))) == [
        ("attention", "hard_alibi"), ("attention", "nope"), ("attention", "rope"), ("linear_attention", "-")]
    columns = list(table.columns)
    assert columns.index("exact L4 (%)") < columns.index("exact L8 (%)") < columns.index("acc L4 (%)")
    assert {"FLOPs to 90% exact", "FLOPs to 99% exact"} <= set(columns)
    assert "exact match >= 90%" in (out / "thresholds.md").read_text()
    bound = pd.read_csv(out / "memory_bound.csv").set_index("mixer")
    from tasks.copy import string_bits
    assert float(bound.loc["(string: L log2 alphabet)", "state bits L8"]) == pytest.approx(string_bits(8, 26), rel=1e-2)
    # attention's KV cache after [BOS] s [SEP] grows with L; linear attention's state does not
    attention = bound[bound.index == "attention"]
    assert all(float(a) < float(b) for a, b in zip(attention["state bits L4"], attention["state bits L8"]))
    assert float(bound.loc["linear_attention", "state bits L4"]) == float(bound.loc["linear_attention", "state bits L8"])


def test_older_records_compare_at_the_defaults_of_keys_added_since(tmp_path):
    new = run(tmp_path, "mixer=attention", "mixer.heads=2", "model.d_model=16", "task.eval_lengths=[4]",
              "task.max_train_len=4", "task.eval_samples=4")
    old = {**new, "config": {**new["config"], "seed": 1,
                             "mixer": {k: v for k, v in new["config"]["mixer"].items() if k != "position"}}}
    tmm = {**new, "config": {**new["config"], "mixer": {"name": "tmm"}}}
    completed = kit.with_added_defaults([new, old, tmm])
    assert completed[1]["config"]["mixer"]["position"] == "rope" and "position" not in old["config"]["mixer"]
    assert "position" not in completed[2]["config"]["mixer"]  # no tmm record has one
    assert "mixer.position" not in kit.varying_keys(completed)
    assert kit.settings_label("tmm", ["mixer.position"], [None]) == "tmm"


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
