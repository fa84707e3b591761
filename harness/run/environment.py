"""What ran: software versions, hardware and code revision, stamped into every record."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "mamba-ssm", "causal-conv1d", "triton", "hydra-core", "datasets", "numpy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes), or $MIXBENCH_GIT_REVISION where the
    code runs from a copy without .git (e.g. a GPU machine)."""
    if os.environ.get("MIXBENCH_GIT_REVISION"):
        return os.environ["MIXBENCH_GIT_REVISION"]
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict:
    """A stamp of versions and hardware for ``device``."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "device": device.type,
        "git": git_revision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_deterministic=torch.backends.cudnn.deterministic,
                   cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env
