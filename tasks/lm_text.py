"""Language modelling on local text, loaded with ``datasets`` and tokenised once (cached on disk).

Corpus: the files named in ``train_files`` (paths or globs), or by default the Python standard
library's own sources (``*.py`` under ``sysconfig``'s stdlib folder, without its test suites and
bundled applications): text every machine has without a download. Files are loaded with
``load_dataset("text", sample_by="document")`` (one row per file); validation files are
``validation_files`` when given, otherwise every file whose path hash (SHA-1 of its path relative
to the corpus root) falls in the first ``validation_percent`` percent, so the split is by file and
the same on every machine.

Tokens: UTF-8 bytes (vocabulary 256 + an end-of-document token) by default, or a transformers
tokenizer from the local folder ``tokenizer`` (its EOS token ends each document). The tokenised
files are cached by ``datasets`` under ``cache_dir``; the training and validation streams are the
concatenations of their documents.

Training batches are windows of ``context_len + 1`` tokens at uniformly random offsets of the
training stream; the evaluation set is ``eval_samples`` windows of the validation stream at
offsets fixed by ``eval_seed``. Every position is scored. Metrics: next-token accuracy and loss in
bits per token (per example; the harness also reports the mean cross-entropy in nats).
"""
from __future__ import annotations

import glob
import hashlib
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks import register_task
from tasks.base import Batch, Task, masked_token_accuracy, require

STDLIB_SKIP = ("test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages", "lib2to3", "__pycache__")


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's root and its ``*.py`` sources without test suites and applications."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & set(STDLIB_SKIP)]
    return root, sorted(files)


def expand(patterns: list[str]) -> list[Path]:
    """Paths matching ``patterns`` (files or globs, ``**`` allowed), sorted, without duplicates."""
    found = {Path(p).resolve() for pattern in patterns for p in glob.glob(str(pattern), recursive=True)}
    return sorted(p for p in found if p.is_file())


def in_validation(relative: str, percent: float) -> bool:
    """Whether the file at ``relative`` path goes to validation: a stable hash, the same on every machine."""
    bucket = int(hashlib.sha1(relative.encode()).hexdigest()[:8], 16) % 10_000
    return bucket < percent * 100


@dataclass
class Corpus:
    """Token streams ``train (n_train,)`` and ``validation (n_val,)`` (int64) and what they came from."""

    train: torch.Tensor
    validation: torch.Tensor
    info: dict


def split_files(train_files: list[str] | None, validation_files: list[str] | None,
                validation_percent: float) -> tuple[list[Path], list[Path], str, Path | None]:
    """Training files, validation files, a description of the source and the root for relative paths."""
    if train_files is None:
        root, files = stdlib_files()
        source = f"python-stdlib ({root})"
    else:
        files, root = expand(train_files), None
        source = "files: " + ", ".join(str(p) for p in train_files)
    if validation_files is not None:
        return files, expand(validation_files), source, root

    def rel(p: Path) -> str:
        return str(p.relative_to(root)) if root else p.name

    val = [p for p in files if in_validation(rel(p), validation_percent)]
    return [p for p in files if p not in set(val)], val, source, root


def tokenize_files(files: list[Path], tokenizer: str | None, cache_dir: str) -> torch.Tensor:
    """One token stream for ``files`` (each document followed by the end-of-document token), tokenised
    with ``datasets`` ``map`` and cached under ``cache_dir``."""
    import datasets

    ds = datasets.load_dataset("text", data_files=[str(p) for p in files], sample_by="document", keep_linebreaks=True,
                               encoding_errors="replace", cache_dir=str(Path(cache_dir) / "hf"), split="train")
    if tokenizer is None:
        def encode(rows):
            return {"ids": [list(text.encode("utf-8")) + [256] for text in rows["text"]]}
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []

        def encode(rows):
            return {"ids": [ids + eos for ids in tok(rows["text"], add_special_tokens=False)["input_ids"]]}

    ds = ds.map(encode, batched=True, remove_columns=["text"], desc="tokenising")
    import pyarrow.compute as pc

    flat = pc.list_flatten(ds.data.column("ids"))  # the documents one after another
    return torch.from_numpy(flat.to_numpy().astype("int64"))


