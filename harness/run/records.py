"""Run records: one JSON file per run, named by a hash of its resolved config, written atomically.

A record is strict JSON (a non-finite number is written as ``null``; older records with bare
``NaN`` still read), follows the umask like any file the user creates, and is trusted only when
the id in its file name is the id of the config it holds. A run in flight holds a lock file
(``<results_dir>/locks/<name>.lock``, an ``flock`` the kernel drops when the process dies), so that
a second sweep over the same folder skips it. A forced rerun that fails never replaces a finished result:
its record is kept beside it (``<name>.rerun-<time>.json``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from harness.run.stack import file_label as stack_file_label
from harness.run.stack import label as stack_label

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # every default (conf/config.yaml and its groups)
# Keys that say where, how verbosely or on which GPU a run writes, not what it computes.
NON_IDENTITY_KEYS = ("results_dir", "published_dir", "force", "concurrent_runs", "gpu", "logger")
NON_IDENTITY_TRAIN_KEYS = ("progress",)
# Keys added after records were first written: at these values they are left out of the identity,
# so that older records keep their ids (and are not rerun); any other value makes a new run.
# A dotted key names a field of a group (``model.position``: the field ``position`` of ``model``).
ADDED_KEYS = {"deterministic": False, "model.position": "none", "task.curriculum": False,
              "task.curriculum_start_dims": 5, "task.curriculum_start_points": 11, "task.curriculum_interval": 2000,
              "mixer.position": "rope", "mixer.masked_heads": 2, "task.train_automata": None,
              "task.eos": False, "task.packed_length": None, "model.init": "reference", "model.short_conv": 0,
              "model.order": "mixer_first", "model.mlp_activation": "gelu", "model.final_norm": True,
              "train.schedule": "cosine", "train.compile": "none", "train.head_positions": "scored",
              "save_weights": False, "model.stack": None, "model.channel_mixer": "mlp", "model.swiglu_multiple_of": 16}
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


def mixer_label(config: dict) -> str:
    """What a run's record and its reports call its mixers: the mixer's name, or a hybrid stack's
    (``gla×2+attention``: ``harness.run.stack.label``)."""
    return stack_label(config)


def runs_folder(results_dir: Path | str) -> Path:
    """Where the records of a results folder are: ``<results_dir>/runs/``."""
    return Path(results_dir) / "runs"


def config_default(key: str) -> str:
    """conf/config.yaml's value of the top-level ``key`` (``results_dir``, ``published_dir``), for the
    commands that are not Hydra applications (the report, the weights loader)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(CONF_DIR / "config.yaml")[key])


