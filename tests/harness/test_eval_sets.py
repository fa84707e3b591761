"""Frozen evaluation sets: datasets round trip, runs use them, digests guard them."""
from __future__ import annotations

import json

import pytest
import torch

from harness.run import eval_sets as frozen
from harness.run.execute import execute
from harness.run.freeze_eval import main as freeze_main
from tasks import build_task
from tests.harness.helpers import make_config

LANGUAGE = {"name": "icl_language", "max_len": 32, "eval_samples": 6, "max_strings": 12}


@pytest.mark.parametrize("task_cfg", [
    LANGUAGE,
    {"name": "mqar", "vocab_size": 128, "train_settings": [[16, 2]], "train_weights": [1],
     "test_settings": [[16, 2], [32, 4]], "eval_samples": 5},
    {"name": "icl_regression", "n_dims": 3, "n_points": 4, "eval_samples": 5},
])
def test_round_trip_keeps_every_tensor(tmp_path, task_cfg):
    sets = build_task(task_cfg["name"], **{k: v for k, v in task_cfg.items() if k != "name"}).eval_sets()
    path = frozen.freeze(sets, task_cfg, tmp_path)
    loaded, meta = frozen.load(task_cfg, tmp_path)
    assert list(loaded) == list(sets) and meta["path"] == str(path)
    for name in sets:
        for key, tensor in frozen.columns(sets[name]).items():
            got = frozen.columns(loaded[name])[key]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), (name, key)


def test_runs_load_the_frozen_sets_and_record_them(tmp_path):
    overrides = ("task=icl_language", "task.max_len=32", "task.eval_samples=6", "task.max_strings=12",
                 "train.steps=2", "train.warmup_steps=1", "train.eval_every=1", "model.d_model=16", "mixer.heads=2")
    generated = execute(make_config(*overrides, results_dir=tmp_path))
    assert generated["eval_sets"]["source"] == "generated"
    assert freeze_main([*overrides, f"results_dir={tmp_path}"]) == 0
    again = execute(make_config(*overrides, "seed=1", results_dir=tmp_path))
    assert again["eval_sets"]["source"] == "frozen"
    assert again["eval_sets"]["sha256"] == generated["eval_sets"]["sha256"]  # deterministic generation
    # a tampered set is refused
    cfg = make_config(*overrides, results_dir=tmp_path)["task"]
    meta_path = frozen.set_dir(tmp_path, cfg) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"]["test"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its digest"):
        frozen.load(cfg, tmp_path)


def test_freeze_covers_every_task_an_experiment_sweeps(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("harness.run.freeze_eval.freeze_for", lambda overrides: seen.append(overrides) or "x")
    assert freeze_main(["+experiment=icl_benchmark_cpu", f"results_dir={tmp_path}"]) == 0
    assert sorted(o[-1] for o in seen) == ["task=icl_language_cpu", "task=icl_regression"]


def test_frozen_set_ids_ignore_training_only_options_and_added_defaults():
    from harness.run.eval_sets import set_id
    copy = {"name": "copy", "protocol": "variable", "alphabet_size": 26, "min_len": 1, "max_train_len": 32,
            "eval_lengths": [8, 16], "eval_samples": 256, "eval_seed": 1234}
    assert set_id({**copy, "eos": False, "packed_length": None}) == set_id(copy)
    assert set_id({**copy, "eos": True, "packed_length": 220}) == set_id({**copy, "eos": True}) != set_id(copy)
    regression = {"name": "icl_regression", "n_dims": 8, "n_points": 17}
    assert set_id({**regression, "curriculum": True, "curriculum_interval": 300}) == set_id(regression)
    language = {"name": "icl_language", "max_len": 256}
    assert set_id({**language, "exclude_eval_automata": True, "train_automata": 10}) == set_id(language)
