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
separator, and the padding, are not scored, as in RegBench). ``max_len: null`` cuts nothing (the
longest sequence the generator makes, ``max_strings (max_string_len + 1) - 1`` tokens; RegBench
cuts at 4,096 characters, which its sequences never reach).

Training automata: with ``exclude_eval_automata`` (RegBench's rule) a training automaton whose
minimised form equals one of the evaluation set's is redrawn (``automaton_key``: the minimal
DFA, numbered in breadth-first order from the start state; every state accepts and the next
symbol is uniform over a state's edges, so equal keys mean equal string distributions). With
``train_automata: N`` training draws its automata from a fixed pool of N (built once from
``eval_seed + 1``, evaluation automata excluded), as RegBench's training-set-size curves do;
``null`` draws a fresh automaton per sequence.

Metrics (per example, averaged over its scored positions): ``accuracy``, whether the argmax
token is a symbol the automaton allows next; ``tvd``, the total-variation distance between the
model's next-token distribution (softmax over the whole vocabulary) and the automaton's, and
``l1 = 2 tvd``, the L1 distance RegBench logs. RegBench averages accuracy over all tokens of the
set, not per sequence: ``correct_tokens`` and ``scored_tokens`` (counts per example) give it as
``mean(correct_tokens) / mean(scored_tokens)``.

Baselines (``ngram_probabilities``): RegBench's in-context n-gram model with back-off, orders 1 to
4, from the strings seen so far in the same sequence; ``baseline_metrics`` scores it with the
same metrics.

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


def automaton_key(next_state: list[list[int]]) -> tuple:
    """A canonical form of the automaton ``next_state[state][symbol]`` (-1: no edge; start 0, every
    state accepting): the minimal DFA (Moore's partition refinement over the reachable states, the
    missing edges going to a rejecting sink), states numbered in breadth-first order from the start
    over symbols in order. Language-equivalent automata get equal keys."""
    reachable, frontier = {0}, [0]
    while frontier:
        state = frontier.pop()
        for nxt in next_state[state]:
            if nxt >= 0 and nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    block = {q: 0 for q in reachable}  # every reachable state accepts; the sink (-1) is its own block
    while True:
        signatures = {q: (block[q], tuple(block[n] if n >= 0 else -1 for n in next_state[q])) for q in reachable}
        names = {sig: i for i, sig in enumerate(sorted(set(signatures.values())))}
        refined = {q: names[signatures[q]] for q in reachable}
        if len(names) == len(set(block.values())):
            break
        block = refined
    number, order = {block[0]: 0}, [0]
    for q in order:  # breadth-first over representatives
        for nxt in next_state[q]:
            if nxt >= 0 and block[nxt] not in number:
                number[block[nxt]] = len(number)
                order.append(nxt)
    return tuple(tuple(number[block[n]] if n >= 0 else -1 for n in next_state[q]) for q in order)


def ngram_probabilities(tokens: list[int], num_symbols: int, separator: int, order: int) -> torch.Tensor:
    """RegBench's in-context n-gram baseline with back-off (berlino/seq_icl, ``ngram.py``) on one
    sequence: ``(n, num_symbols)`` probabilities of the next symbol after each prefix ``tokens[:t+1]``.

    The counts come from the strings seen so far (split at the separator, each with ``order - 1``
    padding marks in front); the context is the last ``order - 1`` symbols of the current string.
    A symbol seen after the context gets ``count(context + s) / count(context)``; the mass left
    goes to the others in proportion to the order below (down to unigrams over every symbol seen,
    padding marks counted in the total). Rows are normalised (as RegBench does before its L1).
    """
    PAD = -1
    counts: dict[int, dict[tuple, int]] = {n: {} for n in range(1, order + 1)}
    current: list[int] = [PAD] * (order - 1)
    seen: set[int] = set()

    def add(text: list[int], new: int) -> None:  # the n-grams that end at the last ``new`` marks of text
        for end in range(len(text) - new + 1, len(text) + 1):
            for n in range(1, order + 1):
                if end - n >= 0:
                    gram = tuple(text[end - n:end])
                    counts[n][gram] = counts[n].get(gram, 0) + 1

    def probs(context: tuple, symbols: list[int], n: int) -> list[float]:
        if n == 1:
            total = sum(counts[1].values())
            return [counts[1].get((c,), 0) / total for c in symbols]
        out, unseen = [0.0] * len(symbols), []
        below = counts[n - 1].get(context, 0)
        for i, c in enumerate(symbols):
            hit = counts[n].get(context + (c,), 0)
            if hit:
                out[i] = hit / below
            else:
                unseen.append(i)
        if unseen:
            # the mass left, over every symbol seen (RegBench sums over the whole vocabulary)
            left = 1.0 - sum(counts[n].get(context + (c,), 0) / below for c in sorted(seen)) if below else 1.0
            lower = probs(context[1:], [symbols[i] for i in unseen], n - 1)
            scale = left / sum(lower) if sum(lower) > 0 else 0.0
            for i, p in zip(unseen, lower):
                out[i] = scale * p
        return out

    add(current, order - 1)
    rows = torch.zeros(len(tokens), num_symbols, dtype=torch.float64)
    for t, token in enumerate(tokens):
        if token == separator:
            current = [PAD] * (order - 1)
            add(current, order - 1)
        elif token < num_symbols:
            current.append(token)
            seen.add(token)
            add(current, 1)
        else:  # padding: nothing follows
            continue
        if seen:
            symbols = sorted(seen)
            context = tuple(current[len(current) - (order - 1):]) if order > 1 else ()
            values = probs(context, symbols, order)
            rows[t, symbols] = torch.tensor(values, dtype=torch.float64)
            rows[t] /= rows[t].sum().clamp(min=1e-300)
    return rows


@register_task("icl_language")
class ICLLanguageTask(Task):
    """Predict the next symbol of strings from a fresh random automaton shown only in context."""

    name = "icl_language"
    training_options = ("exclude_eval_automata", "train_automata")

    def __init__(self, num_symbols: int = 18, min_states: int = 4, max_states: int = 12, min_alphabet: int = 4,
                 max_alphabet: int = 18, max_transitions: int = 3, min_strings: int = 10, max_strings: int = 19,
                 max_string_len: int = 49, max_len: int | None = 512, eval_samples: int = 500, eval_seed: int = 1234,
                 exclude_eval_automata: bool = False, train_automata: int | None = None):
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
        require(max_len is None or max_len >= 2, "max_len", f"must be null (no cut) or >= 2, got {max_len}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        require(train_automata is None or train_automata >= 1, "train_automata",
                f"must be null (a fresh automaton per sequence) or >= 1, got {train_automata}")
        if max_len is None:  # the longest sequence the generator makes: nothing is cut
            max_len = max_strings * (max_string_len + 1) - 1
        self.num_symbols = num_symbols
        self.states, self.alphabet = (min_states, max_states), (min_alphabet, max_alphabet)
        self.max_transitions = max_transitions
        self.strings, self.max_string_len = (min_strings, max_strings), max_string_len
        self.max_len, self.eval_samples, self.eval_seed = max_len, eval_samples, eval_seed
        self.separator, self.pad = num_symbols, num_symbols + 1
        self.vocab_size = num_symbols + 2
        self.exclude_eval_automata, self.train_automata = exclude_eval_automata, train_automata
        self._eval_keys: set | None = None  # minimised evaluation automata, built on first use
        self._pool: torch.Tensor | None = None  # the fixed training automata (train_automata)

    def max_input_len(self) -> int:
        return self.max_len

    def _automata(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Transition tables ``(batch, max_states, num_symbols)`` on ``generator.device``."""
        return sample_automata(batch, self.num_symbols, *self.states, *self.alphabet, self.max_transitions,
                               generator)[0]

    def eval_automaton_keys(self) -> set:
        """``automaton_key`` of every evaluation automaton (they come first from the evaluation generator)."""
        if self._eval_keys is None:
            tables = self._automata(self.eval_samples, torch.Generator().manual_seed(self.eval_seed))
            self._eval_keys = {automaton_key(t) for t in tables.tolist()}
        return self._eval_keys

    def _training_automata(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Fresh automata, those equal to an evaluation automaton redrawn (reads the tables on the host)."""
        tables = self._automata(batch, generator)
        if not self.exclude_eval_automata:
            return tables
        keys = self.eval_automaton_keys()
        while True:
            clash = [i for i, t in enumerate(tables.tolist()) if automaton_key(t) in keys]
            if not clash:
                return tables
            tables[clash] = self._automata(len(clash), generator)

    def _train_pool(self) -> torch.Tensor:
        if self._pool is None:
            self._pool = self._training_automata(self.train_automata, torch.Generator().manual_seed(self.eval_seed + 1))
        return self._pool

    def _sample(self, batch: int, generator: torch.Generator, next_state: torch.Tensor | None = None) -> Batch:
        if next_state is None:
            next_state = self._automata(batch, generator)
        n_strings = uniform_int(*self.strings, (batch,), generator)
        lengths = uniform_int(1, self.max_string_len, (batch, self.strings[1]), generator)
        tokens, allowed = sample_strings(next_state, n_strings, lengths, self.max_len + 1, self.separator, self.pad,
                                         generator)
        targets = tokens[:, 1:]
        return Batch(inputs=tokens[:, :-1], targets=targets, mask=targets < self.num_symbols,
                     extras={"allowed": allowed[:, 1:]})

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.train_automata is not None:
            pool = self._train_pool().to(generator.device)
            chosen = torch.randint(0, len(pool), (batch_size,), generator=generator, device=generator.device)
            return self._sample(batch_size, generator, pool[chosen])
        if self.exclude_eval_automata:
            return self._sample(batch_size, generator, self._training_automata(batch_size, generator))
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
        return {"accuracy": correct.sum(1) / scored, "tvd": tvd.sum(1) / scored, "l1": 2 * tvd.sum(1) / scored,
                "correct_tokens": correct.sum(1).float(), "scored_tokens": batch.mask.sum(1).float()}

    def baseline_metrics(self, batch: Batch, order: int) -> dict[str, torch.Tensor]:
        """``metrics`` of the in-context ``order``-gram back-off model (``ngram_probabilities``) on ``batch``:
        per example, as the model's (slow: a Python loop over every token)."""
        rows = [ngram_probabilities(seq, self.num_symbols, self.separator, order) for seq in batch.inputs.tolist()]
        probs = torch.stack(rows).float()  # (B, n, num_symbols)
        logits = torch.cat([probs.log(), torch.full((*probs.shape[:2], 2), float("-inf"))], dim=-1)
        return self.metrics(logits.nan_to_num(neginf=-1e30), batch)

    def summary(self) -> dict:
        return {"num_symbols": self.num_symbols, "states": list(self.states), "alphabet": list(self.alphabet),
                "max_transitions": self.max_transitions, "strings": list(self.strings),
                "max_string_len": self.max_string_len, "max_len": self.max_len,
                "exclude_eval_automata": self.exclude_eval_automata, "train_automata": self.train_automata}
