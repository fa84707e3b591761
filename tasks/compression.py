"""Compression, as MAD generates it (Poli et al. 2024; mad-lab's ``generate_compression_instance``).

An example of ``seq_len`` tokens: ``seq_len - 1`` tokens uniform over ``[0, vocab_size - 1)``, then the
compression token ``vocab_size - 1``. The target at every position is the input token there (the
compression token's included), and every position is scored. The model reads the sequence causally
and must then give back all of it from the state at the compression token alone: the task declares
``readout = "last"``, and the backbone decodes each output position from the last position's state
plus a fixed sinusoidal embedding of that position through MAD's two-layer MLP decoder (mad-lab's
``AutoEncoder`` with ``global_pool='last'``; ``harness.run.model.LastStateDecoder``).

Training examples come from a fixed set of ``num_train_examples`` (MAD: 12,800; ``train_seed``);
evaluation set ``test`` of ``eval_samples`` (MAD: 1,280). Metric: ``accuracy``, the share of
positions given back right, per example and averaged (MAD: torchmetrics' class-averaged accuracy
over the test set's tokens), and ``exact_match``. Defaults are MAD's baseline (vocabulary 16,
length 32). MAD's noise options are not offered (its benchmark leaves them off, and its generator
returns the noisy inputs as targets).
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, FixedTrainingSet, Task, masked_token_accuracy, require


def compression_batch(tokens: torch.Tensor, compress: int) -> Batch:
    """Examples from ``tokens (batch, seq_len - 1)``: the tokens then ``compress``; targets the inputs,
    every position scored. Returns ``(batch, seq_len)`` tensors."""
    marker = torch.full((tokens.shape[0], 1), compress, dtype=torch.long, device=tokens.device)
    inputs = torch.cat([tokens, marker], 1)
    return Batch(inputs=inputs, targets=inputs.clone(), mask=torch.ones_like(inputs, dtype=torch.bool))


@register_task("compression")
class CompressionTask(Task):
    """Give back the whole sequence from the state at its last (compression) token."""

    name = "compression"
    readout = "last"
    training_options = ("num_train_examples", "train_seed")

    def __init__(self, vocab_size: int = 16, seq_len: int = 32, num_train_examples: int | None = 12_800,
                 train_seed: int = 12345, eval_samples: int = 1280, eval_seed: int = 1234):
        require(vocab_size >= 2, "vocab_size", f"must be >= 2 (a symbol and the compression token), got {vocab_size}")
        require(seq_len >= 2, "seq_len", f"must be >= 2, got {seq_len}")
        require(num_train_examples is None or num_train_examples >= 1, "num_train_examples",
                f"must be null (fresh examples every step) or >= 1, got {num_train_examples}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.num_train_examples, self.train_seed = num_train_examples, train_seed
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.compress = vocab_size - 1
        self.training_set = None if num_train_examples is None else FixedTrainingSet(
            self._sample, num_train_examples, train_seed)

    def max_input_len(self) -> int:
        return self.seq_len

    def _sample(self, batch: int, generator: torch.Generator) -> Batch:
        tokens = torch.randint(0, self.vocab_size - 1, (batch, self.seq_len - 1), generator=generator,
                               device=generator.device)
        return compression_batch(tokens, self.compress)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.training_set is not None:
            return self.training_set.draw(batch_size, generator)
        return self._sample(batch_size, generator)

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + self.seq_len)
        return {"test": self._sample(self.eval_samples, generator)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return masked_token_accuracy(logits, batch)

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "num_train_examples": self.num_train_examples}
