"""Fuzzy in-context recall, as MAD generates it (Poli et al. 2024; mad-lab's
``generate_fuzzy_in_context_recall_instance``, multi-query as in MAD's benchmark).

Keys and values are motifs: tuples of distinct adjacent tokens, keys of 1 to ``k_motif_size`` ids
from ``[0, S/2)``, values of 1 to ``v_motif_size`` ids from ``[S/2, S)``, ``S = vocab_size - 1 -
noise_vocab_size``; noise ids ``[S, vocab_size - 1)``, padding ``vocab_size - 1``. One example:

- a probe pair (key and value motifs, each of a uniform size, uniform over the motifs of that size);
- a stream of pairs built left to right until it reaches ``seq_len - |probe| - k_motif_size -
  v_motif_size`` tokens: each pair's key size and value size are uniform, its key uniform among the
  motifs of that size; a key seen before keeps its value (the probe key its probe value), a new one
  gets a fresh uniform value motif; with probability ``frac_noise`` a pair's place holds uniform
  noise tokens instead; once the stream reaches a uniform position, the probe pair goes in;
- then the probe pair again, and padding in front up to ``seq_len + 1`` tokens.

Evaluation examples draw every key (the probe's too) at ``k_motif_size`` tokens, as MAD's test set
does; training examples draw key sizes uniformly. As in MAD the model reads the first ``seq_len``
tokens and the target at position ``t`` is token ``t + 1``; evaluation scores the positions whose
next token belongs to the value of a key seen before (every token of the final probe value among
them), training every position (MAD trains on the whole shifted sequence, padding included).
Metric: ``accuracy``, the share of scored positions where the argmax is right, per example and
averaged over examples (MAD pools the scored tokens of its test set into torchmetrics'
class-averaged accuracy). Fixed training set of ``num_train_examples`` (``train_seed``) as in
noisy_recall; evaluation set ``test``. Defaults are MAD's baseline (vocabulary 16, length 128, motifs
up to 3 tokens, no noise, 12,800 training examples).

Difference from MAD: MAD inserts the probe pair once the stream reaches a position drawn uniformly
in ``[0, seq_len - 2 |probe|)``, which the stream can end before reaching, leaving the final probe
with no earlier occurrence (a value no model can recall); here that position is drawn in ``[0,
seq_len - |probe| - 2 (k_motif_size + v_motif_size)]``, which the stream always reaches.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, FixedTrainingSet, Task, masked_token_accuracy, require
from tasks.noisy_recall import shifted


class Uniforms:
    """Uniform draws in ``[0, 1)`` from ``generator``, fetched in blocks (sequential example building
    without one generator call per draw); the sequence depends on the generator alone."""

    def __init__(self, generator: torch.Generator, block: int = 8192):
        self.generator, self.block, self.values, self.next = generator, block, [], 0

    def uniform(self) -> float:
        if self.next == len(self.values):
            self.values = torch.rand(self.block, generator=self.generator, dtype=torch.float64,
                                     device=self.generator.device).tolist()
            self.next = 0
        self.next += 1
        return self.values[self.next - 1]

    def integer(self, low: int, high: int) -> int:
        """Uniform in ``[low, high)``."""
        return low + min(int(self.uniform() * (high - low)), high - low - 1)

    def motif(self, low: int, high: int, size: int) -> tuple[int, ...]:
        """``size`` distinct ids of ``[low, high)`` in a uniform order (uniform over ordered tuples)."""
        pool = list(range(low, high))
        return tuple(pool.pop(self.integer(0, len(pool))) for _ in range(size))


def fuzzy_recall_string(draw: Uniforms, seq_len: int, vocab_size: int, k_motif_size: int, v_motif_size: int,
                        noise_vocab_size: int, frac_noise: float, test: bool) -> tuple[list[int], list[bool]]:
    """One example: the whole string of ``seq_len + 1`` tokens and, per token, whether it belongs to the
    value of a key seen before (the scored tokens)."""
    symbols = vocab_size - 1 - noise_vocab_size
    half, pad = symbols // 2, vocab_size - 1
    key_size = (lambda: k_motif_size) if test else (lambda: draw.integer(1, k_motif_size + 1))
    probe_key = draw.motif(0, half, key_size())
    probe_value = draw.motif(half, symbols, draw.integer(1, v_motif_size + 1))
    probe_len = len(probe_key) + len(probe_value)
    stop = seq_len - probe_len - (k_motif_size + v_motif_size)
    insert_at = draw.integer(0, stop - (k_motif_size + v_motif_size) + 1)
    tokens: list[int] = []
    scored: list[bool] = []
    values: dict[tuple, tuple] = {}
    inserted = False
    while len(tokens) < stop:
        k_size, v_size = key_size(), draw.integer(1, v_motif_size + 1)
        if len(tokens) >= insert_at and not inserted:
            tokens += probe_key + probe_value
            scored += [False] * probe_len
            values[probe_key], inserted = probe_value, True
            continue
        if frac_noise > 0 and draw.uniform() < frac_noise:
            tokens += [draw.integer(symbols, symbols + noise_vocab_size) for _ in range(k_size + v_size)]
            scored += [False] * (k_size + v_size)
            continue
        key = draw.motif(0, half, k_size)
        seen = key in values
        if key == probe_key:
            value, inserted = probe_value, True
        elif seen:
            value = values[key]
        else:
            value = draw.motif(half, symbols, v_size)
        values[key] = value
        tokens += key + value
        scored += [False] * len(key) + [seen] * len(value)
    tokens += probe_key + probe_value
    scored += [False] * len(probe_key) + [True] * len(probe_value)
    padding = seq_len + 1 - len(tokens)
    return [pad] * padding + tokens, [False] * padding + scored


@register_task("fuzzy_recall")
class FuzzyRecallTask(Task):
    """Recall multi-token values of multi-token keys seen before in the sequence."""

    name = "fuzzy_recall"
    training_options = ("num_train_examples", "train_seed")

    def __init__(self, vocab_size: int = 16, seq_len: int = 128, k_motif_size: int = 3, v_motif_size: int = 3,
                 noise_vocab_size: int = 0, frac_noise: float = 0.0, num_train_examples: int | None = 12_800,
                 train_seed: int = 12345, eval_samples: int = 1280, eval_seed: int = 1234):
        require(k_motif_size >= 1, "k_motif_size", f"must be >= 1, got {k_motif_size}")
        require(v_motif_size >= 1, "v_motif_size", f"must be >= 1, got {v_motif_size}")
        require(noise_vocab_size >= 0, "noise_vocab_size", f"must be >= 0, got {noise_vocab_size}")
        symbols = vocab_size - 1 - noise_vocab_size
        require(symbols // 2 >= k_motif_size and symbols - symbols // 2 >= v_motif_size, "vocab_size",
                f"{vocab_size} leaves {symbols // 2} key ids and {symbols - symbols // 2} value ids (beside padding "
                f"and {noise_vocab_size} noise ids); motifs of distinct ids need >= k_motif_size = {k_motif_size} "
                f"and >= v_motif_size = {v_motif_size}")
        require(0 <= frac_noise < 1, "frac_noise", f"must be in [0, 1), got {frac_noise}")
        require(frac_noise == 0 or noise_vocab_size > 0, "noise_vocab_size",
                f"must be > 0 when frac_noise > 0 (got frac_noise {frac_noise})")
        least = 4 * (k_motif_size + v_motif_size)
        require(seq_len >= least, "seq_len", f"must be >= 4 * (k_motif_size + v_motif_size) = {least}, got {seq_len}")
        require(num_train_examples is None or num_train_examples >= 1, "num_train_examples",
                f"must be null (fresh examples every step) or >= 1, got {num_train_examples}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.k_motif_size, self.v_motif_size = k_motif_size, v_motif_size
        self.noise_vocab_size, self.frac_noise = noise_vocab_size, float(frac_noise)
        self.num_train_examples, self.train_seed = num_train_examples, train_seed
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.training_set = None if num_train_examples is None else FixedTrainingSet(
            lambda count, g: self._sample(count, g, test=False), num_train_examples, train_seed)

    def max_input_len(self) -> int:
        return self.seq_len

    def _sample(self, batch: int, generator: torch.Generator, test: bool) -> Batch:
        draw = Uniforms(generator)
        rows = [fuzzy_recall_string(draw, self.seq_len, self.vocab_size, self.k_motif_size, self.v_motif_size,
                                    self.noise_vocab_size, self.frac_noise, test) for _ in range(batch)]
        strings = torch.tensor([r[0] for r in rows], dtype=torch.long, device=generator.device)
        scored = torch.tensor([r[1] for r in rows], dtype=torch.bool, device=generator.device)
        return shifted(strings, scored[:, 1:], score_all=not test)  # position t predicts token t + 1

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.training_set is not None:
            return self.training_set.draw(batch_size, generator)
        return self._sample(batch_size, generator, test=False)

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + self.seq_len)
        return {"test": self._sample(self.eval_samples, generator, test=True)}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"accuracy": masked_token_accuracy(logits, batch)["accuracy"]}

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "k_motif_size": self.k_motif_size,
                "v_motif_size": self.v_motif_size, "frac_noise": self.frac_noise,
                "num_train_examples": self.num_train_examples}
