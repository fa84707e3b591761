"""In-context language learning (RegBench): automata, accepted strings, layout, metrics, errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.icl_language import sample_automata, sample_strings


def test_automata_have_regbench_structure(generator):
    next_state, n_states = sample_automata(300, 18, 4, 12, 4, 18, 3, generator)
    assert n_states.min() >= 4 and n_states.max() <= 12
    for table, n in zip(next_state, n_states.tolist()):
        assert (table[n:] == -1).all()
        alphabet = (table[:n] >= 0).any(0)
        assert 1 <= alphabet.sum() <= 18
        for s in range(n):
            targets = table[s][table[s] >= 0]
            assert 1 <= len(targets) <= 3  # edges carry distinct symbols (one entry per symbol)
            assert len(set(targets.tolist())) == len(targets)  # ... to distinct states
            assert s not in targets.tolist() and (targets < n).all()  # no self-loops, only used states


def test_sampled_strings_are_accepted_by_their_automaton():
    task = build_task("icl_language", max_len=200)
    g = torch.Generator().manual_seed(3)
    next_state, _ = sample_automata(64, 18, 4, 12, 4, 18, 3, g)
    tokens, allowed = sample_strings(next_state, torch.full((64,), 12), torch.randint(1, 30, (64, 19), generator=g),
                                     201, task.separator, task.pad, g)
    for row in range(64):
        state = 0
        for t, token in enumerate(tokens[row].tolist()):
            if token in (task.separator, task.pad):
                assert not allowed[row, t].any()
                state = 0
                continue
            assert allowed[row, t].tolist() == (next_state[row, state] >= 0).tolist()
            state = int(next_state[row, state, token])
            assert state >= 0, "a symbol the automaton does not allow"


def test_layout_by_hand():
    # one automaton: 0 -a-> 1 -b-> 0 (a = 0, b = 1), alphabet of 2 symbols, separator 2, padding 3
    table = torch.full((1, 2, 2), -1)
    table[0, 0, 0], table[0, 1, 1] = 1, 0
    tokens, allowed = sample_strings(table, torch.tensor([2]), torch.tensor([[3, 2]]), 9, separator=2, pad=3,
                                     generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [[0, 1, 0, 2, 0, 1, 3, 3, 3]]  # "aba" | "ab", then padding
    task = build_task("icl_language", num_symbols=2, min_states=2, max_states=2, min_alphabet=1, max_alphabet=2,
                      max_transitions=1, max_len=8)
    targets = tokens[:, 1:]
    assert (targets < task.num_symbols).tolist() == [[True, True, False, True, True, False, False, False]]


def test_metrics_by_hand():
    task = build_task("icl_language", num_symbols=3, min_states=2, max_states=2, min_alphabet=2, max_alphabet=3,
                      max_transitions=1, max_len=4)
    batch = task.train_batch(1, torch.Generator().manual_seed(0))
    allowed = torch.zeros(1, 4, 3, dtype=torch.bool)
    allowed[0, :, 0] = allowed[0, :, 1] = True
    batch.extras["allowed"], batch.mask = allowed, torch.ones(1, 4, dtype=torch.bool)
    exact = torch.full((1, 4, 5), -1e9)
    exact[..., 0] = exact[..., 1] = 0.0  # half on each allowed symbol: the automaton's distribution
    m = task.metrics(exact, batch)
    assert m["accuracy"].item() == 1.0 and m["tvd"].item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.full((1, 4, 5), -1e9)
    wrong[..., 2] = 0.0  # all mass on a symbol the automaton forbids
    m = task.metrics(wrong, batch)
    assert m["accuracy"].item() == 0.0 and m["tvd"].item() == pytest.approx(1.0)


def test_deterministic_and_fixed_eval_set():
    task = build_task("icl_language", max_len=64, eval_samples=8)
    a, b = task.train_batch(4, torch.Generator().manual_seed(1)), task.train_batch(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.extras["allowed"], b.extras["allowed"])
    assert a.inputs.shape == (4, 64) and torch.equal(task.eval_sets()["test"].inputs, task.eval_sets()["test"].inputs)
    assert torch.equal(a.mask, a.targets < 18)


@pytest.mark.parametrize("options,field", [
    ({"max_alphabet": 20}, "task.max_alphabet: an automaton alphabet of 20 symbols exceeds"),
    ({"min_states": 3}, "task.max_transitions"),
    ({"min_alphabet": 2}, "task.max_transitions"),
    ({"min_states": 13}, "task.min_states"),
    ({"min_strings": 0}, "task.min_strings"),
])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("icl_language", **options)


def test_automaton_key_is_the_minimal_dfa_up_to_state_names():
    from tasks.icl_language import automaton_key
    a = [[1, -1], [-1, 0]]  # 0 -a-> 1 -b-> 0
    relabelled = [[2, -1], [-1, -1], [-1, 0]]  # the same with state 1 called 2 (state 1 unreachable)
    unrolled = [[1, -1], [-1, 2], [3, -1], [-1, 0]]  # (ab)* with four states: two pairs of equivalent states
    other = [[1, -1], [-1, 1]]  # a b*: a different language
    assert automaton_key(a) == automaton_key(relabelled) == automaton_key(unrolled) == ((1, -1), (-1, 0))
    assert automaton_key(other) != automaton_key(a)


def test_training_automata_exclude_the_evaluation_ones_and_a_pool_fixes_them():
    from tasks.icl_language import automaton_key
    small = dict(num_symbols=3, min_states=2, max_states=3, min_alphabet=1, max_alphabet=2, max_transitions=1,
                 max_len=16, eval_samples=64)
    task = build_task("icl_language", exclude_eval_automata=True, **small)
    keys = task.eval_automaton_keys()
    plain = build_task("icl_language", **small)
    gen = torch.Generator().manual_seed(0)
    assert any(automaton_key(t) in keys for t in plain._automata(256, gen).tolist())  # collisions are common here
    tables = task._training_automata(256, torch.Generator().manual_seed(0))
    assert not any(automaton_key(t) in keys for t in tables.tolist())
    pooled = build_task("icl_language", exclude_eval_automata=True, train_automata=3, **small)
    pool = {automaton_key(t) for t in pooled._train_pool().tolist()}
    assert len(pooled._train_pool()) == 3 and not pool & keys
    batch = pooled.train_batch(64, torch.Generator().manual_seed(1))
    assert batch.inputs.shape == (64, 16)


def regbench_ngram(text: str, order: int, vocab: str) -> list[dict]:
    """RegBench's rule restated on strings: counts rebuilt from scratch for every prefix."""
    out = []
    for t in range(1, len(text) + 1):
        texts = text[:t].split("|")
        counts = {n: {} for n in range(1, order + 1)}
        for s in texts:
            s = "_" * (order - 1) + s
            for n in counts:
                for i in range(len(s) - n + 1):
                    counts[n][s[i:i + n]] = counts[n].get(s[i:i + n], 0) + 1
        seen = sorted(set("".join(texts)))

        def prob(prefix, chars, n):
            if n == 1:
                total = sum(counts[1].values())
                return {c: counts[1][c] / total for c in chars}
            got = {c: counts[n][prefix + c] / counts[n - 1][prefix] for c in chars if prefix + c in counts[n]}
            missing = [c for c in chars if c not in got]
            if missing:
                left = 1 - sum(counts[n][prefix + c] / counts[n - 1][prefix] for c in seen if prefix + c in counts[n])
                lower = prob(prefix[1:], missing, n - 1)
                got.update({c: left * lower[c] / sum(lower.values()) for c in missing})
            return got

        prefix = ("_" * (order - 1) + texts[-1])[len(texts[-1]):] if order > 1 else ""
        p = prob(prefix, seen, order)
        total = sum(p.values())
        out.append({vocab.index(c): v / total for c, v in p.items()})
    return out


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ngram_backoff_equals_regbench_rule_restated(order):
    from tasks.icl_language import ngram_probabilities
    vocab = "abc"
    text = "abcab|bca|ab|cabca|a"
    tokens = [3 if c == "|" else vocab.index(c) for c in text]
    rows = ngram_probabilities(tokens, 3, 3, order)
    for t, expected in enumerate(regbench_ngram(text, order, vocab)):
        for symbol in range(3):
            assert rows[t, symbol].item() == pytest.approx(expected.get(symbol, 0.0), abs=1e-12), (t, symbol)


def test_ngram_by_hand_and_baseline_metrics():
    from tasks.icl_language import ngram_probabilities
    rows = ngram_probabilities([0, 1, 3, 0], 3, 3, order=2)  # "ab|a"
    assert torch.allclose(rows, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]],
                                             dtype=torch.float64))
    task = build_task("icl_language", max_len=64, eval_samples=4)
    batch = task.eval_sets()["test"]
    low, high = task.baseline_metrics(batch, 1), task.baseline_metrics(batch, 3)
    assert high["accuracy"].mean() > low["accuracy"].mean() and torch.allclose(high["l1"], 2 * high["tvd"])
    assert torch.equal(high["scored_tokens"], batch.mask.sum(1).float())


def test_no_truncation_fits_the_longest_sequence():
    task = build_task("icl_language", max_len=None, eval_samples=4)
    assert task.max_input_len() == 19 * 50 - 1
    batch = task.eval_sets()["test"]
    assert (batch.inputs == task.pad).any(1).all()  # every sequence ends before the cut
