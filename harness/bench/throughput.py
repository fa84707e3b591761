"""Throughput of the harness: ms per training step and runs per hour of each core mixer at the recall
and copy settings, for a sweep run sequentially, packed (several processes on one device), compiled
(``train.compile``), fused (``harness.run.fused``) and optionally fused and compiled together
(``fused_compiled``), measured back to back on this machine.

    python -m harness.bench.throughput                              # conf/throughput.yaml, profile by hardware
    python -m harness.bench.throughput mixers=[tmm] modes=[sequential,fused] profiles.gpu.steps=100

Every mode trains the same ``runs`` (one per learning rate in the profile's ``lrs``; otherwise the
setting's base config) into a temporary folder, with ``force=true``, and is timed from its first
run's start to its last record (the processes' start-up included for ``packed``). ``ms_per_step`` is
the runs' mean ``timing.train_s / steps`` (what one run's own steps cost while the others ran);
``runs_per_hour`` is ``runs x 3600 / wall``. Writes ``measurements.json`` and ``table.md`` under
``<results_dir>/throughput/<hardware>/`` (hardware: the GPU's name, or ``cpu``).
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.run.config import CONF_DIR, ConfigError, load
from harness.run.environment import environment
from harness.run.execute import execute
from harness.run.fused import execute_fused
from harness.run.records import read_record, record_path, results_folder, write_atomic

log = logging.getLogger("mixbench")
ROOT = Path(__file__).resolve().parents[2]
MODES = ("sequential", "packed", "compiled", "fused", "fused_compiled")


def hardware_name(device: str) -> str:
    """The folder of this hardware's table: the GPU's name as a slug (``nvidia-h200``), or ``cpu``."""
    if device != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def run_overrides(setting: list[str], mixer: str, profile: dict, lr: float, results_dir: Path) -> list[str]:
    return [*setting, f"mixer={mixer}", *profile["overrides"], f"train.steps={profile['steps']}",
            f"train.warmup_steps={min(profile['steps'], 10)}", f"train.eval_every={profile['steps']}",
            f"train.lr={lr}", "force=true", f"results_dir={results_dir}"]


def measure_mode(mode: str, runs: list[list[str]], profile: dict, out: Path) -> dict:
    """Train ``runs`` (override lists) in ``mode``; wall seconds, ms per step, runs per hour, statuses."""
    extra = {"compiled": [f"train.compile={profile['compile']}"], "fused_compiled": [f"train.compile={profile['compile']}"],
             "packed": [f"concurrent_runs={len(runs)}", f"gpu.jobs_per_gpu={len(runs)}"]}.get(mode, [])
    runs = [[*r, *extra] for r in runs]
    cfgs = [load(r) for r in runs]
    started = time.perf_counter()
    if mode in ("sequential", "compiled"):
        records = [execute(cfg) for cfg in cfgs]
    elif mode in ("fused", "fused_compiled"):
        records = execute_fused(cfgs)
    elif mode == "packed":
        procs = [subprocess.Popen([sys.executable, "-m", "harness.run", *r, f"hydra.run.dir={out}/logs/{i}"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i, r in enumerate(runs)]
        errors = [p.communicate()[1] for p in procs]
        failed = [e[-500:] for p, e in zip(procs, errors) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"packed run failed: {failed[0]}")
        records = [read_record(record_path(Path(cfg["results_dir"]) / "runs", cfg)) for cfg in cfgs]
    else:
        raise ConfigError(f"modes: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    wall = time.perf_counter() - started
    ok = [r for r in records if r["status"] == "ok"]
    ms = [1e3 * r["timing"]["train_s"] / r["steps_done"] for r in ok]
    steps = {r.get("throughput", {}).get("step", {}).get("ran", "none") for r in ok}
    return {"runs": len(runs), "wall_s": wall, "ms_per_step": sum(ms) / len(ms) if ms else None,
            "runs_per_hour": len(runs) * 3600 / wall, "statuses": [r["status"] for r in records],
            "step_ran": sorted(steps), "ids": [r["id"] for r in records]}


def table(rows: list[dict]) -> str:
    lines = ["| setting | mixer | mode | runs | ms/step | runs/hour | wall s | step ran | status |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ms = "-" if r.get("ms_per_step") is None else f"{r['ms_per_step']:.2f}"
        rph = "-" if r.get("runs_per_hour") is None else f"{r['runs_per_hour']:.0f}"
        wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.1f}"
        status = r.get("error") or ", ".join(sorted(set(r.get("statuses", []))))
        lines.append(f"| {r['setting']} | {r['mixer']} | {r['mode']} | {r.get('runs', '-')} | {ms} | {rph} | {wall} | "
                     f"{', '.join(r.get('step_ran', []))} | {status} |")
    return "\n".join(lines) + "\n"


def main_with(cfg: dict) -> dict:
    name = cfg["profile"] if cfg["profile"] != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in cfg["profiles"]:
        raise ConfigError(f"profile: must be auto or one of {', '.join(cfg['profiles'])}, got {name!r}")
    profile = cfg["profiles"][name]
    unknown = sorted(set(cfg["modes"]) - set(MODES))
    if unknown:
        raise ConfigError(f"modes: unknown mode(s) {unknown}; valid: {', '.join(MODES)}")
    device = "cuda" if "device=cuda" in profile["overrides"] else "cpu"
    rows: list[dict] = []
    result = {"config": cfg, "profile": name, "environment": environment(torch.device(device)), "rows": rows}
    out_dir = results_folder(cfg["results_dir"], "throughput") / hardware_name(device)
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for setting, overrides in cfg["settings"].items():
            if not overrides:
                continue
            overrides = [o.format(suffix=profile["suffix"]) for o in overrides]
            for mixer in cfg["mixers"]:
                for mode in cfg["modes"]:
                    out = Path(tmp) / f"{setting}-{mixer}-{mode}"
                    runs = [run_overrides(overrides, mixer, profile, lr, out) for lr in profile["lrs"]]
                    row = {"setting": setting, "mixer": mixer, "mode": mode}
                    try:
                        row.update(measure_mode(mode, runs, profile, out))
                    except ConfigError:
                        raise
                    except Exception as err:  # noqa: BLE001 - a mode that fails is a row, the others go on
                        row.update(error=f"{type(err).__name__}: {str(err).strip()[:300]}")
                    log.info("throughput: %s", {k: v for k, v in row.items() if k != "ids"})
                    rows.append(row)
                    write_measurements(out_dir, result)  # after every row: a run cut short keeps what it measured
    log.info("wrote %s", out_dir / "table.md")
    print(table(rows))
    return result


def write_measurements(out_dir: Path, result: dict) -> None:
    """``measurements.json`` (atomically) and its ``table.md``, of the rows measured so far."""
    write_atomic(out_dir / "measurements.json", result)
    (out_dir / "table.md").write_text(table(result["rows"]))


def config(argv: list[str]) -> dict:
    """conf/throughput.yaml with dotted ``key=value`` overrides from ``argv``."""
    base = OmegaConf.load(Path(CONF_DIR) / "throughput.yaml")
    return OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(argv)), resolve=True)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main_with(config(argv))
    except ConfigError as err:
        log.error("configuration error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
