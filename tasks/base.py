"""What every task provides: batches, fixed evaluation sets, a loss and a metric."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as TF


class TaskConfigError(ValueError):
    """Impossible task parameters; the message names the field and why."""


@dataclass
class Batch:
    """A batch of next-token (or next-value) examples.

    Token tasks: ``inputs (batch, n)`` token ids and ``targets (batch, n)`` the token each position
    must predict. Continuous tasks: ``inputs (batch, n, input_dim)`` and ``targets (batch, n)``
    real values. ``mask (batch, n)`` is True where the target is scored; unscored targets hold 0.
    ``extras`` holds per-example tensors a metric needs (first dimension ``batch``), e.g. the
    symbols an automaton allows next.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device),
                     {k: v.to(device) for k, v in self.extras.items()})

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop],
                     {k: v[start:stop] for k, v in self.extras.items()})


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``TaskConfigError`` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise TaskConfigError(f"task.{field}: {message}")


def masked_cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy (nats per scored token) over the scored positions of ``logits (batch, n, vocab)``."""
    losses = TF.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
    mask = batch.mask.flatten().float()
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def masked_token_accuracy(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Per example ``(batch,)``: ``accuracy``, the share of scored positions where the argmax of
    ``logits (batch, n, vocab)`` is the target (0 with none scored), and ``exact_match``, 1 where
    every scored position is right."""
    correct = ((logits.argmax(-1) == batch.targets) & batch.mask).sum(1)
    scored = batch.mask.sum(1)
    return {"accuracy": correct / scored.clamp(min=1), "exact_match": (correct == scored).float()}


class Task:
    """Base class: a generator of training batches, fixed evaluation sets, their loss and metrics.

    ``input_kind`` / ``output_kind`` are ``"tokens"`` (ids in ``[0, vocab_size)``, LM head) or
    ``"continuous"`` (vectors of ``input_dim`` in, ``output_dim`` values out, linear read-in and
    read-out in the backbone). ``readout`` says where each output comes from: ``"sequence"``, the
    state at its own position (causal sequence modelling); ``"last"``, the state at the last position
    alone, decoded for every position by the backbone's ``LastStateDecoder`` (MAD's compression).
    """

    name: str = "?"
    vocab_size: int = 0
    input_kind: str = "tokens"
    output_kind: str = "tokens"
    input_dim: int = 0
    output_dim: int = 0
    readout: str = "sequence"
    # options that shape training batches only, never the evaluation sets (frozen copies ignore them)
    training_options: tuple[str, ...] = ()

    def max_input_len(self) -> int:
        """Longest input (positions) any training or evaluation batch holds."""
        raise NotImplementedError

    def max_train_input_len(self) -> int:
        """Longest input (positions) a training batch holds (evaluation sets may be longer); a mixer
        set up for the training length (a ``train_len`` option) gets it from the backbone."""
        return self.max_input_len()

    def max_scored_positions(self, length: int) -> int | None:
        """At most how many positions of one example are scored (``mask`` True) in any training batch of
        at most ``length`` positions, when that bound is known and far below ``length``; ``None`` (the
        default) otherwise. The training step then applies the LM head to those positions alone
        (``harness.run.step``): the same loss and gradients, without the logits of unscored positions."""
        return None

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A fresh training batch on ``generator.device``, deterministic from the generator state."""
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Told by the training loop before it draws step ``step``'s batch (0-based); tasks whose training
        distribution follows a schedule (a curriculum) use it, the others ignore it."""

    def eval_sets(self) -> dict[str, Batch]:
        """Named evaluation sets, identical for every mixer and run (built on CPU from a fixed seed)."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Scalar training loss from the model's ``outputs``; cross-entropy on the scored tokens by default."""
        return masked_cross_entropy(outputs, batch)

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example metrics ``{name: (batch,)}`` from ``logits (batch, n, vocab)``; means are taken by the caller."""
        raise NotImplementedError

    def in_distribution(self, set_name: str) -> bool:
        """Whether evaluation set ``set_name`` lies inside the training distribution."""
        return True

    def summary(self) -> dict:
        """Facts the report needs (e.g. the training length range)."""
        return {}



class FixedTrainingSet:
    """A training set of ``size`` examples drawn once by ``sample(count, generator)`` from a CPU generator
    seeded ``seed``, as MAD trains on one fixed data set per task setting, the same for every model and
    run; each batch then takes examples from it with the run's generator. Built on first use, kept
    per device."""

    def __init__(self, sample, size: int, seed: int):
        self.sample, self.size, self.seed = sample, size, seed
        self._on: dict[str, Batch] = {}

    def examples(self, device: torch.device | str = "cpu") -> Batch:
        key = str(torch.device(device))
        if key not in self._on:
            if "cpu" not in self._on:
                self._on["cpu"] = self.sample(self.size, torch.Generator().manual_seed(self.seed))
            self._on[key] = self._on["cpu"].to(device)
        return self._on[key]

    def draw(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` examples on ``generator.device``: distinct within the batch while the set holds
        enough (one batch of a shuffled epoch), uniformly with replacement otherwise."""
        pool, device = self.examples(generator.device), generator.device
        if batch_size <= self.size:
            index = torch.randperm(self.size, generator=generator, device=device)[:batch_size]
        else:
            index = torch.randint(0, self.size, (batch_size,), generator=generator, device=device)
        return Batch(pool.inputs[index], pool.targets[index], pool.mask[index],
                     {k: v[index] for k, v in pool.extras.items()})
