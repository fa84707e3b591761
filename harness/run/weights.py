"""A finished run's trained weights, kept on request (``save_weights: true``), and the model rebuilt from them.

    keep(model, cfg, record_path, status)   # after training: writes the weights when the run asked for them
    load_trained(source, results_dir)       # (model, config, task): a run id, a record path or a weights path

Files: ``<results_dir>/weights/<record stem>.safetensors`` (the state dict, shared tensors such as
tied embeddings stored once) and ``<record stem>.config.json`` (the resolved config that built the
model) beside it; both are written to a temporary file of the same folder and renamed, so a killed
run never leaves half a file. They stay inside the results folder and out of git (.gitignore).
Loading rebuilds the model exactly as the run did (same config -> ``make_model``) and loads the
state dict strictly: a missing or unexpected tensor is an error, never a silent partial load.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from harness.run.config import make_model, validate
from harness.run.model import SequenceModel
from harness.run.records import config_default, read_record
from tasks.base import Task

WEIGHTS_FOLDER = "weights"  # under results_dir


def weights_path(results_dir: Path | str, record_path: Path | str) -> Path:
    """Where the weights of the run recorded at ``record_path`` go: ``<results_dir>/weights/<stem>.safetensors``."""
    return Path(results_dir) / WEIGHTS_FOLDER / f"{Path(record_path).stem}.safetensors"


def config_path(weights: Path | str) -> Path:
    """The resolved config stored beside ``weights``: ``<stem>.config.json``."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.config.json")


def _replace_atomically(path: Path, write) -> None:
    """``write(temporary path)``, then rename the temporary file over ``path`` (same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: torch.nn.Module, cfg: dict, record_path: Path | str) -> Path:
    """Write ``model``'s weights and ``cfg`` beside each other under ``cfg['results_dir']``; returns the weights path."""
    path = weights_path(cfg["results_dir"], record_path)
    _replace_atomically(config_path(path), lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=1, default=str) + "\n"))
    _replace_atomically(path, lambda tmp: save_model(model, tmp, metadata={"record": Path(record_path).name}))
    return path


def keep(model: torch.nn.Module, cfg: dict, record_path: Path | str, status: str) -> Path | None:
    """After a run: save the weights when the run asked for them (``save_weights``) and finished ``ok``."""
    if status != "ok" or not cfg.get("save_weights", False):
        return None
    return save(model, cfg, record_path)


def find_weights(source: str | Path, results_dir: Path | str = "results") -> Path:
    """The weights file for ``source``: a ``.safetensors`` path, a record path, or a run id (12 hex digits,
    looked up among ``<results_dir>/runs/*-<id>.json``). ``FileNotFoundError`` says what is missing."""
    source = str(source)
    if source.endswith(".safetensors"):
        path = Path(source)
    elif source.endswith(".json"):
        path = weights_path(results_dir, source)
    else:
        matches = sorted((Path(results_dir) / "runs").glob(f"*-{source}.json"))
        if not matches:
            raise FileNotFoundError(f"no record of run id {source!r} under {Path(results_dir) / 'runs'}")
        path = weights_path(results_dir, matches[0])
    if not path.exists():
        raise FileNotFoundError(f"no saved weights at {path}: rerun that config with save_weights=true")
    return path


def build_untrained(cfg: dict) -> tuple[SequenceModel, Task]:
    """The model of run config ``cfg`` at its initialisation (seeded by ``cfg['seed']`` as a run is), and its task."""
    task, _ = validate(cfg, check_device=False)
    with torch.random.fork_rng(devices=[]):  # seeded as execute seeds a run; the caller's RNG state is kept
        torch.manual_seed(cfg["seed"])
        return make_model(cfg["model"], cfg["mixer"], task), task


def load_trained(source: str | Path, results_dir: Path | str = "results") -> tuple[SequenceModel, dict, Task]:
    """``(model, config, task)``: the trained model of ``source`` (see ``find_weights``) on CPU, in eval mode."""
    path = find_weights(source, results_dir)
    cfg = json.loads(config_path(path).read_text())
    model, task = build_untrained(cfg)
    missing, unexpected = load_model(model, path, strict=True)
    if missing or unexpected:  # strict=True raises first; kept as a guard against a changed library
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval(), cfg, task


def record_of(weights: Path | str) -> dict | None:
    """The record the weights belong to (``<results_dir>/runs/<stem>.json``), or None when it is gone."""
    weights = Path(weights)
    record = weights.parent.parent / "runs" / f"{weights.stem}.json"
    return read_record(record) if record.exists() else None
