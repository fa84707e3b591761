"""Opt-in tracking (logger=wandb|mlflow|tensorboard) through the harness's hook, with local backends only:
the curve, the config and the final metrics land inside the results folder; the record's id is unchanged."""
from __future__ import annotations

import importlib.util

import pytest

from harness.run import tracking
from harness.run.config import ConfigError
from harness.run.execute import execute
from harness.run.records import run_id
from tests.harness.helpers import TINY, make_config

RUN = (*TINY, "mixer.heads=2", "train.steps=4", "train.eval_every=2")


def tracked_run(tmp_path, name: str) -> dict:
    record = execute(make_config(*RUN, f"logger={name}", results_dir=tmp_path))
    assert record["status"] == "ok"
    assert run_id(record["config"]) == run_id(make_config(*RUN, results_dir=tmp_path))  # not part of the identity
    return record


def test_tensorboard_event_files_hold_the_curve_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = tracked_run(tmp_path, "tensorboard")
    folders = list((tmp_path / "tracking" / "tensorboard").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith(record["id"])
    events = EventAccumulator(str(folders[0])).Reload()
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [p["step"] for p in record["curve"]]
    assert [e.value for e in losses] == pytest.approx([p["train_loss"] for p in record["curve"]])


def test_mlflow_file_store_holds_params_curve_and_final_metrics(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    record = tracked_run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(tmp_path / "tracking" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("mixbench").experiment_id])
    assert run.data.params["mixer.name"] == "tmm" and run.data.tags["status"] == "ok"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [p["step"] for p in record["curve"]]
    assert run.data.metrics["final.loss_in"] == pytest.approx(record["final"]["loss_in"])


def test_wandb_offline_run_is_written_inside_the_results_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = tracked_run(tmp_path, "wandb")
    runs = list((tmp_path / "tracking" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("*.wandb")  # the offline run's protobuf log: its keys are plain strings
    data = log.read_bytes()
    assert all(key.encode() in data for key in ("train_loss", "final/loss_in", "eval/L4/accuracy", record["id"]))


def test_a_missing_tracker_package_stops_the_run_before_training(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^logger: wandb is not installed"):
        execute(make_config(*RUN, "logger=wandb", results_dir=tmp_path))
    assert not (tmp_path / "runs").exists()


def test_a_failing_tracker_never_fails_the_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(tracking.Tensorboard, "point", lambda self, point: 1 / 0)
    record = tracked_run(tmp_path, "tensorboard")
    assert record["status"] == "ok" and len(record["curve"]) == 2


def test_curve_points_become_flat_scalars():
    point = {"step": 2, "train_loss": 1.5, "accuracy_in": 0.5, "eval": {"L4": {"loss": 1.0, "accuracy": 0.25}}}
    assert tracking.scalars(point) == {"train_loss": 1.5, "accuracy_in": 0.5, "eval/L4/loss": 1.0,
                                       "eval/L4/accuracy": 0.25}
