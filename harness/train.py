"""The training loop: AdamW, warmup + cosine decay, gradient clipping, bf16 autocast on GPU,
periodic evaluation on the task's fixed sets, and the measurements every record carries."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from harness.memory import PeakMemory
from tasks.base import Batch, Task, masked_cross_entropy  # noqa: F401  (re-exported)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class TrainConfig:
    """Mirror of ``conf/train/*.yaml`` (defaults live there, not here)."""

    profile: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    eval_every: int
    eval_batch_size: int
    precision: str
    threads: int | None = None
    progress: bool = True


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    train_flops: float = 0.0
    steps_done: int = 0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices, not vectors (biases, norms, per-channel scales); honour ``param._optim`` overrides."""
    decay, no_decay, special = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "_optim"):
            special.append({"params": [p], **p._optim})
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups + special if g["params"]]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, eval_sets: dict[str, Batch], batch_size: int, device: torch.device,
             precision: str) -> dict[str, dict[str, float]]:
    """Loss and the task's metrics on every evaluation set, averaged over its examples."""
    model.eval()
    results = {}
    for name, full in eval_sets.items():
        sums: dict[str, float] = {}
        loss_sum, scored = 0.0, 0.0
        for start in range(0, len(full), batch_size):
            batch = full.slice(start, start + batch_size)
            with autocast_context(device, precision):
                logits = model(batch.inputs)
            count = float(batch.mask.sum())
            loss_sum += float(task.loss(logits, batch)) * count
            scored += count
            for key, values in task.metrics(logits.float(), batch).items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
        results[name] = {"loss": loss_sum / max(scored, 1.0), **{k: v / len(full) for k, v in sums.items()}}
    model.train()
    return results


def summarise(task: Task, per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over the in-distribution sets (``*_in``) and over all sets (``*_all``)."""
    out = {}
    inside = [v for k, v in per_set.items() if task.in_distribution(k)]
    for label, sets in (("in", inside), ("all", list(per_set.values()))):
        if not sets:
            continue
        for key in sets[0]:
            out[f"{key}_{label}"] = sum(s[key] for s in sets) / len(sets)
    return out


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def train(model: nn.Module, task: Task, cfg: TrainConfig, device: torch.device, generator: torch.Generator,
          description: str = "train", eval_sets: dict[str, Batch] | None = None) -> TrainResult:
    """Train ``model`` on ``task`` and evaluate on ``eval_sets`` (the task's own when None, e.g. the
    frozen copies ``harness.eval_sets`` loads); raises ``Diverged`` on a non-finite loss."""
    result = TrainResult()
    eval_sets = {k: v.to(device) for k, v in (task.eval_sets() if eval_sets is None else eval_sets).items()}
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  fused=device.type == "cuda")
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    memory = PeakMemory(device)
    memory.start()
    train_time = eval_time = 0.0
    tokens = 0
    loss_window: list[torch.Tensor] = []
    started = time.perf_counter()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with progress_bar(cfg.progress) as bar:
        job = bar.add_task(description, total=cfg.steps, status="")
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            factor = lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            task.set_step(step)
            batch = task.train_batch(cfg.batch_size, generator)
            with autocast_context(device, cfg.precision):
                logits = model(batch.inputs)
            loss = task.loss(logits, batch)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if step == 0:  # weights, their gradients and the optimizer state: the static part
                memory.mark_static()
            optimizer.zero_grad(set_to_none=True)
            loss_window.append(loss.detach())
            batch_size, length = batch.inputs.shape[:2]
            tokens += batch_size * length
            result.train_flops += model.step_flops(batch_size, length)
            result.steps_done = step + 1
            last = step + 1 == cfg.steps
            if (step + 1) % cfg.eval_every == 0 or last:
                window = torch.stack(loss_window).float().cpu()  # one device sync per evaluation
                loss_window.clear()
                bad = (~torch.isfinite(window)).nonzero()
                if len(bad):
                    raise Diverged(step + 2 - len(window) + int(bad[0]), float(window[bad[0]]))
                train_loss = float(window.mean())
                sync()
                train_time += time.perf_counter() - t0
                t1 = time.perf_counter()
                # the learning curve needs the in-distribution sets; the rest (length generalisation) at the end
                sets = eval_sets if last else {k: v for k, v in eval_sets.items() if task.in_distribution(k)}
                per_set = evaluate(model, task, sets, cfg.eval_batch_size, device, cfg.precision)
                eval_time += time.perf_counter() - t1
                point = {"step": step + 1, "tokens": tokens, "train_flops": result.train_flops,
                         "train_time_s": train_time, "wall_s": time.perf_counter() - started,
                         "train_loss": train_loss, **summarise(task, per_set), "eval": per_set}
                result.curve.append(point)
                metric = next((k for k in ("accuracy_in", "error_in", "tvd_in") if k in point), None)
                bar.update(job, status=f"loss {train_loss:.3f}" + (f" {metric} {point[metric]:.3f}" if metric else ""))
            else:
                train_time += time.perf_counter() - t0
            bar.advance(job)
    result.final = {k: v for k, v in result.curve[-1].items() if k not in ("step",)}
    result.timing = {"wall_s": time.perf_counter() - started, "train_s": train_time, "eval_s": eval_time}
    result.throughput = {"train_tokens": tokens, "tokens_per_s": tokens / max(train_time, 1e-9)}
    result.memory = memory.read()
    return result
