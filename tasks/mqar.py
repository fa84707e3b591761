"""Multi-query associative recall (MQAR), as Zoology generates it (Arora et al. 2023).

One example of ``seq_len`` tokens over a vocabulary of ``vocab_size`` ids:

- keys come from ``[1, vocab_size // 2)`` and values from ``[vocab_size // 2, vocab_size)``, each
  drawn without replacement within the example;
- the first ``2 * num_kv_pairs`` tokens are the pairs ``k_1 v_1 k_2 v_2 ...``;
- every key is queried once more after them: key ``i`` sits at ``2 * num_kv_pairs + 2 * g_i``,
  with distinct gaps ``g_i`` in ``[0, space)``, ``space = (seq_len - 2 * num_kv_pairs) // 2``, drawn
  without replacement with probability ``∝ a * j ** (a - 1)`` for ``j = g + 1`` (a power law,
  ``power_a = 0.01``: queries cluster close after the pairs, as repeated bigrams do in text);
- every other position holds a uniformly random id in ``[0, vocab_size)`` (``random_non_queries``;
  otherwise 0);
- the target at a query position is the queried key's value; nothing else is scored.

Training draws each batch from one (seq_len, num_kv_pairs) setting of ``train_settings`` with
probability proportional to ``train_weights`` (Zoology's example counts), as Zoology's loader
never mixes settings within a batch. Evaluation covers ``test_settings`` with ``eval_samples``
examples each. The metric is the fraction of queries whose value is the argmax.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, masked_token_accuracy, require


def power_law_weights(space: int, power_a: float) -> torch.Tensor:
    """Zoology's gap distribution over ``[0, space)``: ``p(g) ∝ a (g + 1) ** (a - 1)``, shape ``(space,)``."""
    j = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * j ** (power_a - 1)
    return p / p.sum()


