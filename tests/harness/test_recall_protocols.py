"""The recall experiments: each protocol composes to the backbone and data its source runs, and
every run of each CPU variant passes the config check before anything trains."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.run.config import CONF_DIR, load, validate
from tests.harness.test_sweep import sweep

RECALL = ("recall_benchmark", "recall_zoology_figure2", "recall_window_sweep", "recall_state_sweep")
OWN_SHORT_CONV = {"mamba", "mamba1", "mamba2", "hyena"}  # mixers with a short convolution of their own


def jobs_of(experiment: str) -> list[list[str]]:
    jobs, _ = sweep(f"+experiment={experiment}")
    return jobs


@pytest.mark.parametrize("experiment", [e + suffix for e in RECALL for suffix in ("", "_cpu")])
def test_recall_experiments_run_zoologys_backbone(experiment):
    jobs = jobs_of(experiment)
    checked = jobs if experiment.endswith("_cpu") else jobs[:: max(1, len(jobs) // 6)]
    for job in checked:
        cfg = load(job)
        model, mixer = cfg["model"], cfg["mixer"]["name"]
        assert model["tie_embeddings"] is True and model["mlp_ratio"] == 0 and model["n_layers"] == 2
        assert model["short_conv"] == (0 if mixer in OWN_SHORT_CONV else 3), (experiment, mixer)
        assert cfg["benchmark"] == experiment.removesuffix("_cpu")
        if experiment.startswith(("recall_benchmark", "recall_zoology")) and mixer == "based":
            assert cfg["mixer"]["window"] == 0  # Based's linear attention alone, as Zoology's sweeps
        validate(cfg, check_device=False)


def test_the_zoology_figure2_protocol_is_one_setting_per_run_with_zero_filler():
    jobs = jobs_of("recall_zoology_figure2")
    settings, first = set(), {}
    for job in jobs:  # the first job of each setting
        first.setdefault(next(o for o in job if o.startswith("task.train_settings=")), job)
    for job in first.values():
        task = load(job)["task"]
        assert task["random_non_queries"] is False and task["test_settings"] == task["train_settings"]
        settings.add(tuple(map(tuple, task["train_settings"])))
    assert settings == {((64, 4),), ((128, 8),), ((256, 16),)}
    mixture = load(jobs_of("recall_benchmark")[0])["task"]
    assert mixture["random_non_queries"] is True and len(mixture["train_settings"]) == 5


def test_every_recall_experiment_names_its_source():
    for experiment in RECALL:
        text = (Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text()
        assert "zoology" in text and ("2402.18668" in text or "2312.04927" in text or "arxiv24_based_figure2" in text)


def test_the_tmm_reproduction_mode_is_the_authors_block_and_recipe():
    cfg = load(["model=tmm_repro", "train=tmm_repro", "mixer=attention", "task=copy"])
    _, train = validate(cfg, check_device=False)
    model = cfg["model"]
    assert (model["order"], model["mlp_activation"], model["mlp_ratio"], model["final_norm"], model["init"],
            model["position"], model["tie_embeddings"]) == ("mlp_first", "silu", 4, False, "kaiming", "none", False)
    assert (train.lr, train.weight_decay, train.warmup_steps, train.schedule, train.min_lr_ratio, tuple(train.betas)) \
        == (0.0005, 0.0, 500, "linear", 0.0, (0.9, 0.999))
    assert OmegaConf.load(Path(CONF_DIR) / "model" / "tmm_repro.yaml")  # parses on its own
