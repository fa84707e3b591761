"""Run records: one JSON file per run, named by a hash of its resolved config, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

# Keys that say where, how verbosely or on which GPU a run writes, not what it computes.
NON_IDENTITY_KEYS = ("results_dir", "force", "concurrent_runs", "gpu")
NON_IDENTITY_TRAIN_KEYS = ("progress",)
# Keys added after records were first written: at these values they are left out of the identity,
# so that older records keep their ids (and are not rerun); any other value makes a new run.
# A dotted key names a field of a group (``model.position``: the field ``position`` of ``model``).
ADDED_KEYS = {"deterministic": False, "model.position": "none", "task.curriculum": False,
              "task.curriculum_start_dims": 5, "task.curriculum_start_points": 11, "task.curriculum_interval": 2000,
              "mixer.position": "rope", "mixer.masked_heads": 2, "task.train_automata": None,
              "task.eos": False, "task.packed_length": None, "model.init": "reference", "model.short_conv": 0,
              "model.order": "mixer_first", "model.mlp_activation": "gelu", "model.final_norm": True,
              "train.schedule": "cosine", "train.compile": "none",
              "save_weights": False}
# Statuses that are a result of the config (skipped on a rerun unless force=true); ``oom`` and
# ``failed`` depend on the machine or the code, so a rerun tries them again.
FINISHED = ("ok", "diverged")
# Fields a record must have, by status; a record without them is reported as unreadable and rerun.
REQUIRED = {"ok": ("final", "curve", "timing", "memory", "throughput"), "diverged": ("diverged_step",),
            "oom": ("error",), "failed": ("error",)}
NON_IDENTITY_TASK_KEYS = ("cache_dir",)  # where a text task caches its tokenised corpus


def is_added_default(path: str, value: object) -> bool:
    """Whether ``value`` of the (dotted) key ``path`` is the default at which ``ADDED_KEYS`` leaves it out."""
    return path in ADDED_KEYS and type(value) is type(ADDED_KEYS[path]) and value == ADDED_KEYS[path]


def identity(config: dict) -> dict:
    """The part of a resolved config that determines a run's results."""
    ident = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS and not is_added_default(k, v)}
    for group, fields in ident.items():
        if isinstance(fields, dict) and any(f"{group}.{k}" in ADDED_KEYS for k in fields):
            ident[group] = {k: v for k, v in fields.items() if not is_added_default(f"{group}.{k}", v)}
    if isinstance(ident.get("train"), dict):
        ident["train"] = {k: v for k, v in ident["train"].items() if k not in NON_IDENTITY_TRAIN_KEYS}
    if isinstance(ident.get("task"), dict):
        ident["task"] = {k: v for k, v in ident["task"].items() if k not in NON_IDENTITY_TASK_KEYS}
    return ident


def run_id(config: dict) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of ``identity(config)``."""
    canonical = json.dumps(identity(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def record_path(runs_dir: Path, config: dict) -> Path:
    name = f"{config['task']['name']}-{config['mixer']['name']}-{run_id(config)}.json"
    return Path(runs_dir) / name


def write_atomic(path: Path, record: dict) -> None:
    """Write JSON to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict:
    """The record at ``path``; ``ValueError`` when it is not complete JSON or lacks what its status needs."""
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "status" not in record or not isinstance(record.get("config"), dict):
        raise ValueError("not a mixbench record (no status or config)")
    status = record["status"]
    if status not in REQUIRED:
        raise ValueError(f"unknown status {status!r}; records have one of {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED[status] if k not in record]
    if missing:
        raise ValueError(f"partial record: status {status!r} without {', '.join(missing)}")
    return record


def stray_temporaries(runs_dir: Path) -> list[Path]:
    """Temporary files of writes that a hard kill (SIGKILL, power loss) interrupted; never records."""
    return sorted(Path(runs_dir).glob(".*.tmp"))


def load_records(runs_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """All readable records under ``runs_dir`` and ``(path, problem)`` for each unreadable one."""
    records, problems = [], []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            record = read_record(path)
        except (OSError, ValueError) as err:
            problems.append((path, f"{type(err).__name__}: {err}"))
            continue
        record["_path"] = str(path)
        records.append(record)
    return records, problems


def results_folder(results_dir: Path | str, benchmark: str) -> Path:
    """Where a benchmark's tables, plots and measurements go: ``<results_dir>/<name>/``, the name
    without its ``_benchmark`` suffix (``copy_benchmark`` -> ``results/copy``; ``scaling`` as it is)."""
    return Path(results_dir) / benchmark.removesuffix("_benchmark")
