"""In-context language learning (Akyürek et al. 2024, RegBench): learn a regular language from
examples in the prompt.

Per sequence a random probabilistic finite automaton, sampled as RegBench's generator does:
``n`` states uniform in ``[min_states, max_states]``, an alphabet of ``c`` symbols uniform in
``[min_alphabet, max_alphabet]`` drawn from the ``num_symbols`` symbols of the vocabulary; each
state gets ``m`` outgoing edges, ``m`` uniform in ``[1, max_transitions]``, labelled with distinct
symbols of the alphabet and leading to distinct other states (no self-loops). State 0 is initial,
every state accepts, and the next symbol is uniform over the current state's edges.

The sequence shows ``K`` strings (``K`` uniform in ``[min_strings, max_strings]``, each of length
uniform in ``[1, max_string_len]``) sampled from the automaton and joined by the separator, cut
to ``max_len + 1`` tokens; the model predicts every next symbol (positions whose next token is the
separator, and the padding, are not scored, as in RegBench).

Metrics (per example, averaged over its scored positions): ``accuracy``, whether the argmax
token is a symbol the automaton allows next; ``tvd``, the total-variation distance between the
model's next-token distribution (softmax over the whole vocabulary) and the automaton's.

Token ids: symbols ``0..num_symbols-1``, separator ``num_symbols``, padding ``num_symbols + 1``.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, require


def uniform_int(low: int, high: int, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` (inclusive) of ``shape`` on ``generator.device``."""
    return torch.randint(low, high + 1, shape, generator=generator, device=generator.device)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last dimension, 0 for the largest: ties broken by position."""
    return scores.argsort(-1, descending=True).argsort(-1)


def sample_automata(batch: int, num_symbols: int, min_states: int, max_states: int, min_alphabet: int,
                    max_alphabet: int, max_transitions: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random automata as a transition table ``next_state (batch, max_states, num_symbols)`` (-1: no
    edge) and their number of states ``(batch,)``; rows of states ``>= n`` are all -1."""
    device = generator.device
    S, V = max_states, num_symbols
    n_states = uniform_int(min_states, max_states, (batch,), generator)
    n_alphabet = uniform_int(min_alphabet, max_alphabet, (batch,), generator)
    in_alphabet = ranks(torch.rand(batch, V, generator=generator, device=device)) < n_alphabet[:, None]  # (B, V)
    n_edges = uniform_int(1, max_transitions, (batch, S), generator)  # (B, S)
    # edge symbols: the n_edges highest random scores among the alphabet, per state
    symbol_scores = torch.rand(batch, S, V, generator=generator, device=device)
    symbol_rank = ranks(torch.where(in_alphabet[:, None, :], symbol_scores, -1.0))  # (B, S, V)
    # edge targets: distinct states other than the source, among the n_states in use
    state = torch.arange(S, device=device)
    valid_target = (state[None, None, :] < n_states[:, None, None]) & (state[None, :, None] != state[None, None, :])
    target_scores = torch.where(valid_target, torch.rand(batch, S, S, generator=generator, device=device), -1.0)
    target_order = target_scores.argsort(-1, descending=True)  # (B, S, S): best targets first
    in_use = state[None, :, None] < n_states[:, None, None]  # (B, S, 1)
    has_edge = (symbol_rank < n_edges[:, :, None]) & in_use
    next_state = target_order.gather(2, symbol_rank.clamp(max=S - 1))
    return torch.where(has_edge, next_state, -1), n_states


