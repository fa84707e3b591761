"""Noisy in-context recall, as MAD generates it (Poli et al. 2024; mad-lab's
``generate_noisy_in_context_recall_instance``, multi-query as in MAD's benchmark).

A string of ``seq_len`` tokens (even) is ``seq_len / 2 - 1`` two-token slots, then the probe pair.
Ids: keys ``[0, S/2)``, values ``[S/2, S)`` and noise ``[S, vocab_size)``, ``S = vocab_size -
noise_vocab_size``. Each slot is, with probability ``frac_noise``, two uniform noise tokens, otherwise
a pair ``k v``: ``k`` uniform over the keys (with repetition), ``v`` the value of ``k`` in this
example (drawn uniformly over the values when ``k`` first appears; values may repeat across keys).
One slot, uniform, is always a pair. The probe pair is a key drawn uniformly among those that
appeared, and its value. ``frac_noise 0`` (``noise_vocab_size 0``) is MAD's plain in-context recall.

As in MAD the model reads the string's first ``seq_len - 1`` tokens and the target at position
``t`` is token ``t + 1``. Evaluation scores (``mask``) the positions of a key whose value it must
recall: a pair's key seen in an earlier pair, and the probe key (the last position); training scores
every position (MAD trains on the whole shifted sequence). Metric: ``accuracy``, the share of scored
positions where the argmax is the value, per example and averaged over examples (MAD pools every
scored token of its test set into torchmetrics' class-averaged accuracy).

Training examples come from a fixed set of ``num_train_examples`` drawn with ``train_seed`` (MAD's
training-set-size axis); ``null`` draws fresh examples every step. One evaluation set ``test`` of
``eval_samples`` examples (MAD: 1,280). Defaults are MAD's baseline (vocabulary 32 of which 16 noise,
length 128, 20% noise, 12,800 training examples). Difference from MAD: MAD guarantees a pair in a
slot drawn among all ``seq_len / 2`` (the probe's included, so with probability ``2 / seq_len`` no
slot is guaranteed); here the guaranteed slot lies among the context slots.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, FixedTrainingSet, Task, masked_token_accuracy, require


def noisy_recall_strings(batch: int, seq_len: int, vocab_size: int, noise_vocab_size: int, frac_noise: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole strings ``(batch, seq_len)`` and ``recalled (batch, seq_len)``: True at every key whose value
    the next position holds and which appeared in an earlier pair (the probe key included)."""
    device = generator.device
    symbols = vocab_size - noise_vocab_size
    n_keys, slots = symbols // 2, seq_len // 2 - 1
    keys = torch.randint(0, n_keys, (batch, slots), generator=generator, device=device)
    table = torch.randint(n_keys, symbols, (batch, n_keys), generator=generator, device=device)  # each key's value
    values = table.gather(1, keys)
    noise = torch.rand(batch, slots, generator=generator, device=device) < frac_noise
    keep = torch.randint(0, slots, (batch, 1), generator=generator, device=device)
    noise.scatter_(1, keep, False)  # at least one pair
    pairs = torch.stack([keys, values], -1)  # (B, slots, 2)
    if frac_noise > 0:
        noise_tokens = torch.randint(symbols, vocab_size, (batch, slots, 2), generator=generator, device=device)
        pairs = torch.where(noise[..., None], noise_tokens, pairs)
    slot = torch.arange(slots, device=device).expand(batch, slots)
    first = torch.full((batch, n_keys), slots, device=device).scatter_reduce(
        1, keys, torch.where(noise, slots, slot), "amin")  # first pair slot of each key; slots if none
    repeated = ~noise & (slot > first.gather(1, keys))
    probe = torch.multinomial((first < slots).float(), 1, generator=generator)  # (B, 1) among the keys shown
    strings = torch.cat([pairs.flatten(1), probe, table.gather(1, probe)], 1)
    recalled = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    recalled[:, 0:2 * slots:2] = repeated
    recalled[:, 2 * slots] = True
    return strings, recalled


def shifted(strings: torch.Tensor, scored: torch.Tensor, score_all: bool) -> Batch:
    """Next-token examples from whole strings ``(batch, n + 1)``: inputs ``strings[:, :-1]``, targets
    ``strings[:, 1:]``, mask ``scored (batch, n)`` (True where the target is scored) or, with
    ``score_all``, every position. Unscored targets hold 0."""
    inputs, targets = strings[:, :-1], strings[:, 1:]
    mask = torch.ones_like(inputs, dtype=torch.bool) if score_all else scored.clone()
    return Batch(inputs=inputs.contiguous(), targets=torch.where(mask, targets, 0), mask=mask)


@register_task("noisy_recall")
class NoisyRecallTask(Task):
    """Recall each repeated key's value in a stream of key-value pairs and noise."""

    name = "noisy_recall"
    training_options = ("num_train_examples", "train_seed")

    def __init__(self, vocab_size: int = 32, seq_len: int = 128, noise_vocab_size: int = 16, frac_noise: float = 0.2,
                 num_train_examples: int | None = 12_800, train_seed: int = 12345, eval_samples: int = 1280,
                 eval_seed: int = 1234):
        require(0 <= noise_vocab_size, "noise_vocab_size", f"must be >= 0, got {noise_vocab_size}")
        require(vocab_size - noise_vocab_size >= 2, "vocab_size",
                f"must leave at least 2 key/value ids beside the {noise_vocab_size} noise ids, got {vocab_size}")
        require(0 <= frac_noise < 1, "frac_noise", f"must be in [0, 1), got {frac_noise}")
        require(frac_noise == 0 or noise_vocab_size > 0, "noise_vocab_size",
                f"must be > 0 when frac_noise > 0 (got frac_noise {frac_noise})")
        require(seq_len >= 4 and seq_len % 2 == 0, "seq_len", f"must be even and >= 4 (pairs, then the probe), got {seq_len}")
        require(num_train_examples is None or num_train_examples >= 1, "num_train_examples",
                f"must be null (fresh examples every step) or >= 1, got {num_train_examples}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.noise_vocab_size, self.frac_noise = noise_vocab_size, float(frac_noise)
        self.num_train_examples, self.train_seed = num_train_examples, train_seed
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.training_set = None if num_train_examples is None else FixedTrainingSet(
            lambda count, g: self._sample(count, g, score_all=True), num_train_examples, train_seed)

    def max_input_len(self) -> int:
        return self.seq_len - 1

    def _sample(self, batch: int, generator: torch.Generator, score_all: bool) -> Batch:
        strings, recalled = noisy_recall_strings(batch, self.seq_len, self.vocab_size, self.noise_vocab_size,
                                                 self.frac_noise, generator)
        return shifted(strings, recalled[:, :-1], score_all)  # a key's target is the value after it

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.training_set is not None:
            return self.training_set.draw(batch_size, generator)
        return self._sample(batch_size, generator, score_all=True)

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + self.seq_len)
        return {"test": self._sample(self.eval_samples, generator, score_all=False)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"accuracy": masked_token_accuracy(logits, batch)["accuracy"]}

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "noise_vocab_size": self.noise_vocab_size,
                "frac_noise": self.frac_noise, "num_train_examples": self.num_train_examples}
