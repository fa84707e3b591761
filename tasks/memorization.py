"""Memorization, as MAD generates it (Poli et al. 2024; mad-lab's ``generate_memorization_instance``).

A fixed map, the same for every example, sends each key ``k`` of ``[0, K)``, ``K = (vocab_size - 1)
// 2``, to a distinct value of ``[K, vocab_size - 1)`` (a uniform injection drawn once from
``map_seed``; MAD draws it from its config's seed, 12345). Token ``vocab_size - 1`` is the insert
token. An example of ``seq_len`` (even) tokens is ``seq_len / 2`` pairs ``k I``, the keys uniform with
repetition; the target at each insert token is the value of the key before it, and only those
positions are scored (``seq_len / 2`` per example): the model must learn the map from the training
data, since nothing in the sequence gives it. No shift: position ``t`` is scored against target
``t``, as MAD's examples are laid out.

Training examples come from a fixed set of ``num_train_examples`` (MAD: 256; ``train_seed``); the
evaluation set ``test`` (``eval_samples``, MAD: 1,280) uses the same map, so keys that no training
example holds cap the reachable accuracy (the larger vocabularies of MAD's sweep). Metric:
``accuracy``, the share of insert positions where the argmax is the value (MAD: torchmetrics'
class-averaged accuracy over the test set's scored tokens). Defaults are MAD's baseline
(vocabulary 256, length 32). MAD's noise options (unused by its benchmark) are not offered.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, FixedTrainingSet, Task, masked_token_accuracy, require


def memorization_map(vocab_size: int, seed: int) -> torch.Tensor:
    """``(K,)``: the value of each key ``0..K-1``, ``K = (vocab_size - 1) // 2``, distinct values of
    ``[K, vocab_size - 1)``, from a CPU generator seeded ``seed``."""
    n_keys = (vocab_size - 1) // 2
    order = torch.randperm(vocab_size - 1 - n_keys, generator=torch.Generator().manual_seed(seed))
    return order[:n_keys] + n_keys


def assemble_memorization(keys: torch.Tensor, table: torch.Tensor, insert: int) -> Batch:
    """Examples ``k_1 I k_2 I ...`` from ``keys (batch, pairs)`` and the map ``table (K,)``: targets the
    keys' values at the insert positions, scored there only. Returns ``(batch, 2 * pairs)`` tensors."""
    batch, pairs = keys.shape
    inputs = torch.full((batch, 2 * pairs), insert, dtype=torch.long, device=keys.device)
    inputs[:, 0::2] = keys
    targets = torch.zeros_like(inputs)
    targets[:, 1::2] = table.to(keys.device)[keys]
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    mask[:, 1::2] = True
    return Batch(inputs=inputs, targets=targets, mask=mask)


@register_task("memorization")
class MemorizationTask(Task):
    """Learn a fixed key-to-value map from the training data."""

    name = "memorization"
    training_options = ("num_train_examples", "train_seed")

    def __init__(self, vocab_size: int = 256, seq_len: int = 32, map_seed: int = 12345,
                 num_train_examples: int | None = 256, train_seed: int = 12345, eval_samples: int = 1280,
                 eval_seed: int = 1234):
        require(vocab_size >= 4, "vocab_size", f"must be >= 4 (a key, a value, the insert token), got {vocab_size}")
        require(seq_len >= 2 and seq_len % 2 == 0, "seq_len", f"must be even and >= 2 (key, insert pairs), got {seq_len}")
        require(num_train_examples is None or num_train_examples >= 1, "num_train_examples",
                f"must be null (fresh examples every step) or >= 1, got {num_train_examples}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len, self.map_seed = vocab_size, seq_len, map_seed
        self.num_train_examples, self.train_seed = num_train_examples, train_seed
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.insert, self.table = vocab_size - 1, memorization_map(vocab_size, map_seed)
        self._tables: dict[str, torch.Tensor] = {"cpu": self.table}
        self.training_set = None if num_train_examples is None else FixedTrainingSet(
            self._sample, num_train_examples, train_seed)

    def max_input_len(self) -> int:
        return self.seq_len

    def _sample(self, batch: int, generator: torch.Generator) -> Batch:
        device = generator.device
        table = self._tables.setdefault(str(device), self.table.to(device))
        keys = torch.randint(0, len(self.table), (batch, self.seq_len // 2), generator=generator, device=device)
        return assemble_memorization(keys, table, self.insert)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.training_set is not None:
            return self.training_set.draw(batch_size, generator)
        return self._sample(batch_size, generator)

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + self.seq_len)
        return {"test": self._sample(self.eval_samples, generator)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"accuracy": masked_token_accuracy(logits, batch)["accuracy"]}

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "keys": len(self.table),
                "num_train_examples": self.num_train_examples}
