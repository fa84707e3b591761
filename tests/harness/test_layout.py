"""The layout of harness/ and who may import whom (every import, also those inside functions).

    harness.run     the run pipeline: imports only itself, mixers and tasks
    harness.launch  what fits this machine, Hydra entry helpers, preflight: imports run and itself
    harness.bench   benchmarks that measure without training: imported by nothing else
    harness.report  tables and plots: per-benchmark modules import only the kit and records
    mixers, tasks   the pluggable parts: never import harness
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("run", "launch", "bench", "report")
# what each part may import from this project (prefixes of dotted module names)
ALLOWED = {
    "harness.run": ("harness.run", "mixers", "tasks"),
    "harness.launch": ("harness.launch", "harness.run", "mixers", "tasks"),
    "harness.bench": ("harness.bench", "harness.run", "harness.launch", "harness.report", "mixers", "tasks"),
    "harness.report": ("harness.report.kit", "harness.run.records"),
    "mixers": ("mixers",),
    "tasks": ("tasks",),
}
# the report command finds the per-benchmark report modules (by name, at run time); the in-context
# learning report scores RegBench's n-gram baselines on the evaluation set its records name, which
# needs the task and the frozen sets
# the kit styles every figure's mixers by the registry's order and reads conf/report.yaml
ALLOWED_EXTRA = {"harness.report.cli": ("harness.report",),
                 "harness.report.kit": ("mixers", "harness.run.config"),
                 "harness.report.icl": ("harness.run.eval_sets", "tasks")}
PROJECT = ("harness", "mixers", "tasks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Dotted names of this project's modules that ``path`` imports (``from a import b`` gives ``a.b``
    when ``a.b`` is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                    (ROOT / candidate.replace(".", "/") / "__init__.py").exists()
                found.add(candidate if is_module else base)
    return {name for name in found if name.split(".")[0] in PROJECT}


def sources() -> list[Path]:
    return sorted(p for top in PROJECT for p in (ROOT / top).rglob("*.py"))


def part_of(module: str) -> str | None:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return None


def test_harness_has_one_sub_package_per_role():
    packages = sorted(p.parent.name for p in (ROOT / "harness").glob("*/__init__.py"))
    assert packages == sorted(ROLES)
    loose = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert loose == ["__init__.py", "command.py", "freeze_eval.py"], (
        f"harness/ holds only the role packages and the entry points (the mixbench command, freeze_eval); "
        f"move {loose} into one of {ROLES}")


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layout(path):
    here = module_name(path)
    part = part_of(here)
    if part is None:
        return  # the entry points at harness/ itself (harness.freeze_eval) may import any part
    allowed = ALLOWED[part] + ALLOWED_EXTRA.get(here, ())
    if here.endswith("__main__"):  # an entry point: its own package, and which profile fits the machine
        allowed += (here.removesuffix(".__main__"), "harness.launch")
    bad = sorted(m for m in project_imports(path)
                 if not any(m == a or m.startswith(a + ".") for a in allowed) and m != "harness")
    assert not bad, f"{here} ({part}) may import only {allowed}, but imports {bad}"


def test_nothing_outside_the_benchmarks_imports_them():
    offenders = {module_name(p): sorted(m for m in project_imports(p) if m.startswith("harness.bench"))
                 for p in sources() if not module_name(p).startswith("harness.bench")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_import_walk_sees_deferred_and_from_imports():
    """The walk finds ``from package import module`` as the module, and imports inside functions."""
    found = project_imports(ROOT / "harness" / "bench" / "scaling.py")
    assert "harness.report.scaling" in found  # imported inside a function, after the measurements
    assert "mixers" in found


@pytest.mark.parametrize("package", ["mixers", "tasks"])
def test_every_plug_in_file_is_imported_by_its_registry(package):
    """A file that registers a mixer or a task, but that the registry's import list misses, is
    invisible; this names it."""
    import importlib
    import re

    registry = importlib.import_module(package)
    registered = set(registry._REGISTRY if package == "mixers" else registry._TASKS)  # noqa: SLF001
    pattern = re.compile(r'^@register(?:_task)?\("(\w+)"\)', re.M)
    declared = {name: path.name for path in (ROOT / package).glob("*.py") for name in pattern.findall(path.read_text())}
    missing = sorted(f"{name} ({file})" for name, file in declared.items() if name not in registered)
    assert not missing, f"add the import of {missing} to {package}/__init__.py"
