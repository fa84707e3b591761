"""MAD's difficulty sweep as Hydra sweeps: ``python -m harness.launch.mad mad_sweep`` prints one line of
overrides per (task, axis) of ``conf/<name>.yaml`` (MAD's ``baseline`` and one-at-a-time ``changes``,
mad-lab's make_benchmark_mad_configs); each line, with ``+experiment=mad_benchmark``, is one
``python -m harness.run -m`` sweep (the baseline first on each: runs shared between lines have one
record, so a second line finds them finished). Hydra's sweeper takes Cartesian products only; this
is the union MAD's protocol needs. A task without changes gives one line, its baseline.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness.run.config import CONF_DIR, ConfigError


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def sweep_lines(sweep: dict) -> list[str]:
    """One line of Hydra overrides per (task, axis) of ``sweep`` (``{"tasks": {label: {"task", "baseline",
    "changes"}}}``): the baseline's fields, and the axis at its baseline value then every change."""
    tasks = sweep.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError("tasks: the MAD sweep must map each task label to its task, baseline and changes")
    lines = []
    for label, spec in tasks.items():
        unknown = sorted(set(spec) - {"task", "baseline", "changes"})
        if unknown or "task" not in spec:
            raise ConfigError(f"tasks.{label}: needs 'task' (and 'baseline', 'changes'), got keys {sorted(spec)}")
        baseline, changes = dict(spec.get("baseline") or {}), dict(spec.get("changes") or {})
        for axis, values in changes.items():
            if axis not in baseline:
                raise ConfigError(f"tasks.{label}.changes.{axis}: the baseline gives no {axis} to change from")
            if not values:
                raise ConfigError(f"tasks.{label}.changes.{axis}: no values")
        fixed = [f"task={spec['task']}"]
        for axis in changes or [None]:
            fields = [f"task.{k}={_value(v)}" for k, v in baseline.items() if k != axis]
            if axis is not None:
                levels = [baseline[axis], *(v for v in changes[axis] if v != baseline[axis])]
                fields.append(f"task.{axis}={','.join(_value(v) for v in levels)}")
            lines.append(" ".join(fixed + fields))
    return lines


def load_sweep(name: str, config_dir: str = CONF_DIR) -> dict:
    path = Path(config_dir) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{name}: no sweep file {path}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m harness.launch.mad <sweep name under conf/, e.g. mad_sweep or mad_sweep_cpu>",
              file=sys.stderr)
        return 2
    try:
        lines = sweep_lines(load_sweep(argv[0]))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
