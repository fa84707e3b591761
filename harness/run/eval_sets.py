"""Evaluation sets frozen to disk with ``datasets``, so that every mixer (and a paper's readers) use
exactly the same examples.

Layout: ``<results_dir>/eval_sets/<task>/<id>/`` where ``<id>`` hashes the task's options (those
that decide its content; ``cache_dir`` does not), holding ``meta.json`` (task, options, set names,
SHA-256 of every set) and one ``save_to_disk`` folder per set with columns ``inputs``, ``targets``,
``mask`` and ``extras.<name>``. Runs load the frozen copy when it exists (``load``) and record its
id and digests; ``python -m harness.freeze_eval`` writes it (``freeze``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

import tasks
from harness.run.records import is_added_default
from tasks.base import Batch

IGNORED_OPTIONS = ("name", "cache_dir")  # where a task caches its corpus does not change its examples
DTYPES = {torch.int64: "int64", torch.int32: "int32", torch.float32: "float32", torch.float64: "float64",
          torch.bool: "bool"}


def set_id(task_cfg: dict) -> str:
    """12 hex digits of the SHA-256 of the task's content options: not its ``training_options`` (they
    shape training batches only), nor options added later at the default that keeps older ids."""
    cls = tasks._TASKS.get(task_cfg["name"])  # noqa: SLF001 - the registry has no public class lookup yet
    training = cls.training_options if cls is not None else ()
    options = {k: v for k, v in task_cfg.items() if k not in IGNORED_OPTIONS and k not in training
               and not is_added_default(f"task.{k}", v)}
    canonical = json.dumps({"name": task_cfg["name"], **options}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def set_dir(results_dir: Path | str, task_cfg: dict) -> Path:
    return Path(results_dir) / "eval_sets" / task_cfg["name"] / set_id(task_cfg)


def columns(batch: Batch) -> dict[str, torch.Tensor]:
    return {"inputs": batch.inputs, "targets": batch.targets, "mask": batch.mask,
            **{f"extras.{k}": v for k, v in batch.extras.items()}}


def digest(batch: Batch) -> str:
    """SHA-256 of a set's tensors (names, shapes, dtypes and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for name, tensor in columns(batch).items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def to_dataset(batch: Batch):
    """A ``datasets.Dataset`` with one row per example and fixed-shape array features."""
    from datasets import Array2D, Array3D, Dataset, Features, Sequence, Value

    features, data = {}, {}
    for name, tensor in columns(batch).items():
        t = tensor.detach().cpu()
        dtype, shape = DTYPES[t.dtype], tuple(t.shape[1:])
        if len(shape) == 0:
            features[name] = Value(dtype)
        elif len(shape) == 1:
            features[name] = Sequence(Value(dtype), length=shape[0])
        elif len(shape) == 2:
            features[name] = Array2D(shape, dtype)
        elif len(shape) == 3:
            features[name] = Array3D(shape, dtype)
        else:
            raise ValueError(f"column {name} has per-example shape {shape}; at most 3 dimensions are stored")
        data[name] = t.numpy()
    return Dataset.from_dict(data, features=Features(features))


def from_dataset(ds) -> Batch:
    rows = ds.with_format("torch")[:]
    extras = {k.removeprefix("extras."): v for k, v in rows.items() if k.startswith("extras.")}
    return Batch(inputs=rows["inputs"], targets=rows["targets"], mask=rows["mask"], extras=extras)


def freeze(sets: dict[str, Batch], task_cfg: dict, results_dir: Path | str) -> Path:
    """Write ``sets`` under ``set_dir``; an existing frozen copy is kept as it is. Returns the folder."""
    final = set_dir(results_dir, task_cfg)
    if (final / "meta.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        for name, batch in sets.items():
            to_dataset(batch).save_to_disk(str(tmp / name))
        meta = {"task": task_cfg["name"], "options": {k: v for k, v in task_cfg.items() if k not in IGNORED_OPTIONS},
                "id": final.name, "sets": list(sets), "sha256": {name: digest(b) for name, b in sets.items()},
                "examples": {name: len(b) for name, b in sets.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        try:
            os.rename(tmp, final)  # atomic; fails if another process froze it first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load(task_cfg: dict, results_dir: Path | str) -> tuple[dict[str, Batch], dict] | None:
    """The frozen sets of this task configuration and their ``meta.json``, or None when none are frozen.

    Raises ``ValueError`` if a set's content no longer matches the digest written with it.
    """
    folder = set_dir(results_dir, task_cfg)
    if not (folder / "meta.json").exists():
        return None
    import datasets  # only now: importing it costs ~0.7 s, which runs without frozen sets need not pay

    meta = json.loads((folder / "meta.json").read_text())
    sets = {name: from_dataset(datasets.load_from_disk(str(folder / name))) for name in meta["sets"]}
    for name, batch in sets.items():
        if digest(batch) != meta["sha256"][name]:
            raise ValueError(f"frozen evaluation set {folder / name} does not match its digest; delete and refreeze it")
    return sets, {"source": "frozen", "path": str(folder), **meta}
