"""The models a frozen-model benchmark measures (retention, invertibility): finished runs with saved
weights, each also at its initialisation (the untrained baseline, built from the same config and seed).

    models(cfg)   # [(state, model, run config, task)]: state "trained" or "random init"

``cfg`` names the runs: ``runs`` (run ids, record paths or weights paths) and/or ``benchmark`` (every
finished record of that benchmark under ``<results_dir>/runs`` whose weights were saved); ``baseline:
true`` adds each run's random-init twin.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.run.config import ConfigError
from harness.run.model import SequenceModel
from harness.run.records import load_records
from harness.run.weights import build_untrained, find_weights, load_trained, weights_path
from tasks.base import Task

log = logging.getLogger("mixbench.trained")
TRAINED, RANDOM = "trained", "random init"


def weight_files(cfg: dict) -> list[Path]:
    """The weights files of the runs ``cfg`` names; a ``ConfigError`` naming the field when there are none."""
    results_dir = cfg["results_dir"]
    paths = []
    for source in cfg.get("runs") or []:
        try:
            paths.append(find_weights(source, results_dir))
        except FileNotFoundError as err:
            raise ConfigError(f"runs: {err}") from None
    if cfg.get("benchmark"):
        records, _ = load_records(Path(results_dir) / "runs")
        chosen = [r for r in records if r["config"].get("benchmark") == cfg["benchmark"] and r["status"] == "ok"]
        found = [weights_path(results_dir, r["_path"]) for r in chosen]
        missing = [p for p in found if not p.exists()]
        if missing:
            log.warning("%d finished runs of %s have no saved weights (rerun with save_weights=true): %s",
                        len(missing), cfg["benchmark"], ", ".join(p.stem for p in missing))
        paths += [p for p in found if p.exists()]
    if not paths:
        raise ConfigError(f"runs / benchmark: no saved weights found under {results_dir} (runs={cfg.get('runs')}, "
                          f"benchmark={cfg.get('benchmark')!r}); train with save_weights=true first")
    return sorted(set(paths))


def models(cfg: dict) -> list[tuple[str, SequenceModel, dict, Task, str]]:
    """``(state, model, run config, task, weights stem)`` for each run ``cfg`` names (and its random-init twin
    when ``cfg['baseline']``), on CPU in eval mode, parameters frozen."""
    out = []
    for path in weight_files(cfg):
        model, run_cfg, task = load_trained(path, cfg["results_dir"])
        out.append((TRAINED, model, run_cfg, task, path.stem))
        if cfg.get("baseline", True):
            untrained, _ = build_untrained(run_cfg)
            out.append((RANDOM, untrained.eval(), run_cfg, task, path.stem))
    for _, model, *_ in out:
        model.requires_grad_(False)
    return out
