"""Selective copying, as in the Mamba paper (Gu & Dao 2023) and MAD (Poli et al. 2024).

A sequence of ``seq_len`` tokens: a context of ``seq_len - num_tokens - 1`` positions holding
``num_tokens`` data tokens at uniformly random positions (in order) among noise tokens, then the
copy (separator) token, then ``num_tokens`` noise tokens. At the j-th position after the separator
the model must emit the j-th data token; only these ``num_tokens`` positions are scored. The
outputs are not fed back (MAD's format): the model must select the data tokens from the noise by
content and keep them in order.

Token ids (MAD's layout): data symbols ``0..vocab_size-3``, noise ``vocab_size - 2``, copy
``vocab_size - 1``. Defaults follow MAD's baseline: vocabulary 16, length 256, 16 tokens to copy.
Evaluation sets ``L<seq_len>`` at ``eval_lengths`` (the training length by default, longer ones
probe length generalisation with the same number of data tokens).
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, masked_token_accuracy, require


def assemble_selective_copy(data: torch.Tensor, positions: torch.Tensor, seq_len: int, noise: int,
                            copy: int) -> Batch:
    """Selective-copy examples of ``seq_len`` tokens: ``data (batch, k)`` placed at the increasing context
    ``positions (batch, k)``, noise elsewhere, the copy token, then ``k`` noise tokens whose targets are
    the data. Returns inputs/targets/mask ``(batch, seq_len)``."""
    batch, k = data.shape
    context = seq_len - k - 1
    inputs = torch.full((batch, seq_len), noise, dtype=torch.long, device=data.device)
    inputs.scatter_(1, positions, data)
    inputs[:, context] = copy
    targets = torch.zeros_like(inputs)
    targets[:, context + 1:] = data
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=data.device)
    mask[:, context + 1:] = True
    return Batch(inputs=inputs, targets=targets, mask=mask)


def selective_copy_batch(data: torch.Tensor, seq_len: int, noise: int, copy: int,
                         generator: torch.Generator) -> Batch:
    """Selective-copy examples for ``data (batch, k)``, positions among the context uniform over k-subsets."""
    batch, k = data.shape
    scores = torch.rand(batch, seq_len - k - 1, generator=generator, device=data.device)
    positions = scores.topk(k, dim=1).indices.sort(dim=1).values  # (B, k), increasing
    return assemble_selective_copy(data, positions, seq_len, noise, copy)


@register_task("selective_copy")
class SelectiveCopyTask(Task):
    """Copy the data tokens scattered among noise, in order, after the separator."""

    name = "selective_copy"

    def __init__(self, vocab_size: int = 16, seq_len: int = 256, num_tokens: int = 16,
                 eval_lengths: tuple[int, ...] | None = None, eval_samples: int = 256, eval_seed: int = 1234):
        require(vocab_size >= 3, "vocab_size", f"must be >= 3 (data symbols, noise, copy), got {vocab_size}")
        require(num_tokens >= 1, "num_tokens", f"must be >= 1, got {num_tokens}")
        require(seq_len >= 2 * num_tokens + 2, "seq_len",
                f"must be >= 2 * num_tokens + 2 = {2 * num_tokens + 2} (data, separator, outputs and at least "
                f"one noise token), got {seq_len}")
        eval_lengths = tuple(int(x) for x in (eval_lengths or (seq_len,)))
        require(all(x >= 2 * num_tokens + 2 for x in eval_lengths), "eval_lengths",
                f"every length must be >= 2 * num_tokens + 2 = {2 * num_tokens + 2}, got {list(eval_lengths)}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len, self.num_tokens = vocab_size, seq_len, num_tokens
        self.eval_lengths, self.eval_samples, self.eval_seed = eval_lengths, eval_samples, eval_seed
        self.symbols, self.noise, self.copy = vocab_size - 2, vocab_size - 2, vocab_size - 1

    def max_input_len(self) -> int:
        return max(self.seq_len, *self.eval_lengths)

    def max_train_input_len(self) -> int:
        return self.seq_len

    def _sample(self, batch: int, seq_len: int, generator: torch.Generator) -> Batch:
        data = torch.randint(0, self.symbols, (batch, self.num_tokens), generator=generator, device=generator.device)
        return selective_copy_batch(data, seq_len, self.noise, self.copy, generator)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, self.seq_len, generator)

    def eval_sets(self) -> dict[str, Batch]:
        sets = {}
        for length in self.eval_lengths:
            generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + length)
            sets[f"L{length}"] = self._sample(self.eval_samples, length, generator)
        return sets

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return masked_token_accuracy(logits, batch)

    def in_distribution(self, set_name: str) -> bool:
        return int(set_name.removeprefix("L")) == self.seq_len

    def summary(self) -> dict:
        # train_lengths: the copy report's shaded training range
        return {"train_lengths": [self.seq_len, self.seq_len], "eval_lengths": list(self.eval_lengths),
                "num_tokens": self.num_tokens, "vocab_size": self.vocab_size, "protocol": "selective"}
