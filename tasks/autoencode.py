"""Autoencoding: reconstruct the input, a genuinely invertible objective (the TMM paper's contrast
with next-token prediction, whose map from inputs to targets loses information).

Inputs are ``seq_len`` tokens drawn uniformly from ``vocab_size`` symbols; the target at position
``t`` is the input token at ``t - delay`` and every position from ``delay`` on is scored. ``delay 0``
is the plain autoencoder (each output reconstructs its own input token: the map is the identity,
invertible by construction); ``delay d > 0`` asks a causal model to carry each token ``d``
positions before giving it back. Evaluation set ``L<seq_len>`` (``eval_samples`` sequences, fixed
by ``eval_seed``). Metrics: per-token accuracy and exact match over the scored positions.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, masked_token_accuracy, require


def autoencode_batch(tokens: torch.Tensor, delay: int) -> Batch:
    """Examples from ``tokens (batch, n)``: targets ``tokens[:, t - delay]`` at ``t >= delay``, unscored before."""
    targets = torch.zeros_like(tokens)
    targets[:, delay:] = tokens[:, : tokens.shape[1] - delay]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, delay:] = True
    return Batch(inputs=tokens, targets=targets, mask=mask)


@register_task("autoencode")
class AutoencodeTask(Task):
    """Give back every input token (``delay`` positions later)."""

    name = "autoencode"

    def __init__(self, vocab_size: int = 64, seq_len: int = 256, delay: int = 0, eval_samples: int = 256,
                 eval_seed: int = 1234):
        require(vocab_size >= 2, "vocab_size", f"must be >= 2, got {vocab_size}")
        require(seq_len >= 1, "seq_len", f"must be >= 1, got {seq_len}")
        require(0 <= delay < seq_len, "delay", f"must be in [0, seq_len={seq_len}), got {delay}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len, self.delay = vocab_size, seq_len, delay
        self.eval_samples, self.eval_seed = eval_samples, eval_seed

    def max_input_len(self) -> int:
        return self.seq_len

    def _sample(self, batch: int, generator: torch.Generator) -> Batch:
        tokens = torch.randint(0, self.vocab_size, (batch, self.seq_len), generator=generator, device=generator.device)
        return autoencode_batch(tokens, self.delay)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator)

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + self.seq_len)
        return {f"L{self.seq_len}": self._sample(self.eval_samples, generator)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return masked_token_accuracy(logits, batch)

    def summary(self) -> dict:
        return {"train_lengths": [self.seq_len, self.seq_len], "eval_lengths": [self.seq_len],
                "vocab_size": self.vocab_size, "delay": self.delay}
