"""Published records live apart from your runs: runs never write there, reports set yours beside them."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.report import cli as report
from harness.report import reproduction
from harness.run.config import ConfigError
from harness.run.execute import execute
from harness.run.records import config_default, is_inside, runs_folder, write_atomic
from tests.harness.helpers import TINY, make_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_results_folder_is_yours_and_ignored_by_git():
    results, published = config_default("results_dir"), config_default("published_dir")
    assert not is_inside(ROOT / results, ROOT / published) and not is_inside(ROOT / published, ROOT / results)
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{results}/runs/x.json"], cwd=ROOT)
    assert ignored.returncode == 0, f"{results}/ is not git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", f"{published}/runs/x.json"], cwd=ROOT).returncode == 1
    assert sorted((ROOT / published / "runs").glob("*.json")), "the published records are missing"
    # the benchmarks that measure trained runs look for them where runs are written
    for name in ("retention", "invertibility"):
        assert OmegaConf.load(ROOT / "conf" / f"{name}.yaml").results_dir == results, name


@pytest.mark.parametrize("inside", ["", "runs", "sub/dir"])
def test_runs_never_write_into_the_published_folder(tmp_path, inside):
    published = tmp_path / "published"
    (published / "runs").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = make_config(*TINY, "mixer.heads=2", f"published_dir={published}", results_dir=published / inside)
    with pytest.raises(ConfigError, match=r"^results_dir: .* inside published_dir"):
        execute(cfg)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_the_shipped_published_folder_is_refused_as_results_dir(tmp_path):
    cfg = make_config(*TINY, results_dir=ROOT / config_default("published_dir"))
    with pytest.raises(ConfigError, match="^results_dir:"):
        execute(cfg)


@pytest.mark.parametrize("published, value, verdict", [
    ([0.90], 0.91, "inside"), ([0.90], 0.96, "above"), ([0.90], 0.84, "below"),  # one seed: value +- 0.045
    ([0.50, 0.80], 0.49, "inside"), ([0.50, 0.80], 0.45, "below"), ([0.50, 0.80], 0.85, "above"),
    ([0.001], 0.015, "inside"), ([0.001], 0.03, "above"),  # the absolute floor near zero
])
def test_verdict_against_the_published_seed_spread(published, value, verdict):
    low, high = reproduction.spread(published, absolute=0.02, relative=0.05)
    assert reproduction.verdict(value, low, high) == verdict


def records_in(folder: Path, tmp_path: Path, seeds=(0, 1)) -> list[Path]:
    for seed in seeds:
        execute(make_config(*TINY, "mixer.heads=2", "benchmark=tiny", f"seed={seed}", results_dir=folder))
    return sorted(runs_folder(folder).glob("*.json"))


def test_report_sets_your_runs_beside_the_published_ones(tmp_path, capsys):
    published, yours = tmp_path / "published", tmp_path / "yours"
    shipped = records_in(published, tmp_path)
    runs_folder(yours).mkdir(parents=True)
    mine = json.loads(shipped[0].read_text())
    write_atomic(runs_folder(yours) / shipped[0].name, mine)  # the same run: inside its own spread
    # a configuration the published records lack
    execute(make_config(*TINY, "mixer.heads=2", "benchmark=tiny", "model.n_layers=1", results_dir=yours))
    before = {p: p.read_bytes() for p in published.rglob("*") if p.is_file()}
    assert report.main(["--benchmark", "tiny", f"results_dir={yours}", f"published_dir={published}"]) == 0
    out = capsys.readouterr().out
    assert "tiny (test): 1 of 1 configurations reproduced" in out
    assert "no published run of this configuration" in out
    table = pd.read_csv(yours / "tiny" / "test" / "reproduction.csv")
    judged = table[table["verdict"] == "inside"]
    assert len(judged) == sum(len(m) for m in mine["final"]["eval"].values())
    assert set(judged["published seeds"]) == {"0,1"} and set(judged["your seeds"].astype(str)) == {str(mine["config"]["seed"])}
    assert judged["your hardware"].str.contains("CPU").all() and judged["published hardware"].str.contains("CPU").all()
    assert {p: p.read_bytes() for p in published.rglob("*") if p.is_file()} == before  # the report only reads it


def test_report_says_what_was_not_reproduced(tmp_path, capsys):
    published, yours = tmp_path / "published", tmp_path / "yours"
    shipped = records_in(published, tmp_path, seeds=(0,))
    mine = json.loads(shipped[0].read_text())
    name, metrics = next(iter(mine["final"]["eval"].items()))
    metric = next(m for m in metrics if m != "loss")
    mine["final"]["eval"][name][metric] = metrics[metric] + 0.5
    write_atomic(runs_folder(yours) / shipped[0].name, mine)
    assert report.main(["--benchmark", "tiny", f"results_dir={yours}", f"published_dir={published}"]) == 0
    out = capsys.readouterr().out
    assert "0 of 1 configurations reproduced" in out
    assert f"outside: tmm (variable) {metric} {name}" in out and "above" in out


def test_published_report_writes_into_reports_dir_not_the_published_folder(tmp_path):
    published, reports = tmp_path / "published", tmp_path / "tables"
    records_in(published, tmp_path, seeds=(0,))
    before = sorted(published.rglob("*"))
    assert report.main(["--all", "--published", f"published_dir={published}", f"reports_dir={reports}"]) == 0
    assert (reports / "tiny" / "test" / "table.md").exists()
    assert sorted(published.rglob("*")) == before
    assert not (reports / "tiny" / "test" / "reproduction.md").exists()


def test_fresh_clone_report_without_runs_of_yours_points_at_published(tmp_path, capsys):
    published = tmp_path / "published"
    shutil.copytree(ROOT / config_default("published_dir") / "runs", published / "runs")
    assert report.main(["--all", f"results_dir={tmp_path / 'nothing'}", f"published_dir={published}"]) == 0
    assert "no records of yours" in capsys.readouterr().out


def test_parquet_holds_every_record(tmp_path):
    paths = records_in(tmp_path, tmp_path)
    assert report.main(["--all", "--parquet", f"results_dir={tmp_path}", f"published_dir={tmp_path / 'none'}"]) == 0
    table = pd.read_parquet(tmp_path / "records.parquet")
    assert sorted(table["id"]) == sorted(json.loads(p.read_text())["id"] for p in paths)
    assert {"config.mixer.name", "config.seed", "status", "params.total"} <= set(table.columns)
    assert any(c.startswith("final.eval.") for c in table.columns)


def test_evaluation_sets_are_never_frozen_into_the_published_folder(tmp_path, capsys):
    from harness.run.freeze_eval import main as freeze

    published = tmp_path / "published"
    assert freeze(["task=copy", f"published_dir={published}", f"results_dir={published}"]) == 2
    assert "results_dir:" in capsys.readouterr().err and not published.exists()
