"""Compose real Hydra configs for tests, exactly as ``python -m harness.run`` would."""
from __future__ import annotations

from pathlib import Path

from harness.run.config import load

# A run that trains and evaluates in a fraction of a second (any mixer with heads takes mixer.heads=2).
TINY = ("train.steps=4", "train.eval_every=2", "train.warmup_steps=1", "task.max_train_len=4", "task.eval_lengths=[4]",
        "task.eval_samples=8", "model.d_model=16")


def make_config(*overrides: str, results_dir: Path | None = None) -> dict:
    """The resolved config dict for ``overrides`` (train=test unless overridden)."""
    args = list(overrides)
    if not any(a.startswith("train=") for a in args):
        args.append("train=test")
    if results_dir is not None:
        args.append(f"results_dir={results_dir}")
    return load(args)
