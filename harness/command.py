"""``mixbench``: the console command (``[project.scripts]``), beside the ``python -m`` forms.

    mixbench run mixer=tmm task=copy                   # = python -m harness.run mixer=tmm task=copy
    mixbench run -m +experiment=copy_benchmark         # a sweep, as python -m harness.run -m ...
    mixbench report --benchmark copy_benchmark         # = python -m harness.report --benchmark copy_benchmark
    mixbench freeze-eval +experiment=recall_benchmark  # = python -m harness.freeze_eval ...
    mixbench list mixers                               # the registered mixers (built-in and plug-ins), one a line
    mixbench list tasks

Each subcommand runs the module's own entry point with the rest of the command line, so it takes
the same arguments and exits with the same status.
"""
from __future__ import annotations

import runpy
import sys

MODULES = {"run": "harness.run", "report": "harness.report", "freeze-eval": "harness.freeze_eval"}
LISTS = ("mixers", "tasks")


def listed(what: str) -> list[str]:
    """The registered names of ``what`` (``mixers`` or ``tasks``)."""
    if what == "mixers":
        import mixers

        return mixers.available()
    import tasks

    return tasks.available()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "list":
        if len(rest) != 1 or rest[0] not in LISTS:
            print(f"mixbench list: say what to list: {' | '.join(LISTS)}", file=sys.stderr)
            return 2
        print("\n".join(listed(rest[0])))
        return 0
    if command not in MODULES:
        print(f"mixbench: unknown command {command!r}; commands: {', '.join([*MODULES, 'list'])} (mixbench --help)",
              file=sys.stderr)
        return 2
    sys.argv = [f"mixbench {command}", *rest]
    try:
        runpy.run_module(MODULES[command], run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
