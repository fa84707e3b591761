"""Copying, as in Jelassi et al. 2024 ("Repeat After Me"): ``[BOS] s_1..s_L [SEP] s_1..s_L``.

Symbols are uniform over an alphabet; loss and accuracy count only the copied half (the model
predicts ``s_1`` at ``[SEP]`` through ``s_L``). Two protocols:

- ``variable``: training lengths uniform in ``[min_len, max_train_len]``, so the copy sits at a
  varying offset and must be found by content; evaluation at fixed lengths inside and beyond the
  training range measures length generalisation.
- ``fixed``: every training sequence has length ``max_train_len``: a constant-offset probe (the
  copy sits at a constant offset and can be learned as a shift). It is not the TMM paper's copy
  probe, which copies repeated halves of real text (``copy_text``).

Jelassi et al.'s own protocol (sjelassi/transformers_ssm_copy) adds two options:

- ``eos``: ``[BOS] s [SEP] s [EOS]``, the end-of-string token a scored target too (the model must
  say where the copy stops).
- ``packed_length``: training rows of exactly this many tokens filled with consecutive examples
  (each ``[BOS] s [SEP] s [EOS]``, lengths drawn independently); the example cut by the end of
  the row is not scored, nor the BOS after an EOS. Needs ``eos``. Evaluation rows hold one example.

Token ids: symbols ``0..alphabet_size-1``, then BOS, SEP, PAD (and EOS with ``eos``). Shorter
sequences in a batch are right-padded (causal mixers never see the padding from earlier positions).
Metrics per evaluation length: token accuracy and ``exact_match``, the string-level exact match of
the whole copy (and the EOS with ``eos``) under teacher forcing (an exact match under teacher
forcing is exactly a correct greedy decode): Jelassi et al.'s headline metric.

``string_bits(L, alphabet_size)`` is the information a copy of L symbols carries, ``L log2(26)``
bits for Jelassi's alphabet: a model whose decoding state holds fewer bits (``SequenceModel.state_bits``)
cannot copy every string of that length.
"""
from __future__ import annotations

import torch

from tasks import register_task
import math

from tasks.base import Batch, Task, masked_token_accuracy, require


def string_bits(length: int, alphabet_size: int) -> float:
    """Bits of information in a uniformly random string of ``length`` symbols: ``length log2(alphabet_size)``."""
    return length * math.log2(alphabet_size)


def copy_sequences(symbols: torch.Tensor, lengths: torch.Tensor, bos: int, sep: int, pad: int,
                   eos: int | None = None) -> Batch:
    """Build copy examples from ``symbols (batch, max_len)`` of which row b uses the first ``lengths[b]``.

    Returns inputs/targets of ``2 * max(lengths) + 1`` tokens (one more with ``eos``, which then
    closes every copy and is scored) and the mask of the copied half.
    """
    batch, width = symbols.shape
    total = 2 * width + 2 + (eos is not None)
    pos = torch.arange(total, device=symbols.device)[None, :]  # (1, T)
    L = lengths[:, None]  # (B, 1)
    source = torch.where(pos <= L, pos - 1, pos - L - 2).clamp(0, width - 1)
    seq = symbols.gather(1, source)
    seq = torch.where(pos == 0, bos, seq)
    seq = torch.where(pos == L + 1, sep, seq)
    end = 2 * L + 1  # the last copied symbol
    if eos is not None:
        seq = torch.where(pos == end + 1, eos, seq)
        end = end + 1
    seq = torch.where(pos > end, pad, seq)
    t = pos[:, :-1]  # target index t predicts seq[t + 1]
    mask = (t >= L + 1) & (t < end)
    return Batch(inputs=seq[:, :-1], targets=seq[:, 1:], mask=mask.expand(batch, -1).contiguous())


