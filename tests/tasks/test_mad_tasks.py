"""MAD's synthetic tasks (compression, memorization, noisy and fuzzy in-context recall): hand-checked
layouts, format and scored positions against a reference walk, determinism, errors naming the field."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.compression import compression_batch
from tasks.fuzzy_recall import Uniforms, fuzzy_recall_string
from tasks.memorization import assemble_memorization, memorization_map
from tasks.noisy_recall import noisy_recall_strings, shifted

SMALL = {
    "compression": {"vocab_size": 8, "seq_len": 12, "num_train_examples": 64, "eval_samples": 32},
    "memorization": {"vocab_size": 16, "seq_len": 8, "num_train_examples": 16, "eval_samples": 32},
    "noisy_recall": {"vocab_size": 16, "noise_vocab_size": 4, "frac_noise": 0.4, "seq_len": 24,
                     "num_train_examples": 64, "eval_samples": 64},
    "fuzzy_recall": {"vocab_size": 16, "seq_len": 32, "k_motif_size": 2, "v_motif_size": 2, "num_train_examples": 64,
                     "eval_samples": 64},
}


class Scripted(Uniforms):
    """Integers from a script, in order (a hand-checked draw sequence)."""

    def __init__(self, script):
        self.script = list(script)

    def integer(self, low, high):
        value = self.script.pop(0)
        assert low <= value < high, (value, low, high)
        return value

    def uniform(self):
        raise AssertionError("no noise draws expected")


def test_compression_layout_by_hand():
    b = compression_batch(torch.tensor([[3, 0, 2]]), compress=7)
    assert b.inputs.tolist() == [[3, 0, 2, 7]] and b.targets.tolist() == [[3, 0, 2, 7]] and b.mask.all()


def test_memorization_layout_by_hand_and_map():
    table = torch.tensor([5, 3, 4])  # key 0 -> 5, 1 -> 3, 2 -> 4; insert token 7
    b = assemble_memorization(torch.tensor([[2, 0, 2]]), table, insert=7)
    assert b.inputs.tolist() == [[2, 7, 0, 7, 2, 7]]
    assert b.targets.tolist() == [[0, 4, 0, 5, 0, 4]]
    assert b.mask.tolist() == [[False, True] * 3]
    m = memorization_map(256, 12345)  # MAD's: 127 keys to distinct values of [127, 255)
    assert len(m) == 127 and len(set(m.tolist())) == 127 and int(m.min()) >= 127 and int(m.max()) < 255
    assert torch.equal(m, memorization_map(256, 12345)) and not torch.equal(m, memorization_map(256, 1))


def test_fuzzy_recall_instance_by_hand():
    # vocabulary 8: keys 0..2, values 3..6, padding 7; motifs of one token; test example of length 8.
    # draws: probe key 2, probe value size 1, value pool [3,4,5,6][1] = 4, insert at 2; first pair:
    # value size 1, key 0, value 6; then the stream has reached 2 and takes the probe pair 2 4; it stops
    # at 4 = 8 - 2 - 2 tokens; the probe pair closes it and padding fills the front to 9 tokens.
    string, scored = fuzzy_recall_string(Scripted([2, 1, 1, 2, 1, 0, 3, 1]), seq_len=8, vocab_size=8,
                                         k_motif_size=1, v_motif_size=1, noise_vocab_size=0, frac_noise=0.0, test=True)
    assert string == [7, 7, 7, 0, 6, 2, 4, 2, 4]
    assert scored == [False] * 8 + [True]
    b = shifted(torch.tensor([string]), torch.tensor([scored[1:]]), score_all=False)
    assert b.inputs.tolist() == [[7, 7, 7, 0, 6, 2, 4, 2]] and b.targets.tolist() == [[0] * 7 + [4]]
    assert b.mask.nonzero()[:, 1].tolist() == [7]  # the probe key predicts its value


def test_noisy_recall_matches_a_reference_walk():
    vocab, noise_vocab, seq_len = 16, 4, 40
    symbols, n_keys = vocab - noise_vocab, (vocab - noise_vocab) // 2
    strings, recalled = noisy_recall_strings(300, seq_len, vocab, noise_vocab, 0.5, torch.Generator().manual_seed(3))
    assert strings.shape == recalled.shape == (300, seq_len)
    noisy_slots = 0
    for row, marks in zip(strings.tolist(), recalled.tolist()):
        values, pairs = {}, 0
        for j in range(0, seq_len - 2, 2):
            k, v = row[j], row[j + 1]
            if k >= symbols:  # a noise slot: both tokens noise, nothing scored
                assert v >= symbols and not marks[j]
                noisy_slots += 1
                continue
            assert 0 <= k < n_keys and n_keys <= v < symbols and values.get(k, v) == v  # one value per key
            assert marks[j] == (k in values)  # scored exactly when the key was seen before
            values[k] = v
            pairs += 1
        assert pairs >= 1 and row[-2] in values and row[-1] == values[row[-2]] and marks[-2]
        assert not any(marks[1::2])
    assert 0.4 < noisy_slots / (300 * (seq_len // 2 - 1)) < 0.6


def test_fuzzy_recall_format_and_the_probe_always_appears_before():
    task = build_task("fuzzy_recall", **SMALL["fuzzy_recall"])
    b = task.eval_sets()["test"]
    assert b.inputs.shape == (64, 32) and int(b.inputs.max()) < 16 and int(b.inputs.min()) >= 0
    full = torch.cat([b.inputs, b.targets[:, -1:]], 1)  # the whole string: the last target is its last token
    for row, mask in zip(full.tolist(), b.mask.tolist()):
        tail = 0
        while mask[len(mask) - 1 - tail]:
            tail += 1
        assert 1 <= tail <= 2  # the probe value, every token scored
        probe = row[-tail - 2:]  # test keys have k_motif_size = 2 tokens
        earlier = row[:-tail - 2]
        assert any(earlier[i:i + len(probe)] == probe for i in range(len(earlier)))
        assert all(0 <= t < 7 for t in probe[:2]) and all(7 <= t < 15 for t in probe[2:])
    train = task.train_batch(8, torch.Generator().manual_seed(0))
    assert train.mask.all() and torch.equal(train.targets[:, :-1], train.inputs[:, 1:])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_format_determinism_and_fixed_training_set(name):
    task = build_task(name, **SMALL[name])
    options = SMALL[name]
    a = task.train_batch(8, torch.Generator().manual_seed(5))
    b = build_task(name, **options).train_batch(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask)
    assert a.inputs.shape[1] == task.max_input_len() and 0 <= int(a.inputs.min()) and int(a.inputs.max()) < task.vocab_size
    assert (a.targets[~a.mask] == 0).all() and int(a.targets.max()) < task.vocab_size
    pool = task.training_set.examples()
    assert len(pool) == options["num_train_examples"]
    drawn = {tuple(r) for r in task.train_batch(16, torch.Generator().manual_seed(9)).inputs.tolist()}
    assert drawn <= {tuple(r) for r in pool.inputs.tolist()} and len(drawn) == 16  # distinct, from the set
    sets, again = task.eval_sets(), build_task(name, **options).eval_sets()
    assert list(sets) == ["test"] and len(sets["test"]) == options["eval_samples"]
    assert torch.equal(sets["test"].inputs, again["test"].inputs) and torch.equal(sets["test"].mask, again["test"].mask)
    assert sets["test"].mask.sum(1).min() >= 1
    fresh = build_task(name, **{**options, "num_train_examples": None})
    one, two = fresh.train_batch(4, torch.Generator().manual_seed(1)), fresh.train_batch(4, torch.Generator().manual_seed(2))
    assert not torch.equal(one.inputs, two.inputs)


def test_scored_positions_per_task():
    memo = build_task("memorization", **SMALL["memorization"]).eval_sets()["test"]
    assert (memo.mask.nonzero()[:, 1] % 2 == 1).all() and (memo.mask.sum(1) == 4).all()
    assert (memo.inputs[:, 1::2] == 15).all()
    comp = build_task("compression", **SMALL["compression"]).eval_sets()["test"]
    assert comp.mask.all() and (comp.inputs[:, -1] == 7).all() and int(comp.inputs[:, :-1].max()) < 7
    noisy = build_task("noisy_recall", **SMALL["noisy_recall"])
    test, train = noisy.eval_sets()["test"], noisy.train_batch(8, torch.Generator().manual_seed(0))
    assert test.inputs.shape == (64, 23) and test.mask[:, -1].all() and not test.mask[:, 1::2].any()
    assert train.mask.all()


def test_readout_last_decodes_from_the_last_state_only():
    from harness.run.model import SequenceModel
    torch.manual_seed(0)
    model = SequenceModel(8, 16, 1, 12, "attention", {"heads": 2}, readout="last")
    x = torch.randint(0, 7, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 8
    out, changed = model(x), model(y)
    assert out.shape == (2, 12, 8)
    assert not torch.allclose(out[:, 0], changed[:, 0])  # the first output depends on the last token
    with pytest.raises(ValueError, match="readout 'last'"):
        model.prefill(x)


@pytest.mark.parametrize("name,options,field", [
    ("noisy_recall", {"frac_noise": 1.0}, "task.frac_noise"),
    ("noisy_recall", {"seq_len": 127}, "task.seq_len"),
    ("noisy_recall", {"noise_vocab_size": 0}, "task.noise_vocab_size"),
    ("noisy_recall", {"vocab_size": 17}, "task.vocab_size"),
    ("fuzzy_recall", {"vocab_size": 6}, "task.vocab_size"),
    ("fuzzy_recall", {"seq_len": 20}, "task.seq_len"),
    ("fuzzy_recall", {"k_motif_size": 0}, "task.k_motif_size"),
    ("memorization", {"seq_len": 31}, "task.seq_len"),
    ("memorization", {"num_train_examples": 0}, "task.num_train_examples"),
    ("compression", {"vocab_size": 1}, "task.vocab_size"),
    ("compression", {"eval_samples": 0}, "task.eval_samples"),
])
def test_impossible_parameters_name_the_field(name, options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task(name, **options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_batches_on_a_cuda_generator(name):
    """The fixed training set moves to the generator's device once; fresh examples are drawn there."""
    task = build_task(name, **SMALL[name])
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = task.train_batch(8, g)
    assert batch.inputs.device.type == "cuda" and batch.mask.device.type == "cuda"
    pool = {tuple(r) for r in task.training_set.examples().inputs.tolist()}
    assert {tuple(r) for r in batch.inputs.tolist()} <= pool
    fresh = build_task(name, **{**SMALL[name], "num_train_examples": None}).train_batch(8, g)
    assert fresh.inputs.device.type == "cuda" and fresh.inputs.shape[1] == task.max_input_len()
