"""Run records: one JSON file per run, named by a hash of its resolved config, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

# Keys that say where or how verbosely a run writes, not what it computes.
NON_IDENTITY_KEYS = ("results_dir", "force", "concurrent_runs")
NON_IDENTITY_TRAIN_KEYS = ("progress",)
NON_IDENTITY_TASK_KEYS = ("cache_dir",)  # where a text task caches its tokenised corpus


def identity(config: dict) -> dict:
    """The part of a resolved config that determines a run's results."""
    ident = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
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
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "status" not in record or "config" not in record:
        raise ValueError("not a mixbench record (no status or config)")
    return record


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