def sample_without_replacement(batch: int, low: int, high: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, k)`` distinct ids per row, uniform over ordered k-subsets of ``[low, high)``."""
    scores = torch.rand(batch, high - low, generator=generator, device=generator.device)
    return scores.topk(k, dim=1).indices + low


def assemble_mqar(keys: torch.Tensor, values: torch.Tensor, gaps: torch.Tensor, filler: torch.Tensor) -> Batch:
    """Lay out MQAR examples: ``keys``, ``values``, ``gaps (batch, K)`` and ``filler (batch, seq_len)`` (the
    tokens of every position that holds no pair and no query) -> inputs, targets, mask ``(batch, seq_len)``."""
    context = 2 * keys.shape[1]
    inputs = filler.clone()
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_pos = context + 2 * gaps  # query i asks for key i
    inputs.scatter_(1, query_pos, keys)
    targets = torch.zeros_like(inputs).scatter_(1, query_pos, values)
    mask = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device).scatter_(1, query_pos, True)
    return Batch(inputs=inputs, targets=targets, mask=mask)


def mqar_batch(batch: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float,
               random_non_queries: bool, generator: torch.Generator) -> Batch:
    """``batch`` MQAR examples: inputs, targets and mask ``(batch, seq_len)`` on ``generator.device``."""
    device = generator.device
    half = vocab_size // 2
    keys = sample_without_replacement(batch, 1, half, num_kv_pairs, generator)  # (B, K)
    values = sample_without_replacement(batch, half, vocab_size, num_kv_pairs, generator)  # (B, K)
    space = (seq_len - 2 * num_kv_pairs) // 2
    weights = power_law_weights(space, power_a).to(device=device, dtype=torch.float32)
    gaps = torch.multinomial(weights.expand(batch, space), num_kv_pairs, replacement=False, generator=generator)
    if random_non_queries:
        filler = torch.randint(0, vocab_size, (batch, seq_len), generator=generator, device=device)
    else:
        filler = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    return assemble_mqar(keys, values, gaps, filler)


def setting_name(seq_len: int, num_kv_pairs: int) -> str:
    return f"L{seq_len}-kv{num_kv_pairs}"


def parse_setting(name: str) -> tuple[int, int]:
    length, kv = name.removeprefix("L").split("-kv")
    return int(length), int(kv)


@register_task("mqar")
class MQARTask(Task):
    """Zoology's MQAR: train on a mixture of (seq_len, num_kv_pairs) settings, test on a grid."""

    name = "mqar"

    def __init__(self, vocab_size: int = 8192, power_a: float = 0.01, random_non_queries: bool = True,
                 train_settings: tuple = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64)),
                 train_weights: tuple = (100_000, 20_000, 20_000, 20_000, 20_000),
                 test_settings: tuple = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256)),
                 eval_samples: int = 1000, eval_seed: int = 1234):
        train_settings = [tuple(int(v) for v in s) for s in train_settings]
        test_settings = [tuple(int(v) for v in s) for s in test_settings]
        require(len(train_settings) > 0 and all(len(s) == 2 for s in train_settings), "train_settings",
                f"must be a non-empty list of [seq_len, num_kv_pairs] pairs, got {train_settings}")
        require(len(test_settings) > 0 and all(len(s) == 2 for s in test_settings), "test_settings",
                f"must be a non-empty list of [seq_len, num_kv_pairs] pairs, got {test_settings}")
        require(len(train_weights) == len(train_settings) and all(w > 0 for w in train_weights), "train_weights",
                f"must give one positive weight per training setting ({len(train_settings)}), got {list(train_weights)}")
        require(0 < power_a <= 1, "power_a", f"must be in (0, 1] (1 = uniform gaps), got {power_a}")
        for field, settings in (("train_settings", train_settings), ("test_settings", test_settings)):
            for seq_len, kv in settings:
                require(kv >= 1, field, f"num_kv_pairs must be >= 1, got {kv} in [{seq_len}, {kv}]")
                require(seq_len % 2 == 0, field, f"seq_len must be even (queries sit at even offsets), got {seq_len}")
                require(2 * kv <= seq_len, field,
                        f"2 * num_kv_pairs = {2 * kv} exceeds seq_len = {seq_len}: the pairs alone do not fit")
                require(4 * kv <= seq_len, field,
                        f"[{seq_len}, {kv}] leaves {(seq_len - 2 * kv) // 2} query slots for {kv} queries "
                        f"(needs 4 * num_kv_pairs <= seq_len)")
                require(kv <= vocab_size // 2 - 1, field,
                        f"num_kv_pairs = {kv} exceeds the {vocab_size // 2 - 1} distinct keys of vocab_size {vocab_size}")
                require(vocab_size > seq_len, "vocab_size",
                        f"must exceed every seq_len (Zoology's constraint), got {vocab_size} <= {seq_len}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.vocab_size, self.power_a, self.random_non_queries = vocab_size, power_a, random_non_queries
        self.train_settings, self.test_settings = train_settings, test_settings
        self.train_weights = torch.tensor([float(w) for w in train_weights])
        self.eval_samples, self.eval_seed = eval_samples, eval_seed

    def _setting_generator(self, generator: torch.Generator) -> torch.Generator:
        """Where each step's (seq_len, num_kv_pairs) is drawn: the data generator itself on CPU; on a
        GPU a CPU generator seeded from it, so that choosing a shape never waits for the device."""
        if generator.device.type == "cpu":
            return generator
        if getattr(self, "_settings_for", None) is not generator:
            self._settings_for = generator
            self._settings_gen = torch.Generator().manual_seed(generator.initial_seed())
        return self._settings_gen

    def max_input_len(self) -> int:
        return max(s[0] for s in self.train_settings + self.test_settings)

    def max_train_input_len(self) -> int:
        return max(s[0] for s in self.train_settings)

    def max_scored_positions(self, length: int) -> int | None:
        """Every key is queried once: a batch of ``seq_len <= length`` scores ``num_kv_pairs`` positions."""
        return max((kv for n, kv in self.train_settings if n <= length), default=0)

    def _batch(self, batch: int, seq_len: int, kv: int, generator: torch.Generator) -> Batch:
        return mqar_batch(batch, seq_len, kv, self.vocab_size, self.power_a, self.random_non_queries, generator)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        index = int(torch.multinomial(self.train_weights, 1, generator=self._setting_generator(generator)))
        seq_len, kv = self.train_settings[index]
        return self._batch(batch_size, seq_len, kv, generator)

    def eval_sets(self) -> dict[str, Batch]:
        sets = {}
        for seq_len, kv in self.test_settings:
            generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + seq_len * 1_009 + kv)
            sets[setting_name(seq_len, kv)] = self._batch(self.eval_samples, seq_len, kv, generator)
        return sets

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"accuracy": masked_token_accuracy(logits, batch)["accuracy"]}

    def in_distribution(self, set_name: str) -> bool:
        return parse_setting(set_name) in self.train_settings

    def summary(self) -> dict:
        return {"train_settings": [list(s) for s in self.train_settings],
                "train_weights": self.train_weights.tolist(),
                "test_settings": [list(s) for s in self.test_settings], "vocab_size": self.vocab_size}
