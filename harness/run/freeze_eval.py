"""Freeze a benchmark's evaluation sets to disk (``datasets`` ``save_to_disk``) before it runs.

    python -m harness.freeze_eval task=mqar
    python -m harness.freeze_eval +experiment=icl_benchmark_cpu      # every task the experiment sweeps

Takes the same overrides as ``harness.run.execute`` and keeps those that decide the evaluation sets (the
experiment, ``task``, ``task.*`` and ``results_dir``; sweeps over other keys, e.g. ``seed=0,1``, are
ignored); when the experiment or the command line sweeps ``task``, every task of the sweep is frozen. Writes ``<results_dir>/eval_sets/<task>/<id>/`` (see ``harness.run.eval_sets``);
an existing frozen copy is left as it is. Runs with the same task options then load these sets.
"""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir

from harness.run import eval_sets as frozen
from harness.run.config import ConfigError, make_task, to_dict
from harness.run.execute import CONF_DIR
from harness.run.records import published_problem


def swept_tasks(overrides: list[str]) -> list[str]:
    """The ``task`` options the experiment's sweeper (or the command line) lists, or [] for none."""
    listed = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "task"]
    if listed:
        return listed[-1].split(",")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    return str(params["task"]).split(",") if "task" in params else []


def freeze_for(overrides: list[str]) -> str:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_dict(compose(config_name="config", overrides=overrides))
    problem = published_problem(cfg["results_dir"], cfg["published_dir"])
    if problem:
        raise ConfigError(problem)  # the published folder is read-only to the harness
    task = make_task(cfg["task"])
    existing = frozen.load(cfg["task"], cfg["results_dir"])
    if existing is not None:
        return f"{existing[1]['path']} (already frozen)"
    path = frozen.freeze(task.eval_sets(), cfg["task"], cfg["results_dir"])
    return str(path)


RELEVANT = ("experiment", "task", "results_dir", "published_dir")


def relevant(override: str) -> bool:
    """Whether an override can change the evaluation sets or where they are written."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(".", 1)[0] in RELEVANT or key.startswith("task/")


def main(argv: list[str]) -> int:
    overrides = [a for a in argv if a not in ("-m", "--multirun") and relevant(a)]
    tasks = swept_tasks(overrides)
    runs = [[o for o in overrides if o.split("=", 1)[0] != "task"] + [f"task={t.strip()}"] for t in tasks] or [overrides]
    try:
        for run in runs:
            print(f"eval sets: {freeze_for(run)}")
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
