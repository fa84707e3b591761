"""MQAR as Zoology generates it: exact layout, scored positions, power law, mixture, determinism, errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.mqar import assemble_mqar, mqar_batch, power_law_weights


def test_layout_by_hand_matches_zoologys_docstring_example():
    # Zoology: multiquery_ar(vocab_size=12, num_kv_pairs=2, input_seq_len=16, random_non_queries=False)
    #   inputs: 2 8 4 7 0 0 4 0 0 0 0 0 2 0 0 0   (key 4 queried at gap 1, key 2 at gap 4)
    #   labels: only 7 under the query of 4 and 8 under the query of 2
    batch = assemble_mqar(keys=torch.tensor([[2, 4]]), values=torch.tensor([[8, 7]]), gaps=torch.tensor([[4, 1]]),
                          filler=torch.zeros(1, 16, dtype=torch.long))
    assert batch.inputs.tolist() == [[2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0]]
    assert batch.targets.tolist() == [[0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 8, 0, 0, 0]]
    assert batch.mask.nonzero()[:, 1].tolist() == [6, 12]


def test_power_law_by_hand():
    a = 0.01
    expected = torch.tensor([a * 1 ** (a - 1), a * 2 ** (a - 1), a * 3 ** (a - 1)], dtype=torch.float64)
    assert torch.allclose(power_law_weights(3, a), expected / expected.sum())
    assert torch.allclose(power_law_weights(5, 1.0), torch.full((5,), 0.2, dtype=torch.float64))


def test_structure_and_mask_cover_exactly_the_queries(generator):
    seq_len, kv, vocab = 64, 8, 512
    b = mqar_batch(200, seq_len, kv, vocab, 0.01, True, generator)
    keys, values = b.inputs[:, 0:2 * kv:2], b.inputs[:, 1:2 * kv:2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    assert all(len(set(row.tolist())) == kv for row in keys) and all(len(set(row.tolist())) == kv for row in values)
    assert (b.mask.sum(1) == kv).all() and not b.mask[:, :2 * kv].any()
    positions = b.mask.nonzero()[:, 1].view(200, kv)
    assert ((positions - 2 * kv) % 2 == 0).all()  # queries at even offsets after the pairs
    for row in range(200):
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        queried = b.inputs[row, positions[row]].tolist()
        assert sorted(queried) == sorted(pairs)  # every key queried exactly once
        assert b.targets[row, positions[row]].tolist() == [pairs[k] for k in queried]
    assert (b.targets[~b.mask] == 0).all()


def test_gaps_follow_the_power_law():
    b = mqar_batch(4000, 64, 1, 1024, 0.01, False, torch.Generator().manual_seed(1))
    gaps = (b.mask.nonzero()[:, 1] - 2) // 2
    frequency = torch.bincount(gaps, minlength=31).double() / len(gaps)
    assert torch.allclose(frequency, power_law_weights(31, 0.01), atol=0.02)
    assert frequency[:3].sum() > 0.4  # a = 0.01: p(g) ~ 1 / (g + 1): queries cluster right after the pairs


def test_training_mixture_one_setting_per_batch():
    task = build_task("mqar", vocab_size=512, train_settings=[[64, 4], [128, 8]], train_weights=[3, 1],
                      test_settings=[[64, 4]])
    g = torch.Generator().manual_seed(0)
    shapes = [tuple(task.train_batch(4, g).inputs.shape) for _ in range(400)]
    assert set(shapes) == {(4, 64), (4, 128)}
    assert 0.65 < shapes.count((4, 64)) / 400 < 0.85
    batch = task.train_batch(8, torch.Generator().manual_seed(3))
    kv = 4 if batch.inputs.shape[1] == 64 else 8
    assert (batch.mask.sum(1) == kv).all()


def test_deterministic_and_fixed_eval_sets():
    task = build_task("mqar", vocab_size=256, train_settings=[[32, 2]], train_weights=[1],
                      test_settings=[[32, 2], [64, 8]], eval_samples=16)
    a, b = task.train_batch(8, torch.Generator().manual_seed(5)), task.train_batch(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    one, two = task.eval_sets(), build_task("mqar", vocab_size=256, train_settings=[[32, 2]], train_weights=[1],
                                            test_settings=[[32, 2], [64, 8]], eval_samples=16).eval_sets()
    assert list(one) == ["L32-kv2", "L64-kv8"]
    assert all(torch.equal(one[k].inputs, two[k].inputs) for k in one)
    assert task.in_distribution("L32-kv2") and not task.in_distribution("L64-kv8")


@pytest.mark.parametrize("options,field", [
    ({"train_settings": [[16, 9]], "train_weights": [1]}, "task.train_settings: 2 \\* num_kv_pairs = 18 exceeds seq_len = 16"),
    ({"test_settings": [[16, 5]]}, "task.test_settings"),
    ({"test_settings": [[15, 2]]}, "task.test_settings: seq_len must be even"),
    ({"vocab_size": 64}, "task.vocab_size"),
    ({"train_weights": [1, 2]}, "task.train_weights"),
    ({"power_a": 0.0}, "task.power_a"),
])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("mqar", **options)