def sample_strings(next_state: torch.Tensor, n_strings: torch.Tensor, lengths: torch.Tensor, total: int,
                   separator: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk each automaton: ``n_strings (batch,)`` strings of ``lengths (batch, max_strings)`` joined by
    ``separator``, cut or padded to ``total`` tokens.

    Returns ``tokens (batch, total)`` and ``allowed (batch, total, num_symbols)``: the symbols the
    automaton allows at each position (the support of the next-symbol distribution; all False at
    separators and padding).
    """
    batch, max_strings = lengths.shape
    V = next_state.shape[-1]
    device = next_state.device
    used = torch.arange(max_strings, device=device)[None, :] < n_strings[:, None]
    lengths = torch.where(used, lengths, 0)
    ends = (lengths + 1).cumsum(1) - 1  # the separator after string j sits at ends[j]
    is_sep = torch.zeros(batch, total + 1, dtype=torch.bool, device=device)
    last = torch.arange(max_strings, device=device)[None, :] < (n_strings[:, None] - 1)
    is_sep.scatter_(1, torch.where(last, ends, total).clamp(max=total), True)
    is_sep = is_sep[:, :total]
    length_total = lengths.sum(1) + n_strings - 1  # tokens before padding
    is_pad = torch.arange(total, device=device)[None, :] >= length_total[:, None]

    rows = torch.arange(batch, device=device)
    current = torch.zeros(batch, dtype=torch.long, device=device)
    tokens = torch.empty(batch, total, dtype=torch.long, device=device)
    allowed = torch.zeros(batch, total, V, dtype=torch.bool, device=device)
    for t in range(total):
        edges = next_state[rows, current]  # (B, V)
        ok = edges >= 0
        scores = torch.where(ok, torch.rand(batch, V, generator=generator, device=device), -1.0)
        symbol = scores.argmax(-1)  # uniform over the allowed symbols
        at_sep, at_pad = is_sep[:, t], is_pad[:, t]
        tokens[:, t] = torch.where(at_pad, pad, torch.where(at_sep, separator, symbol))
        allowed[:, t] = ok & ~(at_sep | at_pad)[:, None]
        current = torch.where(at_sep | at_pad, 0, edges.gather(1, symbol[:, None])[:, 0])
    return tokens, allowed


@register_task("icl_language")
class ICLLanguageTask(Task):
    """Predict the next symbol of strings from a fresh random automaton shown only in context."""

    name = "icl_language"

    def __init__(self, num_symbols: int = 18, min_states: int = 4, max_states: int = 12, min_alphabet: int = 4,
                 max_alphabet: int = 18, max_transitions: int = 3, min_strings: int = 10, max_strings: int = 19,
                 max_string_len: int = 49, max_len: int = 512, eval_samples: int = 500, eval_seed: int = 1234):
        require(num_symbols >= 2, "num_symbols", f"must be >= 2, got {num_symbols}")
        require(2 <= min_states <= max_states, "min_states",
                f"must be >= 2 and <= max_states ({max_states}), got {min_states}")
        require(1 <= min_alphabet <= max_alphabet, "min_alphabet",
                f"must be >= 1 and <= max_alphabet ({max_alphabet}), got {min_alphabet}")
        require(max_alphabet <= num_symbols, "max_alphabet",
                f"an automaton alphabet of {max_alphabet} symbols exceeds the vocabulary's num_symbols = {num_symbols}")
        require(1 <= max_transitions <= min_alphabet, "max_transitions",
                f"must be >= 1 and <= min_alphabet ({min_alphabet}): a state's edges carry distinct symbols, got {max_transitions}")
        require(max_transitions <= min_states - 1, "max_transitions",
                f"must be <= min_states - 1 ({min_states - 1}): a state's edges go to distinct other states, "
                f"got {max_transitions}")
        require(1 <= min_strings <= max_strings, "min_strings",
                f"must be >= 1 and <= max_strings ({max_strings}), got {min_strings}")
        require(max_string_len >= 1, "max_string_len", f"must be >= 1, got {max_string_len}")
        require(max_len >= 2, "max_len", f"must be >= 2, got {max_len}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.num_symbols = num_symbols
        self.states, self.alphabet = (min_states, max_states), (min_alphabet, max_alphabet)
        self.max_transitions = max_transitions
        self.strings, self.max_string_len = (min_strings, max_strings), max_string_len
        self.max_len, self.eval_samples, self.eval_seed = max_len, eval_samples, eval_seed
        self.separator, self.pad = num_symbols, num_symbols + 1
        self.vocab_size = num_symbols + 2

    def max_input_len(self) -> int:
        return self.max_len

    def _sample(self, batch: int, generator: torch.Generator) -> Batch:
        next_state, _ = sample_automata(batch, self.num_symbols, *self.states, *self.alphabet, self.max_transitions,
                                        generator)
        n_strings = uniform_int(*self.strings, (batch,), generator)
        lengths = uniform_int(1, self.max_string_len, (batch, self.strings[1]), generator)
        tokens, allowed = sample_strings(next_state, n_strings, lengths, self.max_len + 1, self.separator, self.pad,
                                         generator)
        targets = tokens[:, 1:]
        return Batch(inputs=tokens[:, :-1], targets=targets, mask=targets < self.num_symbols,
                     extras={"allowed": allowed[:, 1:]})

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator)

    def eval_sets(self) -> dict[str, Batch]:
        return {"test": self._sample(self.eval_samples, torch.Generator().manual_seed(self.eval_seed))}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        allowed = batch.extras["allowed"]  # (B, n, num_symbols)
        scored = batch.mask.sum(1).clamp(min=1)
        prediction = logits.argmax(-1)
        in_support = allowed.gather(2, prediction.clamp(max=self.num_symbols - 1)[..., None])[..., 0]
        correct = in_support & (prediction < self.num_symbols) & batch.mask
        p_model = logits.float().softmax(-1)  # (B, n, vocab)
        p_true = allowed.float() / allowed.sum(-1, keepdim=True).clamp(min=1)
        diff = (p_model[..., : self.num_symbols] - p_true).abs().sum(-1) + p_model[..., self.num_symbols:].sum(-1)
        tvd = 0.5 * diff * batch.mask
        return {"accuracy": correct.sum(1) / scored, "tvd": tvd.sum(1) / scored}

    def summary(self) -> dict:
        return {"num_symbols": self.num_symbols, "states": list(self.states), "alphabet": list(self.alphabet),
                "max_transitions": self.max_transitions, "strings": list(self.strings),
                "max_string_len": self.max_string_len, "max_len": self.max_len}
