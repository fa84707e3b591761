"""What every task provides: batches, fixed evaluation sets and a metric."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class TaskConfigError(ValueError):
    """Impossible task parameters; the message names the field and why."""


@dataclass
class Batch:
    """A batch of next-token examples.

    ``inputs (batch, n)`` token ids, ``targets (batch, n)`` the token each position must predict,
    ``mask (batch, n)`` True where the target is scored.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop])


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``TaskConfigError`` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise TaskConfigError(f"task.{field}: {message}")


class Task:
    """Base class: a generator of training batches, fixed evaluation sets and their metrics."""

    name: str = "?"
    vocab_size: int

    def max_input_len(self) -> int:
        """Longest input (tokens) any training or evaluation batch holds."""
        raise NotImplementedError

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A fresh training batch on ``generator.device``, deterministic from the generator state."""
        raise NotImplementedError

    def eval_sets(self) -> dict[str, Batch]:
        """Named evaluation sets, identical for every mixer and run (built on CPU from a fixed seed)."""
        raise NotImplementedError

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
