"""How a training step runs (``train.compile``): eagerly, through ``torch.compile``, or as a CUDA graph.

A small model is bound by kernel launches and host work, not by the GPU; the last two modes take
that cost away. Both need shapes that repeat, so a batch is padded at the end of the sequence to its
*bucket* (the next power of two, at most the task's longest training input): padded positions are
unscored (``mask`` False) and every mixer is causal, so the loss and the gradients are those of the
unpadded batch (up to rounding). Eager runs are never padded, nor are models whose outputs all read
the last position (``readout="last"``), where padding would move that position.

- ``none``: ``train_step`` as it always ran.
- ``compile``: the forward and the task's loss through ``torch.compile(dynamic=False)`` (one
  compilation per bucket); backward, clipping and AdamW as in eager.
- ``cuda_graph``: the whole step (forward, loss, backward, clipping, AdamW with ``capturable=True`` and
  tensor learning rates) captured once per bucket after ``GRAPH_WARMUP`` eager steps of that bucket,
  then replayed: one launch per step. CUDA only.

The LM head (``train.head_positions``): ``scored`` applies it only to the positions the loss scores
when the task bounds how many there are (``Task.max_scored_positions``, e.g. MQAR's queries: 4-64
of 64-256 positions) and the task's loss is the default masked cross-entropy: each example's
scored positions are gathered (a fixed count per padded length, so shapes still repeat), then the
head and the loss run on those alone. The same terms, so the same loss and gradients up to rounding,
without the logits of positions whose loss weight is zero (at vocabulary 8,192 these were most of
a small model's step). ``all``: the head on every position, as before. Evaluation reads the scored
positions of such tasks too (``harness.run.train.evaluate``: the same loss and metrics, whatever this
option). ``info["head"]`` says which ran.

A mixer that cannot be compiled or captured (a host sync, an op dynamo or the capture refuses)
falls back to eager at the step where it failed, and ``StepRunner.info`` says which mode ran, why,
and from which step.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from harness.run.memory import step_saved_bytes
from tasks.base import Batch, Task

log = logging.getLogger("mixbench")
COMPILE_MODES = ("none", "compile", "cuda_graph")
HEAD_POSITIONS = ("scored", "all")
GRAPH_WARMUP = 3  # eager steps per bucket before its capture (cuBLAS handles, autotuning, optimizer state)


def bucket_length(length: int, longest: int) -> int:
    """The padded length of a batch of ``length`` positions: the next power of two, capped at
    ``longest`` (the task's longest training input) and never below ``length``."""
    return max(length, min(1 << (length - 1).bit_length(), longest))


def scored_only(batch: Batch, count: int) -> tuple[torch.Tensor, Batch]:
    """The first ``count`` scored positions of every example, in order: their ``index (batch, count)``
    and the batch's ``targets`` and ``mask`` gathered there (padding slots, where an example has fewer,
    unscored). ``count`` must bound the scored positions of every example (not checked here: a device
    sync; ``tests/harness/test_step.py`` checks every task's bound)."""
    mask = batch.mask
    # each position's slot: scored ones first, in order, then the unscored, in order (a permutation of
    # 0..n-1 per example, which a stable sort of ~mask would give; cumulative sums are cheaper and capturable)
    scored_rank = mask.long().cumsum(1) - 1
    unscored_rank = (~mask).long().cumsum(1) - 1 + mask.sum(1, keepdim=True)
    slot = torch.where(mask, scored_rank, unscored_rank)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(slot)
    index = torch.empty_like(slot).scatter_(1, slot, positions)[:, :count]
    return index, Batch(batch.inputs, batch.targets.gather(1, index), batch.mask.gather(1, index), {})


def scored_head_applies(model: nn.Module, task: Task) -> bool:
    """Whether the LM head may run on the scored positions alone: the task bounds them
    (``Task.max_scored_positions``), scores with the default masked cross-entropy and token outputs
    (so its metrics read the scored positions alone), and the model exposes ``features``."""
    return (type(task).loss is Task.loss and getattr(task, "output_kind", "tokens") == "tokens"
            and type(task).max_scored_positions is not Task.max_scored_positions and hasattr(model, "features"))


def worth_gathering(count: int | None, length: int) -> bool:
    """Whether reading ``count`` scored positions of ``length`` is worth the gather: some, at most half."""
    return count is not None and 0 < count <= length // 2


def head_on_scored(model: nn.Module, batch: Batch, count: int, autocast: Callable) -> tuple[torch.Tensor, Batch]:
    """The model's outputs ``(batch, count, vocab)`` at the first ``count`` scored positions of every
    example (``scored_only``), and the batch's targets and mask gathered there."""
    index, scored = scored_only(batch, count)
    with autocast():
        states = model.features(batch.inputs)
        states = states.gather(1, index[..., None].expand(-1, -1, states.shape[-1]))
        return model.head(states), scored


def pad_batch(batch: Batch, length: int) -> Batch:
    """``batch`` padded at the end of dimension 1 to ``length`` positions: inputs and targets with
    zeros, ``mask`` with False (unscored), extras whose dimension 1 is the sequence likewise."""
    n = batch.inputs.shape[1]
    if length == n:
        return batch

    def pad(t: torch.Tensor) -> torch.Tensor:
        shape = list(t.shape)
        shape[1] = length - n
        return torch.cat([t, t.new_zeros(shape)], dim=1)

    extras = {k: pad(v) if v.dim() >= 2 and v.shape[1] == n else v for k, v in batch.extras.items()}
    return Batch(pad(batch.inputs), pad(batch.targets), pad(batch.mask), extras)


class StepRunner:
    """Runs ``step(batch, step_index)`` in the mode ``mode`` (``COMPILE_MODES``) and returns the loss
    (a 0-dim tensor this runner no longer writes to). ``set_lr(factor)`` is called by ``step`` itself.

    ``optimizer`` must have been made with ``capturable=True`` for ``cuda_graph``
    (``harness.run.train.make_optimizer(..., capturable=True)``)."""

    def __init__(self, mode: str, model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                 base_lrs: list[float], lr_at: Callable[[int], float], grad_clip: float, autocast: Callable,
                 device: torch.device, head_positions: str = "all"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"train.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        if head_positions not in HEAD_POSITIONS:
            raise ValueError(f"train.head_positions must be one of {', '.join(HEAD_POSITIONS)}, got {head_positions!r}")
        if mode == "cuda_graph" and device.type != "cuda":
            raise ValueError(f"train.compile=cuda_graph needs a CUDA device, this run's is {device}")
        self.mode, self.ran, self.why, self.since = mode, mode, "", 0
        self.model, self.task, self.optimizer, self.base_lrs = model, task, optimizer, base_lrs
        self.lr_at, self.grad_clip, self.autocast, self.device = lr_at, grad_clip, autocast, device
        self.longest = task.max_train_input_len()
        # the head on the scored positions alone: asked for, a default loss and a model that has features()
        self.scored_head = head_positions == "scored" and scored_head_applies(model, task)
        self.head_ran: set[str] = set()
        self.buckets: set[int] = set()
        self._compiled = None
        self._graphs: dict[tuple, dict] = {}  # shape key -> {"seen": eager steps, "graph", "static", "loss"}
        if mode == "cuda_graph":
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = torch.tensor(base, dtype=torch.float32, device=device)
        if mode == "compile":
            self._compiled = torch.compile(self._forward_loss, dynamic=False)

    @property
    def info(self) -> dict:
        """What a record says: the mode asked for, the mode that ran, why it differs, the padded lengths."""
        out = {"asked": self.mode, "ran": self.ran, "buckets": sorted(self.buckets),
               "head": "+".join(sorted(self.head_ran)) or "all"}
        if self.why:
            out.update(fallback_step=self.since, why=self.why)
        return out

    def saved_bytes(self, batch: Batch) -> int:
        """Bytes autograd saves for backward in this step's forward and loss on ``batch`` (eager, at the
        step's precision, unpadded; the graph is dropped, nothing updated): ``memory.saved_bytes``."""
        return step_saved_bytes(self._forward_loss, batch)

    def _scored_count(self, length: int) -> int | None:
        """How many positions per example the head reads for a batch of ``length`` positions, or
        ``None``: the whole head (not asked for, no bound, or a bound above half the length)."""
        if not self.scored_head:
            return None
        count = self.task.max_scored_positions(length)
        return count if worth_gathering(count, length) else None

    def _forward_loss(self, batch: Batch) -> torch.Tensor:
        count = self._scored_count(batch.inputs.shape[1])
        if count is None:
            self.head_ran.add("all")
            with self.autocast():
                outputs = self.model(batch.inputs)
            return self.task.loss(outputs, batch)  # outside autocast, as train_step computes it
        self.head_ran.add("scored")
        outputs, scored = head_on_scored(self.model, batch, count, self.autocast)
        return self.task.loss(outputs, scored)

    def _set_lr(self, step: int) -> None:
        factor = self.lr_at(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(base * factor)
            else:
                group["lr"] = base * factor

    def _backward_update(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def _fall_back(self, step: int, err: BaseException) -> None:
        self.ran, self.since = "eager", step
        self.why = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
        log.warning("train.compile=%s failed at step %d (%s); this run goes on eagerly", self.mode, step, self.why)

    def __call__(self, batch: Batch, step: int) -> torch.Tensor:
        self._set_lr(step)
        if self.ran == "none" or self.ran == "eager":
            loss = self._forward_loss(batch)
            self._backward_update(loss)
            return loss.detach()
        length = bucket_length(batch.inputs.shape[1], self.longest)
        if getattr(self.model, "readout", "sequence") == "last":  # outputs read the last position: never pad
            length = batch.inputs.shape[1]
        batch = pad_batch(batch, length)
        self.buckets.add(length)
        if self.ran == "compile":
            try:
                loss = self._compiled(batch)
            except Exception as err:  # dynamo or inductor refused this model: eager from here on
                self._fall_back(step, err)
                loss = self._forward_loss(batch)
            self._backward_update(loss)
            return loss.detach()
        return self._graph_step(batch, step)

    def _graph_step(self, batch: Batch, step: int) -> torch.Tensor:
        tensors = [batch.inputs, batch.targets, batch.mask, *batch.extras.values()]
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        entry = self._graphs.setdefault(key, {"seen": 0})
        if "graph" in entry:
            for static, t in zip(entry["tensors"], tensors):
                static.copy_(t, non_blocking=True)
            entry["graph"].replay()
            return entry["loss"].clone()
        if entry["seen"] < GRAPH_WARMUP:  # eager, on a side stream as capture wants
            entry["seen"] += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._forward_loss(batch)
                self._backward_update(loss)
                loss = loss.detach()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return loss
        static = [t.clone() for t in tensors]
        names = list(batch.extras)
        static_batch = Batch(static[0], static[1], static[2], dict(zip(names, static[3:])))
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                loss = self._forward_loss(static_batch)
                self._backward_update(loss)
        except Exception as err:  # a host sync or an op the capture refuses: eager from here on
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self._fall_back(step, err)
            loss = self._forward_loss(batch)
            self._backward_update(loss)
            return loss.detach()
        entry.update(graph=graph, tensors=static, loss=loss)
        graph.replay()  # the capture recorded the step; this runs it
        return loss.clone()
