"""Records -> tables (Markdown, CSV, LaTeX) and plots (PNG, PDF) under
``<results_dir>/<benchmark>/<profile>/`` (``copy_benchmark`` -> ``results/local/copy/``; other names as
they are), and your runs beside the published ones.

    python -m harness.report --benchmark copy_benchmark      # your runs (results/local/runs/), beside the published
    python -m harness.report --all results_dir=/tmp/mine
    python -m harness.report --all --published               # the published records' own tables (results/<name>/)
    python -m harness.report --all --parquet                 # also every record as one table: <results_dir>/records.parquet

Your records are ``<results_dir>/runs/`` (conf/config.yaml's ``results_dir``, ``results/local``); the
published ones ``<published_dir>/runs/`` (``results/published``). Beside your tables of each profile,
``reproduction.{md,csv}`` set each final metric of yours beside the published seeds' with the hardware
of each and a verdict (``harness.report.reproduction``); the report ends with what was reproduced.
``--published`` reports the published records themselves into ``<reports_dir>/<benchmark>/<profile>/``
(conf/report.yaml: ``results/``, where the committed tables live); ``reports_dir=D`` moves them.

A benchmark named in a report module's ``BENCHMARKS`` (``mad``) goes whole to that module. Otherwise
each task's runs go to the report module that names the task in its ``TASKS`` (``copy``,
``recall``, ``icl``, ``lm`` beside this file); any other task gets the kit's generic report (a
table of every final metric, the learning curves), and so does a task whose own report fails,
with the error printed. One benchmark's failure does not stop the others: every benchmark is
reported, then the exit status is 1. Unreadable, partial or forged record files (the id in the
name is not the config's), and temporary files of interrupted writes, are listed with their paths.
A ``--benchmark`` that no record names is an error (exit status 1), with the names that exist.
Failed forced reruns kept beside a finished record are listed, newest first, and left out of the
tables (the finished record stands). Every output folder stays inside ``results_dir``: a record
whose benchmark or profile is not a plain name is refused.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import traceback
from collections import defaultdict
from pathlib import Path

import harness.report
from omegaconf import OmegaConf

from harness.report import reproduction
from harness.report.kit import generic_report, with_added_defaults
from harness.run.records import (CONF_DIR, config_default, confined, load_records, results_folder, runs_folder,
                                 stray_temporaries)

SETTINGS = ("results_dir", "published_dir", "reports_dir")  # the command's key=value settings


class RefusedPath(ValueError):
    """A record names a benchmark or profile that is not a plain name: no report is written for it."""


def task_reports() -> dict[str, object]:
    """Task name -> the report module that names it in ``TASKS``."""
    found = {}
    for info in pkgutil.iter_modules(harness.report.__path__):
        if info.name in ("kit", "cli", "__main__"):
            continue
        module = importlib.import_module(f"harness.report.{info.name}")
        for task in getattr(module, "TASKS", ()):
            found[task] = module
    return found


def benchmark_reports() -> dict[str, object]:
    """Benchmark name -> the report module that names it in ``BENCHMARKS`` (it gets every run of that
    benchmark, whatever the task: MAD's score spans tasks)."""
    found = {}
    for info in pkgutil.iter_modules(harness.report.__path__):
        if info.name in ("kit", "cli", "__main__"):
            continue
        module = importlib.import_module(f"harness.report.{info.name}")
        for name in getattr(module, "BENCHMARKS", ()):
            found[name] = module
    return found


def report_benchmark(records: list[dict], benchmark: str, results_dir: Path) -> list[Path]:
    """Write every table and plot of ``benchmark``, one folder per training profile; records written
    before a config key was added compare at its default (``kit.with_added_defaults``)."""
    written = []
    reports, whole = task_reports(), benchmark_reports().get(benchmark)
    by_profile: dict[str, list[dict]] = defaultdict(list)
    for r in with_added_defaults([r for r in records if r["config"].get("benchmark") == benchmark]):
        if r["config"].get("benchmark") == benchmark:
            by_profile[r["config"]["train"]["profile"]].append(r)
    for profile, all_runs in sorted(by_profile.items(), key=lambda kv: str(kv[0])):
        try:
            out_dir = confined(results_folder(results_dir, benchmark), str(profile))
        except ValueError as err:
            raise RefusedPath(f"{benchmark} ({profile!r}): not reported, {err}") from None
        by_module: dict[str, list[dict]] = defaultdict(list)
        for r in all_runs:
            module = whole or reports.get(r["config"]["task"]["name"])
            by_module[module.__name__ if module else ""].append(r)
        for name, runs in sorted(by_module.items()):
            if not name:
                written += generic_report(runs, benchmark, profile, out_dir)
                continue
            try:
                written += importlib.import_module(name).report(runs, benchmark, profile, out_dir)
            except Exception as err:  # noqa: BLE001 - a report that cannot read these records: the generic one
                print(f"{benchmark} ({profile}): {name} failed ({type(err).__name__}: {err}); "
                      f"writing the generic report instead")
                written += generic_report(runs, benchmark, profile, out_dir)
    return written


def report_settings() -> dict:
    """conf/report.yaml as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "report.yaml"), resolve=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", action="append", default=[], help="benchmark name (repeatable)")
    parser.add_argument("--all", action="store_true", help="report every benchmark found in the records")
    parser.add_argument("--published", action="store_true",
                        help="report the published records themselves (into reports_dir) instead of yours")
    parser.add_argument("--parquet", action="store_true",
                        help="also write every record read as one table, records.parquet (one row per run)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=DIR",
                        help="results_dir=DIR: your records (<DIR>/runs/) and reports (default conf/config.yaml's); "
                             "published_dir=DIR: the published records; reports_dir=DIR: where --published writes")
    args = parser.parse_args(argv)
    settings = report_settings()
    args.results_dir = Path(config_default("results_dir"))
    args.published_dir = Path(config_default("published_dir"))
    args.reports_dir = Path(settings["reports_dir"])
    args.tolerance = settings["reproduction"]
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if key not in SETTINGS or not sep or not value:
            parser.error(f"unknown argument {item!r}: the settings are {', '.join(k + '=DIR' for k in SETTINGS)}")
        setattr(args, key, Path(value))
    if not args.benchmark and not args.all:
        parser.error("name a --benchmark or pass --all")
    return args


def read_folder(runs_dir: Path) -> list[dict]:
    """The finished-or-not records under ``runs_dir`` without failed forced reruns, with every
    unreadable file, interrupted write and kept rerun listed."""
    records, problems = load_records(runs_dir)
    for path, problem in problems:
        print(f"unreadable record (not in the tables; rerunning its sweep reruns it): {path}: {problem}")
    for path in stray_temporaries(runs_dir):
        print(f"interrupted write (not a record; safe to delete): {path}")
    reruns = sorted((r for r in records if r.get("rerun_of")), key=lambda r: r["_path"], reverse=True)
    for r in reruns:
        print(f"failed forced rerun kept beside the finished record {r['rerun_of']} (not in the tables): "
              f"{r['_path']}: {r['status']} at {r.get('finished', '?')}: {r.get('error', '')}")
    return [r for r in records if not r.get("rerun_of")]


def compare_benchmark(yours: list[dict], published: list[dict], benchmark: str, results_dir: Path,
                      tolerance: dict) -> tuple[list[Path], list[str]]:
    """``reproduction.{md,csv}`` beside your tables of each profile of ``benchmark``, and the summary lines."""
    written, lines = [], []
    mine = [r for r in yours if r["config"].get("benchmark") == benchmark]
    theirs = [r for r in published if r["config"].get("benchmark") == benchmark]
    for profile in sorted({str(r["config"]["train"]["profile"]) for r in mine}):
        runs = [r for r in mine if str(r["config"]["train"]["profile"]) == profile]
        table = reproduction.compare(runs, [r for r in theirs if str(r["config"]["train"]["profile"]) == profile],
                                     tolerance["absolute_tolerance"], tolerance["relative_tolerance"])
        header = (f"# {benchmark} ({profile} profile): your runs beside the published ones\n\n"
                  f"Verdict: the mean of yours inside [min - t, max + t] of the published seeds, "
                  f"t = max({tolerance['absolute_tolerance']}, {tolerance['relative_tolerance']} x |published mean|) "
                  f"(conf/report.yaml).")
        written += reproduction.write(table, confined(results_folder(results_dir, benchmark), profile), header)
        lines += reproduction.summary(table, benchmark, profile)
    return written, lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    source = args.published_dir if args.published else args.results_dir
    out_root = args.reports_dir if args.published else args.results_dir
    records = read_folder(runs_folder(source))
    published = [] if args.published or not runs_folder(args.published_dir).is_dir() else \
        [r for r in load_records(runs_folder(args.published_dir))[0] if not r.get("rerun_of")]
    if args.parquet:
        print(f"wrote {write_parquet(records, out_root / 'records.parquet')}")
    found = sorted({str(r["config"].get("benchmark", "adhoc")) for r in records})
    names = found if args.all else args.benchmark
    if args.all and not found and not args.published:
        shipped = sorted({str(r["config"].get("benchmark", "adhoc")) for r in published})
        print(f"no records of yours under {runs_folder(source)}: run a benchmark first (make copy-benchmark); "
              f"the published records ({', '.join(shipped) or 'none'}) are reported by --published")
    failed, reproduced = [], []
    for name in names:
        if name not in found:
            print(f"{name}: no records match benchmark {name!r} under {runs_folder(source)}; "
                  f"benchmarks with records: {', '.join(found) or 'none'}")
            failed.append(name)
            continue
        try:
            written = report_benchmark(records, name, out_root)
            if not args.published:
                more, lines = compare_benchmark(records, published, name, out_root, args.tolerance)
                written += more
                reproduced += lines
        except RefusedPath as err:
            print(err)
            failed.append(name)
            continue
        except Exception:  # noqa: BLE001 - the other benchmarks are still reported
            print(f"{name}: the report failed:\n{traceback.format_exc()}")
            failed.append(name)
            continue
        if not written:
            print(f"{name}: no records under {runs_folder(source)}")
        for path in written:
            print(f"wrote {path}")
    if reproduced:
        print(f"\nyour runs ({runs_folder(source)}) beside the published ones ({runs_folder(args.published_dir)}):")
        for line in reproduced:
            print(line)
    if failed:
        print(f"reports failed for: {', '.join(failed)}")
    return 1 if failed else 0


def write_parquet(records: list[dict], path: Path) -> Path:
    """Every record as one row of a table for pandas (``pd.read_parquet``): the flattened config
    (``config.<key>``), status, parameter counts, final metrics (``final.<set>.<metric>``), timing,
    memory and throughput; the curves stay in the JSON records, which remain the source of truth."""
    import pandas as pd

    from harness.report.kit import flatten

    rows = []
    for r in records:
        row = {"id": r.get("id"), "status": r["status"], "record": r.get("_path")}
        row.update({f"config.{k}": (repr(v) if isinstance(v, tuple) else v) for k, v in flatten(r["config"]).items()})
        for field in ("params", "final", "timing", "memory", "throughput", "environment"):
            if isinstance(r.get(field), dict):
                row.update({f"{field}.{k}": (repr(v) if isinstance(v, (tuple, list)) else v)
                            for k, v in flatten(r[field]).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in table.columns:  # mixed types (an option null in one record, a number in another) as text
        if table[column].map(type).nunique() > 1:
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path
