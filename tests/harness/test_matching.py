"""Parameter matching: every mixer lands within 2% of the target; clear errors otherwise."""
from __future__ import annotations

import pytest

from harness.run.config import ConfigError, make_model, make_task
from tests.conftest import MIXER_CASES, case_mixer
from tests.harness.helpers import make_config

TARGET = 60_000


def matched(case: str, *overrides: str):
    options = [f"mixer.{k}={v}" for k, v in MIXER_CASES[case].items()]
    cfg = make_config(f"mixer={case_mixer(case)}", *options, "model=matched", f"model.match_params={TARGET}",
                      "task.max_train_len=16", "task.eval_lengths=[16]", *overrides)
    return make_model(cfg["model"], cfg["mixer"], make_task(cfg["task"]))


@pytest.mark.parametrize("case", ["tmm", "attention", "mamba", "hyena"])
def test_every_mixer_matches_within_two_percent(case):
    model = matched(case)
    total = model.parameter_counts()["total"]
    assert abs(total / TARGET - 1) <= 0.02, total
    assert model.matching["params"] == total and model.matching["d_model"] == model.d_model


def test_match_by_mlp_keeps_the_width():
    model = matched("attention", "model.match_by=mlp", "model.d_model=32")
    assert model.d_model == 32 and abs(model.parameter_counts()["total"] / TARGET - 1) <= 0.02
    assert model.blocks[0].mlp.hidden == model.matching["mlp_hidden"] != 4 * 32


def test_match_by_d_model_only_moves_the_width():
    model = matched("tmm", "model.match_by=d_model", "model.match_tolerance=0.2")
    assert model.blocks[0].mlp.hidden == 4 * model.d_model and model.matching["mlp_hidden"] is None


def test_impossible_targets_are_rejected_before_training():
    with pytest.raises(ConfigError, match="model.match_params: mamba: even the narrowest"):
        matched("mamba", "model.match_params=1000")
    with pytest.raises(ConfigError, match="model.match_params: tmm: closest model"):
        matched("tmm", "model.match_by=d_model", "model.match_tolerance=0.0001")
