"""What the harness costs per run, against pure training, on this machine.

    python -m harness.bench.overhead                       # one copy run at the machine's profile (train=cpu here)
    python -m harness.bench.overhead mixer=attention train=gpu train.steps=500
    python -m harness.bench.overhead --repeats=3 mixer=hyena      # the fastest of 3 (default 2) counts

Runs ``harness.run.execute.execute`` on one config with a timer around each of its parts (the real code
path, nothing re-implemented: ``execute`` announces its parts), then the same model on the same
batches through the same step (``harness.run.train.step_runner``) in a bare loop (forward, the task's loss, backward, clip,
AdamW step; nothing else) for the pure training time, and prints a table.
Process start-up (imports, torch's set-up at the first optimiser, the first training steps'
kernel and allocator warm-up) is paid once per process: once per sweep with the basic launcher,
once per worker with joblib, once per run on Slurm; the table shows it apart from the run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.launch.profile import with_profile
from harness.run.config import load, make_model, resolve_device, validate
from harness.run.execute import PARTS, execute
from harness.run.train import make_optimizer, step_runner

ROOT = Path(__file__).resolve().parents[2]
# CPU: this process's CPU time, which other processes on a shared machine hardly disturb (run it
# with train.threads=1 for the cleanest numbers). GPU: wall time with synchronisation.
clock = time.perf_counter if torch.cuda.is_available() else time.process_time
WARMUP_STEPS = 10  # steps timed twice in a fresh process: the difference is its one-time warm-up


def startup_s() -> float:
    """Seconds for a fresh interpreter to import the harness (what every new process pays)."""
    before = os.times()
    subprocess.run([sys.executable, "-c", "import harness.run.execute"], cwd=ROOT, check=True)
    after = os.times()
    if clock is time.process_time:
        return (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return after.elapsed - before.elapsed


def torch_warmup_s() -> float:
    """torch's one-time cost at the first optimiser of a process (it imports torch._dynamo)."""
    t0 = clock()
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    return clock() - t0


def timed_execute(cfg: dict) -> tuple[dict, dict[str, float]]:
    """``execute(cfg)`` with each of its parts (``PARTS``) timed; returns the record and seconds per part."""
    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(name: str):
        t0 = clock()
        try:
            yield
        finally:
            times[PARTS[name]] += clock() - t0

    t0 = clock()
    record = execute(cfg, part=part)
    times["total"] = clock() - t0
    return record, dict(times)


def bare_training_s(cfg: dict, steps: int | None = None) -> float:
    """Seconds for the same model on the same batches through the same training step as a run
    (``step_runner``: forward, the task's loss, backward, clip, AdamW step), nothing else
    (the first ``steps`` only, if given)."""
    return bare_training(cfg, steps)[0]


def bare_training(cfg: dict, steps: int | None = None) -> tuple[float, torch.nn.Module]:
    """``bare_training_s`` and the model it trained."""
    task, tc = validate(cfg)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg["model"], cfg["mixer"], task)
    device = resolve_device(cfg["device"])
    model = model.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    batches = [task.train_batch(tc.batch_size, generator) for _ in range(steps or tc.steps)]
    optimizer = make_optimizer(model, tc, device, capturable=tc.compile == "cuda_graph")
    runner = step_runner(model, task, tc, optimizer, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = clock()
    for step, batch in enumerate(batches):
        runner(batch, step)
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t0, model


def measure(overrides: list[str], repeats: int = 2, with_startup: bool = True) -> list[tuple[str, float]]:
    """Rows ``(part, seconds)`` for a run of ``overrides``; the last rows are the summary.

    The run and the bare loop alternate ``repeats`` times and the fastest of each counts, so that
    other processes on a shared machine disturb the comparison as little as possible."""
    rows = []
    if with_startup:
        rows.append(("[per process] start-up: imports", startup_s()))
    rows.append(("[per process] torch first optimiser", torch_warmup_s()))
    with tempfile.TemporaryDirectory() as results:
        t0 = clock()
        cfg = load([*overrides, f"results_dir={results}", "train.progress=false"])
        compose_s = clock() - t0
        if cfg["train"]["threads"]:
            torch.set_num_threads(cfg["train"]["threads"])  # as execute will, so the warm-up below runs alike
        cold, warm = bare_training_s(cfg, WARMUP_STEPS), bare_training_s(cfg, WARMUP_STEPS)
        rows.append(("[per process] first steps' warm-up (kernels, allocator)", max(0.0, cold - warm)))
        runs, pures = [], []
        for i in range(repeats):  # alternate the order, so that neither side always runs warmer
            if i % 2:
                pures.append(bare_training_s(cfg))
            runs.append(timed_execute({**cfg, "force": i > 0}))
            if not i % 2:
                pures.append(bare_training_s(cfg))
    record, times = min(runs, key=lambda rt: rt[1]["total"])
    if record["status"] != "ok":
        raise SystemExit(f"the run did not finish: {record['status']}: {record.get('error')}")
    pure = min(pures)
    times["compose config (Hydra)"] = compose_s
    total = times.pop("total") + compose_s
    loop = times.pop("training loop + evaluation")
    evaluation = times.pop("evaluation (learning curve + final)")
    batches = times.get("data: training batches", 0.0)
    for name in ("compose config (Hydra)", "validate config, build task", "resume check", "build model",
                 "device, determinism", "environment stamp", "forward check", "data: evaluation sets",
                 "data: training batches", "write record"):
        rows.append((name, times.get(name, 0.0)))
    rows.append(("evaluation (learning curve + final)", evaluation))
    rows.append(("training-loop bookkeeping (loss window, FLOPs, timers)*",
                 loop - evaluation - batches - pure))
    rows.append(("pure training (bare loop, same batches)", pure))
    rows.append(("= run total (compose to record)", total))
    rows.append(("= harness overhead (total - pure training)", total - pure))
    return rows


def table(rows: list[tuple[str, float]]) -> str:
    total = dict(rows)["= run total (compose to record)"]
    lines = [f"{'part':58s} {'seconds':>9s} {'% of run':>9s}", "-" * 78]
    for name, seconds in rows:
        share = "" if name.startswith("[per process]") else f"{100 * seconds / total:8.1f}%"
        lines.append(f"{name:58s} {seconds:9.3f} {share:>9s}")
    lines.append("* the harness's training loop minus the bare loop; below 0 is timing noise")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    repeats = 2
    if overrides and overrides[0].startswith("--repeats="):
        repeats = int(overrides.pop(0).split("=", 1)[1])
    overrides = with_profile(["overhead", *overrides], "train")[1:]
    rows = measure(overrides, repeats)
    print(f"harness overhead per run (fastest of {repeats}): {' '.join(overrides)} on "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU ({torch.get_num_threads()} threads)'}; "
          f"{'wall' if clock is time.perf_counter else 'CPU'} seconds")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
