"""Records -> tables (Markdown, CSV, LaTeX) and plots (PNG, PDF) under
``<results_dir>/<benchmark>/<profile>/`` (``copy_benchmark`` -> ``results/copy/``; other names as they are).

    python -m harness.report --benchmark copy_benchmark
    python -m harness.report --all results_dir=/tmp/mine

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
from harness.report.kit import generic_report, with_added_defaults
from harness.run.records import confined, load_records, results_folder, stray_temporaries


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


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", action="append", default=[], help="benchmark name (repeatable)")
    parser.add_argument("--all", action="store_true", help="report every benchmark found in the records")
    parser.add_argument("overrides", nargs="*", metavar="results_dir=DIR",
                        help="where the records are (<results_dir>/runs/) and the reports go; default results")
    args = parser.parse_args(argv)
    args.results_dir = Path("results")
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if key != "results_dir" or not sep or not value:
            parser.error(f"unknown argument {item!r}: the only setting is results_dir=DIR")
        args.results_dir = Path(value)
    if not args.benchmark and not args.all:
        parser.error("name a --benchmark or pass --all")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    records, problems = load_records(args.results_dir / "runs")
    for path, problem in problems:
        print(f"unreadable record (not in the tables; rerunning its sweep reruns it): {path}: {problem}")
    for path in stray_temporaries(args.results_dir / "runs"):
        print(f"interrupted write (not a record; safe to delete): {path}")
    reruns = sorted((r for r in records if r.get("rerun_of")), key=lambda r: r["_path"], reverse=True)
    for r in reruns:
        print(f"failed forced rerun kept beside the finished record {r['rerun_of']} (not in the tables): "
              f"{r['_path']}: {r['status']} at {r.get('finished', '?')}: {r.get('error', '')}")
    records = [r for r in records if not r.get("rerun_of")]
    found = sorted({str(r["config"].get("benchmark", "adhoc")) for r in records})
    names = found if args.all else args.benchmark
    failed = []
    for name in names:
        if name not in found:
            print(f"{name}: no records match benchmark {name!r} under {args.results_dir / 'runs'}; "
                  f"benchmarks with records: {', '.join(found) or 'none'}")
            failed.append(name)
            continue
        try:
            written = report_benchmark(records, name, args.results_dir)
        except RefusedPath as err:
            print(err)
            failed.append(name)
            continue
        except Exception:  # noqa: BLE001 - the other benchmarks are still reported
            print(f"{name}: the report failed:\n{traceback.format_exc()}")
            failed.append(name)
            continue
        if not written:
            print(f"{name}: no records under {args.results_dir / 'runs'}")
        for path in written:
            print(f"wrote {path}")
    if failed:
        print(f"reports failed for: {', '.join(failed)}")
    return 1 if failed else 0