def load_corpus(train_files: list[str] | None, validation_files: list[str] | None, validation_percent: float,
                tokenizer: str | None, cache_dir: str) -> Corpus:
    """Read, split and tokenise the corpus (cached by ``datasets``)."""
    train, val, source, _ = split_files(train_files, validation_files, validation_percent)
    require(len(train) > 0, "train_files", f"no training files found ({source})")
    require(len(val) > 0, "validation_files", f"no validation files ({source}); name some or raise validation_percent")
    train_ids, val_ids = tokenize_files(train, tokenizer, cache_dir), tokenize_files(val, tokenizer, cache_dir)
    digest = hashlib.sha256()
    for stream in (train_ids, val_ids):
        digest.update(stream.numpy().tobytes())
    info = {"source": source, "train_files": len(train), "validation_files": len(val),
            "train_bytes": sum(p.stat().st_size for p in train), "validation_bytes": sum(p.stat().st_size for p in val),
            "train_tokens": len(train_ids), "validation_tokens": len(val_ids), "tokenizer": tokenizer or "bytes",
            "sha256": digest.hexdigest()[:16]}
    return Corpus(train_ids, val_ids, info)


def vocabulary_size(tokenizer: str | None) -> int:
    """256 bytes + end-of-document, or the tokenizer's vocabulary (with its added tokens)."""
    if tokenizer is None:
        return 257
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer, local_files_only=True))


def windows(stream: torch.Tensor, offsets: torch.Tensor, width: int) -> torch.Tensor:
    """``(len(offsets), width)`` slices of ``stream`` starting at ``offsets``."""
    return stream[offsets[:, None] + torch.arange(width, device=stream.device)[None, :]]


class TextTask(Task):
    """Shared by ``lm_text`` and ``copy_text``: the corpus, loaded on first use, and its vocabulary."""

    def __init__(self, train_files, validation_files, validation_percent, tokenizer, cache_dir, eval_samples, eval_seed):
        require(train_files is None or len(train_files) > 0, "train_files", "must be null (the stdlib) or a list of paths")
        require(0 < validation_percent < 100, "validation_percent", f"must be in (0, 100), got {validation_percent}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        if tokenizer is not None:
            require(Path(tokenizer).is_dir(), "tokenizer", f"must be a local folder holding a tokenizer, got {tokenizer!r}")
        self.files = (list(train_files) if train_files is not None else None,
                      list(validation_files) if validation_files is not None else None)
        self.validation_percent, self.tokenizer, self.cache_dir = validation_percent, tokenizer, cache_dir
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.vocab_size = vocabulary_size(tokenizer)
        self._corpus: Corpus | None = None
        self._device_streams: dict = {}

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = load_corpus(*self.files, self.validation_percent, self.tokenizer, self.cache_dir)
        return self._corpus

    def stream(self, split: str, device: torch.device) -> torch.Tensor:
        """The ``split`` token stream on ``device`` (moved once)."""
        key = (split, str(device))
        if key not in self._device_streams:
            self._device_streams[key] = getattr(self.corpus, split).to(device)
        return self._device_streams[key]

    def random_windows(self, split: str, batch: int, width: int, generator: torch.Generator) -> torch.Tensor:
        stream = self.stream(split, generator.device)
        require(len(stream) > width, "context_len", f"{width} tokens exceed the {split} stream ({len(stream)} tokens)")
        offsets = torch.randint(0, len(stream) - width + 1, (batch,), generator=generator, device=generator.device)
        return windows(stream, offsets, width)


@register_task("lm_text")
class LMTextTask(TextTask):
    """Next-token prediction on local text; every position scored."""

    name = "lm_text"

    def __init__(self, train_files: list[str] | None = None, validation_files: list[str] | None = None,
                 validation_percent: float = 5.0, tokenizer: str | None = None, cache_dir: str = "results/cache",
                 context_len: int = 256, eval_samples: int = 256, eval_seed: int = 1234):
        super().__init__(train_files, validation_files, validation_percent, tokenizer, cache_dir, eval_samples, eval_seed)
        require(context_len >= 1, "context_len", f"must be >= 1, got {context_len}")
        self.context_len = context_len

    def max_input_len(self) -> int:
        return self.context_len

    def _batch(self, tokens: torch.Tensor) -> Batch:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        return Batch(inputs=inputs, targets=targets, mask=torch.ones_like(targets, dtype=torch.bool))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._batch(self.random_windows("train", batch_size, self.context_len + 1, generator))

    def eval_sets(self) -> dict[str, Batch]:
        generator = torch.Generator().manual_seed(self.eval_seed)
        return {"validation": self._batch(self.random_windows("validation", self.eval_samples, self.context_len + 1,
                                                              generator))}

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        scored = batch.mask.sum(1).clamp(min=1)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), batch.targets, reduction="none")
        return {"accuracy": masked_token_accuracy(logits, batch)["accuracy"], "bits_per_token": (nll * batch.mask).sum(1) / scored / math.log(2)}

    def summary(self) -> dict:
        return {"context_len": self.context_len, "corpus": self.corpus.info}