def is_inside(path: Path | str, folder: Path | str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, symlinks resolved."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def published_problem(results_dir: Path | str, published_dir: Path | str) -> str | None:
    """A problem naming ``results_dir`` when it is, or lies inside, ``published_dir``: the published
    records are read-only to the harness (runs, frozen evaluation sets and weights never go there)."""
    if not is_inside(results_dir, published_dir):
        return None
    return (f"results_dir: {results_dir} is inside published_dir ({published_dir}), the published records, which "
            f"runs never write to; choose a folder of your own (the default is {config_default('results_dir')}); "
            "to publish a record, copy it into <published_dir>/runs/ by hand")


def record_path(runs_dir: Path, config: dict) -> Path:
    """``<task>-<mixer>-<id>.json`` (a hybrid stack's mixers as ``gla_x2+attention``)."""
    name = f"{config['task']['name']}-{stack_file_label(config)}-{run_id(config)}.json"
    return Path(runs_dir) / name


# <task>-<mixer>-<12 hex digits>[.rerun-<time>].json; the task and mixer names may hold dashes
RECORD_NAME = re.compile(r"^(?P<stem>.+-(?P<id>[0-9a-f]{12}))(?:\.rerun-(?P<rerun>[0-9T]+))?\.json$")


def finite_or_null(value: object) -> object:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``os.umask`` can only set
    it, and setting it back and forth races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, record: dict) -> None:
    """Write strict JSON to a temporary file in the same folder, fsync, then rename over ``path``.
    The file gets the permissions the umask gives a new file (``mkstemp`` alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w") as f:
            json.dump(finite_or_null(record), f, indent=1, default=str, allow_nan=False)
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
    check_name(Path(path), record)
    return record


def check_name(path: Path, record: dict) -> None:
    """``ValueError`` unless the id in the file name is the id of the config the record holds (a record
    copied onto another run's name would otherwise make a sweep skip that run and a report count it)."""
    m = RECORD_NAME.match(path.name)
    if m is None:
        return  # not named by an id (a record written elsewhere, read directly): nothing to compare
    actual = run_id(record["config"])
    if m.group("id") != actual:
        raise ValueError(f"forged or misnamed record: its name says run {m.group('id')} but its config is run "
                         f"{actual}")


def rerun_path(path: Path, when: float | None = None) -> Path:
    """Where a failed forced rerun is kept beside the finished record at ``path``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(when))
    candidate = path.with_name(f"{path.stem}.rerun-{stamp}.json")
    n = 1
    while candidate.exists():  # two reruns in one second
        candidate = path.with_name(f"{path.stem}.rerun-{stamp}{n:02d}.json")
        n += 1
    return candidate


def reruns_of(path: Path) -> list[Path]:
    """The failed forced reruns kept beside the record at ``path``, newest first."""
    return sorted(path.parent.glob(f"{path.stem}.rerun-*.json"), reverse=True)


class RunLock:
    """An exclusive ``flock`` on ``<results_dir>/locks/<record name>.lock`` while a run is in flight;
    ``acquire`` is False when another process (another sweep) holds it. The kernel drops the lock
    when its process dies, so a killed run never blocks its rerun (it leaves an empty lock file,
    harmless); a clean release removes the file."""

    def __init__(self, record: Path):
        record = Path(record)
        self.path = record.parent.parent / "locks" / f"{record.stem}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then finds the file gone and retries
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_writable(folder: Path, field: str = "results_dir") -> str | None:
    """A problem (one line naming ``field``) when records cannot be written under ``folder``, else None.
    A probe file is created and removed in ``folder``, or, while it does not exist yet, in its nearest
    existing ancestor (which must be a folder); nothing is left behind."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{field}: records cannot be written to {folder} ({err.strerror or err}); " \
               "choose a writable folder (results_dir=DIR)"
    return None


def stray_temporaries(runs_dir: Path) -> list[Path]:
    """Temporary files of writes that a hard kill (SIGKILL, power loss) interrupted; never records."""
    return sorted(Path(runs_dir).glob(".*.tmp"))


def load_records(runs_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """All readable records under ``runs_dir`` and ``(path, problem)`` for each unreadable one."""
    records, problems = [], []
    for path in sorted(Path(runs_dir).glob("*.json"), key=lambda p: p.name):
        try:
            record = read_record(path)
        except (OSError, ValueError) as err:
            problems.append((path, f"{type(err).__name__}: {err}"))
            continue
        record["_path"] = str(path)
        records.append(record)
    return records, problems


PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def plain_name_problem(field: str, value: object) -> str | None:
    """A problem naming ``field`` unless ``value`` is a plain name (letters, digits, ``_ . -``, not
    starting with a dot or dash): such fields become folder names of reports."""
    if isinstance(value, str) and PLAIN_NAME.match(value) and value not in (".", ".."):
        return None
    return f"{field}: must be a plain name (letters, digits, _ . -; no slashes, not starting with . or -), got {value!r}"


def confined(root: Path | str, *parts: str) -> Path:
    """``root/parts...``, ``ValueError`` unless each part is a plain name and the path resolves inside
    ``root`` (no symlink out of it either): names that come from records are data, not paths."""
    for part in parts:
        problem = plain_name_problem("output folder name", part)
        if problem:
            raise ValueError(problem)
    path = Path(root).joinpath(*parts)
    base, resolved = Path(root).resolve(), path.resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"output path {path} resolves to {resolved}, outside {base}")
    return path


def results_folder(results_dir: Path | str, benchmark: str) -> Path:
    """Where a benchmark's tables, plots and measurements go: ``<results_dir>/<name>/``, the name
    without its ``_benchmark`` suffix (``copy_benchmark`` -> ``results/copy``; ``scaling`` as it is).
    ``ValueError`` unless the name is plain and the folder stays inside ``results_dir``."""
    return confined(results_dir, benchmark.removesuffix("_benchmark") or benchmark)
