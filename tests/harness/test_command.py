"""The ``mixbench`` console command: run, report, freeze-eval and list, as the ``python -m`` forms do."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import mixers
import tasks
from harness import command
from tests.harness.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mixbench": "harness.command:main"}


def test_list_names_every_registered_mixer_and_task(capsys):
    assert command.main(["list", "mixers"]) == 0
    assert capsys.readouterr().out.split() == mixers.available()
    assert command.main(["list", "tasks"]) == 0
    assert capsys.readouterr().out.split() == tasks.available()
    assert command.main(["list", "widgets"]) == 2 and "mixers | tasks" in capsys.readouterr().err


def test_unknown_or_missing_command_says_what_exists(capsys):
    assert command.main(["train"]) == 2 and "run, report, freeze-eval, list" in capsys.readouterr().err
    assert command.main([]) == 2 and "mixbench run" in capsys.readouterr().out


def test_run_then_report_through_the_command(tmp_path):
    """One run and its report, in a fresh process as a user types them (the entry point's function)."""
    def mixbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "import sys; from harness.command import main; sys.exit(main())",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    done = mixbench("run", "train=test", *TINY, "mixer.heads=2", "benchmark=cmd", f"results_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = (tmp_path / "runs").glob("*.json")
    assert json.loads(record.read_text())["status"] == "ok"
    shown = mixbench("report", "--benchmark", "cmd", f"results_dir={tmp_path}")
    assert shown.returncode == 0, shown.stdout[-2000:]
    assert (tmp_path / "cmd" / "test" / "table.md").exists()
    bad = mixbench("run", "train=test", "seed=-1", f"results_dir={tmp_path}")
    assert bad.returncode == 2 and "seed: must be an integer" in bad.stdout + bad.stderr  # as python -m harness.run
