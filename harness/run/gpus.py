"""Each job on a machine gets a GPU of its own: a pool of lock files, one per GPU slot.

A job takes a slot with an exclusive ``flock`` and holds it while it runs; the kernel drops the
lock when the job ends or dies, so a killed job never leaves a GPU taken. ``jobs_per_gpu`` slots
per GPU let that many jobs share one (only when asked). Jobs of different sweeps on the same
machine share the pool (same ``lock_dir``), so they never share a GPU either. No torch here:
callers pass the GPU ids and use the returned index.

The lock folder is the user's own: created 0700, and refused unless it is a real folder (not a
symlink) owned by this user and writable by nobody else; lock files are opened with
``O_NOFOLLOW``, so a symlink planted in a shared folder is never followed (nor truncated).
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_last_index: int | None = None  # the GPU this process used last; its next job prefers it (no new CUDA context)


@dataclass
class Lease:
    """Slot ``slot`` of GPU ``gpu_id`` (``index`` among the visible GPUs), held until ``release``."""

    index: int
    gpu_id: str
    slot: int
    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(lock_dir: Path, gpu_id: str, slot: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu_id)
    return Path(lock_dir) / f"gpu-{safe}.slot{slot}.lock"


class LockDirError(PermissionError):
    """The GPU lock folder is not this user's own private folder."""


def private_lock_dir(lock_dir: Path | str) -> Path:
    """``lock_dir``, created 0700 if missing; ``LockDirError`` unless it is a folder (not a symlink)
    owned by this user that neither group nor others may write."""
    lock_dir = Path(lock_dir)
    lock_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(lock_dir, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(lock_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise LockDirError(f"gpu.lock_dir: {lock_dir} is not a folder (a symlink or a file); refusing to use it")
    if info.st_uid != os.getuid():
        raise LockDirError(f"gpu.lock_dir: {lock_dir} belongs to user {info.st_uid}, not to this user "
                           f"({os.getuid()}); choose a folder of your own (gpu.lock_dir=DIR)")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LockDirError(f"gpu.lock_dir: {lock_dir} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                           f"make it private (chmod 700) or choose another folder")
    return lock_dir


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)  # who holds it, for a human looking at the lock folder
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def candidates(n_gpus: int, jobs_per_gpu: int, prefer: int | None) -> list[tuple[int, int]]:
    """(gpu index, slot) in the order to try: first slots of every GPU before second slots (spread
    jobs out), the preferred GPU first within each round."""
    order = list(range(n_gpus))
    if prefer is not None and 0 <= prefer < n_gpus:
        order.remove(prefer)
        order.insert(0, prefer)
    return [(i, slot) for slot in range(jobs_per_gpu) for i in order]


def acquire(gpu_ids: list[str], jobs_per_gpu: int, lock_dir: Path | str, prefer: int | None = None,
            poll_s: float = 1.0, timeout_s: float | None = None,
            on_wait: Callable[[int], None] | None = None) -> Lease:
    """A free slot among ``gpu_ids``; waits (polling) while all are held, ``TimeoutError`` after ``timeout_s``."""
    global _last_index
    if not gpu_ids:
        raise ValueError("no GPU to assign")
    lock_dir = private_lock_dir(lock_dir)
    started, warned = time.monotonic(), False
    prefer = _last_index if prefer is None else prefer
    while True:
        for index, slot in candidates(len(gpu_ids), jobs_per_gpu, prefer):
            path = lock_path(lock_dir, gpu_ids[index], slot)
            fd = _try_lock(path)
            if fd is not None:
                _last_index = index
                return Lease(index=index, gpu_id=gpu_ids[index], slot=slot, path=path, fd=fd)
        if timeout_s is not None and time.monotonic() - started >= timeout_s:
            raise TimeoutError(f"all {len(gpu_ids) * jobs_per_gpu} GPU slots under {lock_dir} are held")
        if on_wait is not None and not warned:
            on_wait(len(gpu_ids) * jobs_per_gpu)
            warned = True
        time.sleep(poll_s)
