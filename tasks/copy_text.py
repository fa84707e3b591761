"""Copying real text: the TMM paper's copy probe on the ``lm_text`` corpus.

Each window is ``h = seq_len // 2`` consecutive tokens of the corpus followed by the same ``h``
tokens again: ``a_1..a_h a_1..a_h`` (inputs are its first ``2h - 1`` tokens, targets the next
token). Only the repeated half is scored (``h`` positions, from the prediction of ``a_1`` at
``a_h`` on), so the loss measures copying rather than language modelling. The copy sits at a
constant offset, as in the fixed-length copy protocol. Corpus, tokenisation, split and cache are
``lm_text``'s; training windows come from the training files, the evaluation set from the
validation files. Metrics: token accuracy and exact match of the whole repeated half.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, masked_token_accuracy, require
from tasks.lm_text import TextTask


def repeat_halves(half: torch.Tensor) -> Batch:
    """Copy examples from ``half (batch, h)``: inputs/targets/mask ``(batch, 2h - 1)``, the repeat scored."""
    h = half.shape[1]
    seq = torch.cat([half, half], dim=1)
    mask = torch.zeros(half.shape[0], 2 * h - 1, dtype=torch.bool, device=half.device)
    mask[:, h - 1:] = True
    return Batch(inputs=seq[:, :-1], targets=seq[:, 1:], mask=mask)


@register_task("copy_text")
class CopyTextTask(TextTask):
    """Repeat a window of real text; loss and accuracy on the repeat only."""

    name = "copy_text"

    def __init__(self, train_files: list[str] | None = None, validation_files: list[str] | None = None,
                 validation_percent: float = 5.0, tokenizer: str | None = None, cache_dir: str = "results/cache",
                 seq_len: int = 256, eval_samples: int = 256, eval_seed: int = 1234):
        super().__init__(train_files, validation_files, validation_percent, tokenizer, cache_dir, eval_samples, eval_seed)
        require(seq_len >= 4 and seq_len % 2 == 0, "seq_len", f"must be an even number >= 4, got {seq_len}")
        self.seq_len = seq_len

    def max_input_len(self) -> int:
        return self.seq_len - 1

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return repeat_halves(self.random_windows("train", batch_size, self.seq_len // 2, generator))

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed)
        return {"validation": repeat_halves(self.random_windows("validation", self.eval_samples, self.seq_len // 2,
                                                                generator))}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return masked_token_accuracy(logits, batch)

    def summary(self) -> dict:
        return {"seq_len": self.seq_len, "corpus": self.corpus.info}
