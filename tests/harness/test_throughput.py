"""The throughput benchmark end to end on tiny CPU sizes: every mode trains its runs and writes a row."""
from __future__ import annotations

import json
import os

import pytest

from harness.bench.throughput import config, main_with, table
from tests.harness.helpers import TINY


def tiny(tmp_path, modes: str) -> dict:
    cfg = config([f"results_dir={tmp_path}", "mixers=[attention]", "profile=test", f"modes=[{modes}]"])
    cfg["settings"] = {"copy": ["task=copy"]}
    cfg["profiles"]["test"] = {"suffix": "_cpu", "overrides": [*TINY, "train=test", "device=cpu", "train.threads=1",
                                                               "mixer.heads=2"],
                               "steps": 3, "lrs": [0.001, 0.003], "compile": "compile"}
    return cfg


def test_the_throughput_benchmark_measures_sequential_and_fused_and_writes_a_table(tmp_path):
    result = main_with(tiny(tmp_path, "sequential,fused"))
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"sequential", "fused"}
    for mode, row in rows.items():
        assert row.get("error") is None and row["statuses"] == ["ok", "ok"], (mode, row)
        assert row["ms_per_step"] > 0 and row["runs_per_hour"] > 0
    # the same runs in every mode: the same record ids
    assert rows["sequential"]["ids"] == rows["fused"]["ids"]
    out = tmp_path / "throughput" / "cpu"
    assert json.loads((out / "measurements.json").read_text())["rows"][0]["setting"] == "copy"
    assert (out / "table.md").read_text() == table(result["rows"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MIXBENCH_SLOW"), reason="starts two interpreters (about 35 s on 2 shared "
                    "cores); MIXBENCH_SLOW=1 runs it")
def test_packed_runs_are_processes_at_once_with_the_same_records(tmp_path):
    """Passed on CPU (37 s with sequential and fused beside it)."""
    result = main_with(tiny(tmp_path, "sequential,packed"))
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["packed"].get("error") is None and rows["packed"]["statuses"] == ["ok", "ok"]
    assert rows["packed"]["ids"] == rows["sequential"]["ids"]
