"""Copying, as in Jelassi et al. 2024 ("Repeat After Me"): ``[BOS] s_1..s_L [SEP] s_1..s_L``.

Symbols are uniform over an alphabet; loss and accuracy count only the copied half (the model
predicts ``s_1`` at ``[SEP]`` through ``s_L``). Two protocols:

- ``variable``: training lengths uniform in ``[min_len, max_train_len]``, so the copy sits at a
  varying offset and must be found by content; evaluation at fixed lengths inside and beyond the
  training range measures length generalisation.
- ``fixed``: every training sequence has length ``max_train_len``: a constant-offset probe (the
  copy sits at a constant offset and can be learned as a shift). It is not the TMM paper's copy
  probe, which copies repeated halves of real text (``copy_text``).

Token ids: symbols ``0..alphabet_size-1``, then BOS, SEP and PAD. Shorter sequences in a batch are
right-padded (causal mixers never see the padding from earlier positions).
Metrics per evaluation length: token accuracy and exact match of the whole copied string under
teacher forcing (an exact match under teacher forcing is exactly a correct greedy decode).
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, masked_token_accuracy, require


def copy_sequences(symbols: torch.Tensor, lengths: torch.Tensor, bos: int, sep: int, pad: int) -> Batch:
    """Build copy examples from ``symbols (batch, max_len)`` of which row b uses the first ``lengths[b]``.

    Returns inputs/targets of ``2 * max(lengths) + 1`` tokens and the mask of the copied half.
    """
    batch, width = symbols.shape
    total = 2 * width + 2
    pos = torch.arange(total, device=symbols.device)[None, :]  # (1, T)
    L = lengths[:, None]  # (B, 1)
    source = torch.where(pos <= L, pos - 1, pos - L - 2).clamp(0, width - 1)
    seq = symbols.gather(1, source)
    seq = torch.where(pos == 0, bos, seq)
    seq = torch.where(pos == L + 1, sep, seq)
    seq = torch.where(pos > 2 * L + 1, pad, seq)
    t = pos[:, :-1]  # target index t predicts seq[t + 1]
    mask = (t >= L + 1) & (t <= 2 * L)
    return Batch(inputs=seq[:, :-1], targets=seq[:, 1:], mask=mask.expand(batch, -1).contiguous())


@register_task("copy")
class CopyTask(Task):
    """Copy a random string after a separator; ``variable`` or ``fixed`` length protocol."""

    name = "copy"

    def __init__(self, protocol: str = "variable", alphabet_size: int = 26, min_len: int = 1,
                 max_train_len: int = 32, eval_lengths: tuple[int, ...] = (8, 16, 32, 64, 128),
                 eval_samples: int = 256, eval_seed: int = 1234):
        require(protocol in ("variable", "fixed"), "protocol", f"must be 'variable' or 'fixed', got {protocol!r}")
        require(alphabet_size >= 2, "alphabet_size", f"must be >= 2 to make copying non-trivial, got {alphabet_size}")
        require(min_len >= 1, "min_len", f"must be >= 1, got {min_len}")
        require(max_train_len >= min_len, "max_train_len",
                f"must be >= min_len ({min_len}), got {max_train_len}")
        eval_lengths = tuple(int(x) for x in eval_lengths)
        require(len(eval_lengths) > 0 and min(eval_lengths) >= 1, "eval_lengths",
                f"must be a non-empty list of lengths >= 1, got {list(eval_lengths)}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.protocol, self.alphabet_size = protocol, alphabet_size
        self.min_len = max_train_len if protocol == "fixed" else min_len
        self.max_train_len = max_train_len
        self.eval_lengths, self.eval_samples, self.eval_seed = eval_lengths, eval_samples, eval_seed
        self.bos, self.sep, self.pad = alphabet_size, alphabet_size + 1, alphabet_size + 2
        self.vocab_size = alphabet_size + 3

    def max_input_len(self) -> int:
        return 2 * max(self.max_train_len, *self.eval_lengths) + 1

    def max_train_input_len(self) -> int:
        return 2 * self.max_train_len + 1

    def _sample(self, lengths: torch.Tensor, generator: torch.Generator, width: int | None = None) -> Batch:
        width = int(lengths.max()) if width is None else width
        symbols = torch.randint(0, self.alphabet_size, (len(lengths), width), generator=generator,
                                device=generator.device)
        return copy_sequences(symbols, lengths, self.bos, self.sep, self.pad)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        lengths = torch.randint(self.min_len, self.max_train_len + 1, (batch_size,), generator=generator,
                                device=generator.device)
        # On a GPU, reading lengths.max() back would stall the host every step until the device has
        # drained its queue; draw symbols at the widest training length instead (same distribution,
        # padded as before; a batch of 128 reaches that width anyway with near certainty).
        return self._sample(lengths, generator, width=self.max_train_len if lengths.is_cuda else None)

    def eval_sets(self) -> dict[str, Batch]:
        sets = {}
        for length in self.eval_lengths:
            generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + length)
            lengths = torch.full((self.eval_samples,), length, dtype=torch.long)
            sets[f"L{length}"] = self._sample(lengths, generator)
        return sets

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return masked_token_accuracy(logits, batch)

    def in_distribution(self, set_name: str) -> bool:
        length = int(set_name.removeprefix("L"))
        return self.min_len <= length <= self.max_train_len

    def summary(self) -> dict:
        return {"train_lengths": [self.min_len, self.max_train_len], "eval_lengths": list(self.eval_lengths),
                "protocol": self.protocol}
