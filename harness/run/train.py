"""The training loop: AdamW (weight decay on what each mixer and the backbone do not exempt:
``weight_decay_exempt``; parameters with their own settings: ``learning_rate_overrides``), warmup +
cosine (or linear) decay, gradient clipping, bf16 autocast on GPU (bf16 elsewhere is refused by the config
check), periodic evaluation on the task's fixed sets, and the measurements every record carries."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from harness.run.memory import SAVED_METHOD, PeakMemory
from harness.run.step import StepRunner, head_on_scored, scored_head_applies, worth_gathering
from mixers.base import Mixer, conventional_exemptions
from tasks.base import Batch, Task, masked_cross_entropy  # noqa: F401  (re-exported)


# ``part(name)`` is entered around a part of a run (the overhead benchmark times them); the parts are
# named in harness.run.execute.PARTS and here: "batches" (training data), "evaluate" (every evaluation)
Part = Callable[[str], ContextManager]


def untimed(name: str) -> ContextManager:
    """The ``part`` of a run that nobody times."""
    return contextlib.nullcontext()


class Diverged(RuntimeError):
    """The training loss, or the loss on an evaluation set after an update, became NaN or infinite."""

    def __init__(self, step: int, loss: float, where: str = "training"):
        super().__init__(f"{where} loss is {loss} at step {step}" if where != "training" else f"loss is {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class TrainConfig:
    """Mirror of ``conf/train/*.yaml`` (defaults live there, not here)."""

    profile: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    weight_decay_exempt: str
    betas: tuple[float, float]
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    eval_every: int
    eval_batch_size: int
    precision: str
    schedule: str  # cosine | linear (SCHEDULES)
    threads: int | None = None
    progress: bool = True
    compile: str = "none"  # none | compile | cuda_graph (harness.run.step)
    head_positions: str = "scored"  # scored | all: where the LM head runs in training (harness.run.step)


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    train_flops: float = 0.0
    steps_done: int = 0


EXEMPTION_RULES = ("conventions", "matrices")
SCHEDULES = ("cosine", "linear")  # train.schedule: the decay after warm-up (``lr_factor``)


def weight_decay_exempt(model: nn.Module, rule: str = "conventions") -> dict[str, str]:
    """``{parameter name: why}`` for every parameter of ``model`` trained without weight decay (what a
    record lists). Inside a mixer: what the mixer declares (``Mixer.no_weight_decay``: its authors'
    marks, norms, biases, vectors, per-offset kernels). The backbone follows nanoGPT: norms and
    biases are exempt, the embedding, the MLP matrices and the LM head (tied or not) are decayed.
    Names as ``model.named_parameters()`` gives them (a tied weight once). ``rule="matrices"`` is the
    older rule kept to reproduce earlier records: only parameters of fewer than two dimensions are exempt
    (Toeplitz vectors, position biases, Mamba1's A_log, convolution filters decayed)."""
    if rule not in EXEMPTION_RULES:
        raise ValueError(f"weight-decay exemption rule must be one of {', '.join(EXEMPTION_RULES)}, got {rule!r}")
    if rule == "matrices":
        return {name: "vector" for name, p in model.named_parameters() if p.dim() < 2}
    exempt, inside = {}, set()
    for prefix, module in model.named_modules():
        if isinstance(module, Mixer):
            exempt.update({f"{prefix}.{name}" if prefix else name: why for name, why in module.no_weight_decay().items()})
            inside.update(f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters())
    backbone = conventional_exemptions(model, getattr(model, "per_offset_kernels", set)())
    exempt.update({name: why for name, why in backbone.items() if name not in inside})
    named = dict(model.named_parameters())
    return {name: exempt[name] for name in named if name in exempt}


def learning_rate_overrides(model: nn.Module) -> dict[str, dict]:
    """``{parameter name: its own optimiser settings}`` for the parameters a mixer gives their own
    (``param._optim``, e.g. Hyena's filter weight decay; a learning rate there is fixed, not the run's)."""
    return {name: dict(p._optim) for name, p in model.named_parameters() if hasattr(p, "_optim")}


def param_groups(model: nn.Module, weight_decay: float, rule: str = "conventions") -> list[dict]:
    """AdamW groups: decayed parameters, exempt ones (``weight_decay_exempt(model, rule)``) at weight
    decay 0, and one group per parameter with its own settings (``param._optim``; what it leaves out
    follows the run: its learning rate the run's schedule, its weight decay the exemption rule)."""
    exempt = weight_decay_exempt(model, rule)
    decay, no_decay, special = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "_optim"):
            special.append({"params": [p], "weight_decay": 0.0 if name in exempt else weight_decay, **p._optim})
        elif name in exempt:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups + special if g["params"]]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine (or, ``schedule="linear"``, linear: the
    Hugging Face Trainer's default) decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context(device: torch.device, precision: str, cache_enabled: bool = True):
    """bf16 autocast on CUDA when asked; ``cache_enabled=False`` inside a CUDA graph capture."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def step_runner(model: nn.Module, task: Task, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                device: torch.device) -> StepRunner:
    """The one training step of every run and of the overhead benchmark (``harness.run.step``, in the
    mode ``train.compile``): the step's learning rate (``lr_factor`` of ``cfg.schedule``), forward
    under the precision's autocast, the task's own loss, backward, gradient clipping, AdamW step.
    ``runner(batch, step)`` returns the loss (0-dim, not synced) and leaves gradients to the caller."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    return StepRunner(cfg.compile, model, task, optimizer, base_lrs,
                      lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio, cfg.schedule), cfg.grad_clip,
                      lambda: autocast_context(device, cfg.precision, cfg.compile != "cuda_graph"), device,
                      cfg.head_positions)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (fused on CUDA; ``capturable``: foreach with its state on the
    device, which a CUDA graph can capture)."""
    groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_exempt)
    if capturable:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=True, capturable=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, eval_sets: dict[str, Batch], batch_size: int, device: torch.device,
             precision: str) -> dict[str, dict[str, float]]:
    """Loss and the task's metrics on every evaluation set, averaged over its examples. Where the task
    bounds its scored positions (``harness.run.step.scored_head_applies``) the head runs on the
    scored positions of each batch alone: the same loss and metrics."""
    model.eval()
    on_scored = scored_head_applies(model, task)
    results = {}
    for name, full in eval_sets.items():
        sums: dict[str, float] = {}
        loss_sum, scored = 0.0, 0.0
        for start in range(0, len(full), batch_size):
            batch = full.slice(start, start + batch_size)
            most = int(batch.mask.sum(1).max()) if on_scored else None
            if worth_gathering(most, batch.inputs.shape[1]):  # the head where the metrics look
                logits, batch = head_on_scored(model, batch, most, lambda: autocast_context(device, precision))
            else:
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


class Trainer:
    """One model's training: its optimiser, its step (``train.compile``: ``harness.run.step``), its
    evaluations, clocks and measurements. ``step(i, batch, data_s)`` trains on step ``i``'s batch
    (``data_s``: the seconds its batch took to draw, counted in this model's training time);
    ``result()`` gives what its record carries. ``train`` drives one; ``harness.run.fused`` drives
    several in lockstep on the same batches, each exactly as ``train`` would."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, device: torch.device,
                 eval_sets: dict[str, Batch] | None = None, part: Part = untimed, on_point=None):
        self.model, self.task, self.cfg, self.device, self.part = model, task, cfg, device, part
        self.on_point = on_point  # called with each learning-curve point (a tracker: harness.run.tracking)
        self.eval_sets = {k: v.to(device) for k, v in (task.eval_sets() if eval_sets is None else eval_sets).items()}
        self.optimizer = make_optimizer(model, cfg, device, capturable=cfg.compile == "cuda_graph")
        self.runner = step_runner(model, task, cfg, self.optimizer, device)
        self.result_ = TrainResult()
        self.memory = PeakMemory(device)
        self.memory.start()
        self.train_time = self.eval_time = 0.0
        self.tokens = 0
        self.loss_window: list[torch.Tensor] = []
        self.started = time.perf_counter()
        self.status = ""
        self.saved_bytes: int | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, step: int, batch: Batch, data_s: float = 0.0) -> None:
        """Train on ``batch`` (step ``step``, 0-based), evaluate when due; raises ``Diverged``."""
        cfg, result = self.cfg, self.result_
        if step == 0:  # activation memory of one step, before it (outside its clock)
            self.saved_bytes = self.runner.saved_bytes(batch)
        t0 = time.perf_counter() - data_s
        loss = self.runner(batch, step)
        if step == 0:  # weights, their gradients and the optimizer state: the static part
            self.memory.mark_static()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_window.append(loss)
        batch_size, length = batch.inputs.shape[:2]
        self.tokens += batch_size * length
        result.train_flops += self.model.step_flops(batch_size, length)
        result.steps_done = step + 1
        last = step + 1 == cfg.steps
        if not ((step + 1) % cfg.eval_every == 0 or last):
            self.train_time += time.perf_counter() - t0
            return
        window = torch.stack(self.loss_window).float().cpu()  # one device sync per evaluation
        self.loss_window.clear()
        bad = (~torch.isfinite(window)).nonzero()
        if len(bad):
            raise Diverged(step + 2 - len(window) + int(bad[0]), float(window[bad[0]]))
        train_loss = float(window.mean())
        self.sync()
        self.train_time += time.perf_counter() - t0
        t1 = time.perf_counter()
        # the learning curve needs the in-distribution sets; the rest (length generalisation) at the end
        task = self.task
        sets = self.eval_sets if last else {k: v for k, v in self.eval_sets.items() if task.in_distribution(k)}
        with self.part("evaluate"):
            per_set = evaluate(self.model, task, sets, cfg.eval_batch_size, self.device, cfg.precision)
        self.eval_time += time.perf_counter() - t1
        blown = [(name, m["loss"]) for name, m in per_set.items() if not math.isfinite(m["loss"])]
        if blown:  # an update (the last one, say) blew the weights up after a finite training loss
            raise Diverged(step + 1, blown[0][1], where=f"evaluation ({blown[0][0]})")
        point = {"step": step + 1, "tokens": self.tokens, "train_flops": result.train_flops,
                 "train_time_s": self.train_time, "wall_s": time.perf_counter() - self.started,
                 "train_loss": train_loss, **summarise(task, per_set), "eval": per_set}
        result.curve.append(point)
        if self.on_point is not None:
            self.on_point(point)
        metric = next((k for k in ("accuracy_in", "error_in", "tvd_in") if k in point), None)
        self.status = f"loss {train_loss:.3f}" + (f" {metric} {point[metric]:.3f}" if metric else "")

    def result(self) -> TrainResult:
        result = self.result_
        result.final = {k: v for k, v in result.curve[-1].items() if k not in ("step",)}
        result.timing = {"wall_s": time.perf_counter() - self.started, "train_s": self.train_time,
                         "eval_s": self.eval_time}
        result.throughput = {"train_tokens": self.tokens, "tokens_per_s": self.tokens / max(self.train_time, 1e-9),
                             "step": self.runner.info}
        result.memory = {**self.memory.read(), "saved_bytes": self.saved_bytes, "saved_method": SAVED_METHOD}
        return result


def draw_batch(task: Task, step: int, batch_size: int, generator: torch.Generator, part: Part = untimed) -> Batch:
    """Step ``step``'s training batch from ``generator`` (the task told the step first: curricula)."""
    task.set_step(step)
    with part("batches"):
        return task.train_batch(batch_size, generator)


def train(model: nn.Module, task: Task, cfg: TrainConfig, device: torch.device, generator: torch.Generator,
          description: str = "train", eval_sets: dict[str, Batch] | None = None, part: Part = untimed,
          on_point=None) -> TrainResult:
    """Train ``model`` on ``task`` and evaluate on ``eval_sets`` (the task's own when None, e.g. the
    frozen copies ``harness.run.eval_sets`` loads); raises ``Diverged`` on a non-finite training loss
    or a non-finite loss on an evaluation set. The
    record's ``throughput.step`` says how the step ran (``train.compile``, ``harness.run.step``)."""
    trainer = Trainer(model, task, cfg, device, eval_sets, part, on_point)
    with progress_bar(cfg.progress) as bar:
        job = bar.add_task(description, total=cfg.steps, status="")
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            batch = draw_batch(task, step, cfg.batch_size, generator, part)
            trainer.step(step, batch, data_s=time.perf_counter() - t0)
            bar.update(job, status=trainer.status)
            bar.advance(job)
    return trainer.result()
