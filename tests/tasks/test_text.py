"""lm_text and copy_text on a small local corpus: tokens, split by file, windows, masks, errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.lm_text import split_files, stdlib_files


@pytest.fixture
def corpus(tmp_path):
    train = [tmp_path / f"train{i}.txt" for i in range(3)]
    for i, path in enumerate(train):
        path.write_text(f"line {i}\nsecond line of file {i}\n" * 20)
    val = tmp_path / "valid.txt"
    val.write_text("héllo validation\n" * 30)
    return {"train_files": [str(tmp_path / "train*.txt")], "validation_files": [str(val)],
            "cache_dir": str(tmp_path / "cache")}


def test_byte_tokens_with_end_of_document(corpus):
    task = build_task("lm_text", context_len=16, **corpus)
    assert task.vocab_size == 257
    expected = list("héllo validation\n".encode() * 30) + [256]
    assert task.corpus.validation.tolist() == expected
    assert task.corpus.info["train_files"] == 3 and task.corpus.train.eq(256).sum() == 3


def test_lm_windows_score_every_next_token(corpus):
    task = build_task("lm_text", context_len=16, eval_samples=5, **corpus)
    b = task.train_batch(8, torch.Generator().manual_seed(0))
    assert b.inputs.shape == (8, 16) and b.mask.all() and torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    a = task.train_batch(8, torch.Generator().manual_seed(0))
    assert torch.equal(a.inputs, b.inputs)
    ev = task.eval_sets()["validation"]
    assert ev.inputs.shape == (5, 16) and torch.equal(ev.inputs, task.eval_sets()["validation"].inputs)


def test_copy_text_repeats_the_first_half_and_scores_only_the_repeat(corpus):
    task = build_task("copy_text", seq_len=12, **corpus)
    b = task.train_batch(4, torch.Generator().manual_seed(0))
    seq = torch.cat([b.inputs, b.targets[:, -1:]], 1)  # the whole window a_1..a_6 a_1..a_6
    assert seq.shape == (4, 12) and torch.equal(seq[:, :6], seq[:, 6:])
    assert b.mask.tolist() == [[False] * 5 + [True] * 6] * 4  # from the prediction of a_1 at a_6 on
    assert torch.equal(b.targets[b.mask].view(4, 6), seq[:, :6])


def test_default_corpus_is_the_stdlib_split_by_file():
    root, files = stdlib_files()
    assert len(files) > 100 and not any("test" in p.relative_to(root).parts[:-1] for p in files)
    train, val, source, _ = split_files(None, None, 5.0)
    assert "python-stdlib" in source and val and not set(train) & set(val)
    assert 0.01 < len(val) / (len(train) + len(val)) < 0.1
    assert split_files(None, None, 5.0)[1] == val  # the same on every call (a hash of the path)


@pytest.mark.parametrize("task,options,field", [
    ("lm_text", {"tokenizer": "/nonexistent/tokenizer"}, "task.tokenizer"),
    ("lm_text", {"validation_percent": 0}, "task.validation_percent"),
    ("lm_text", {"context_len": 0}, "task.context_len"),
    ("copy_text", {"seq_len": 7}, "task.seq_len"),
])
def test_impossible_parameters_name_the_field(task, options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task(task, **options)