def pack_examples(examples: Batch, lengths: torch.Tensor, per_row: int, row_length: int) -> Batch:
    """Concatenate ``per_row`` consecutive examples of ``examples`` (rows ``(batch * per_row, T)`` from
    ``copy_sequences`` with EOS, string lengths ``lengths``) into rows of ``row_length`` inputs.

    An example of length L fills ``2 L + 3`` tokens; the one cut by the row's end is not scored, nor
    the transition from one example's EOS to the next one's BOS.
    """
    device = examples.inputs.device
    size = 2 * lengths + 3  # tokens of each example, BOS to EOS
    full = torch.cat([examples.inputs, examples.targets[:, -1:]], dim=1)  # (B P, T + 1): the whole sequences
    batch = len(lengths) // per_row
    size = size.view(batch, per_row)
    starts = size.cumsum(1) - size  # (B, P)
    j = torch.arange(row_length + 1, device=device)[None, :].expand(batch, -1)  # token positions of a row
    which = torch.searchsorted(size.cumsum(1), j, right=True).clamp(max=per_row - 1)  # example holding j
    within = j - starts.gather(1, which)
    rows = (torch.arange(batch, device=device)[:, None] * per_row + which)  # (B, row_length + 1)
    tokens = full[rows, within.clamp(max=full.shape[1] - 1)]
    # input j is scored when it predicts a token of the same example, and that example ends inside the row
    inside = (within[:, :-1] < size.gather(1, which[:, :-1]) - 1) & (
        (starts + size).gather(1, which[:, :-1]) <= row_length + 1)
    mask = examples.mask[rows[:, :-1], within[:, :-1].clamp(max=examples.mask.shape[1] - 1)] & inside
    return Batch(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=mask)


@register_task("copy")
class CopyTask(Task):
    """Copy a random string after a separator; ``variable`` or ``fixed`` length protocol."""

    name = "copy"
    training_options = ("packed_length",)

    def __init__(self, protocol: str = "variable", alphabet_size: int = 26, min_len: int = 1,
                 max_train_len: int = 32, eval_lengths: tuple[int, ...] = (8, 16, 32, 64, 128),
                 eval_samples: int = 256, eval_seed: int = 1234, eos: bool = False,
                 packed_length: int | None = None):
        require(protocol in ("variable", "fixed"), "protocol", f"must be 'variable' or 'fixed', got {protocol!r}")
        require(alphabet_size >= 2, "alphabet_size", f"must be >= 2 to make copying non-trivial, got {alphabet_size}")
        require(min_len >= 1, "min_len", f"must be >= 1, got {min_len}")
        require(max_train_len >= min_len, "max_train_len",
                f"must be >= min_len ({min_len}), got {max_train_len}")
        eval_lengths = tuple(int(x) for x in eval_lengths)
        require(len(eval_lengths) > 0 and min(eval_lengths) >= 1, "eval_lengths",
                f"must be a non-empty list of lengths >= 1, got {list(eval_lengths)}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        require(packed_length is None or eos, "packed_length", "packing needs eos: true (the EOS ends each example)")
        require(packed_length is None or packed_length >= 2 * max_train_len + 3, "packed_length",
                f"must be null or >= 2 max_train_len + 3 = {2 * max_train_len + 3} (one whole example), got {packed_length}")
        self.eos_token = alphabet_size + 3 if eos else None
        self.packed_length = packed_length
        self.protocol, self.alphabet_size = protocol, alphabet_size
        self.min_len = max_train_len if protocol == "fixed" else min_len
        self.max_train_len = max_train_len
        self.eval_lengths, self.eval_samples, self.eval_seed = eval_lengths, eval_samples, eval_seed
        self.bos, self.sep, self.pad = alphabet_size, alphabet_size + 1, alphabet_size + 2
        self.vocab_size = alphabet_size + 3 + bool(eos)

    def max_input_len(self) -> int:
        longest = 2 * max(self.max_train_len, *self.eval_lengths) + 1 + (self.eos_token is not None)
        return max(longest, self.packed_length or 0)

    def max_train_input_len(self) -> int:
        return 2 * self.max_train_len + 1

    def _sample(self, lengths: torch.Tensor, generator: torch.Generator, width: int | None = None) -> Batch:
        width = int(lengths.max()) if width is None else width
        symbols = torch.randint(0, self.alphabet_size, (len(lengths), width), generator=generator,
                                device=generator.device)
        return copy_sequences(symbols, lengths, self.bos, self.sep, self.pad, self.eos_token)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.packed_length is not None:  # enough examples that the shortest ones fill a row
            per_row = math.ceil((self.packed_length + 1) / (2 * self.min_len + 3))
            lengths = torch.randint(self.min_len, self.max_train_len + 1, (batch_size * per_row,), generator=generator,
                                    device=generator.device)
            examples = self._sample(lengths, generator, width=self.max_train_len)
            return pack_examples(examples, lengths, per_row, self.packed_length)
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
                "protocol": self.protocol, "eos": self.eos_token is not None, "packed_length": self.packed_length,
                "string_bits": {f"L{n}": string_bits(n, self.alphabet_size) for n in self.eval_lengths}}
