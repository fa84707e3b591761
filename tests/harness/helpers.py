"""Compose real Hydra configs for tests, exactly as ``python -m harness.run`` would."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from harness.config import to_dict
from harness.run import CONF_DIR


def make_config(*overrides: str, results_dir: Path | None = None) -> dict:
    """The resolved config dict for ``overrides`` (train=test unless overridden)."""
    args = list(overrides)
    if not any(a.startswith("train=") for a in args):
        args.append("train=test")
    if results_dir is not None:
        args.append(f"results_dir={results_dir}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_dict(compose(config_name="config", overrides=args))
