"""A mixer and a task from a package outside the repository train, record and report like built-in
ones: named by dotted path in the package's own conf/ (on Hydra's search path), or by entry point."""
from __future__ import annotations

import sys
import textwrap

import pandas as pd
import pytest

import mixers
import tasks
from harness.report import cli as report
from harness.run.config import ConfigError, load, validate
from harness.run.execute import execute

PACKAGE = '''
"""A package of the user's own: one mixer, one task."""
import torch
from torch import nn

from mixers.base import Mixer
from tasks.base import Batch, Task


class PrefixMean(Mixer):
    """The running mean of a projection, strictly causal: ``(batch, n, d) -> (batch, n, d)``."""

    def __init__(self, d_model: int, max_len: int, scale: float = 1.0):
        super().__init__(d_model, max_len)
        self.proj = nn.Linear(d_model, d_model)
        self.scale = scale

    def forward(self, x):
        h = self.proj(x)
        counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=h.dtype).view(1, -1, 1)
        return self.scale * h.cumsum(1) / counts

    def flop_terms(self, length):
        return {"matmul": 2.0 * length * self.d_model ** 2, "elementwise": 3.0 * length * self.d_model}


class Echo(Task):
    """Predict the previous token."""

    name = "echo"
    vocab_size = 8

    def __init__(self, seq_len: int = 8, eval_samples: int = 16):
        self.seq_len, self.eval_samples = seq_len, eval_samples

    def max_input_len(self):
        return self.seq_len

    def _sample(self, n, generator):
        x = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=generator, device=generator.device)
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[:, 0] = False
        return Batch(x, torch.roll(x, 1, dims=1), mask)

    def train_batch(self, batch_size, generator):
        return self._sample(batch_size, generator)

    def eval_sets(self):
        return {"valid": self._sample(self.eval_samples, torch.Generator().manual_seed(0))}

    def metrics(self, logits, batch):
        correct = (logits.argmax(-1) == batch.targets) & batch.mask
        return {"accuracy": correct.sum(1) / batch.mask.sum(1)}
'''
TINY = ("train=test", "train.steps=4", "train.eval_every=2", "train.warmup_steps=1", "model.d_model=16",
        "benchmark=plugin")


@pytest.fixture
def package(tmp_path, monkeypatch):
    """``mbplug`` in a folder outside the repository, on ``sys.path``, with its own Hydra conf/ and an
    installed distribution's entry points; the registries and ``sys.modules`` are restored after."""
    root = tmp_path / "site"
    (root / "mbplug").mkdir(parents=True)
    (root / "mbplug" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    info = root / "mbplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mbplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mixbench.mixers]\nprefix_mean = mbplug:PrefixMean\n\n"
                                           "[mixbench.tasks]\necho = mbplug:Echo\n")
    conf = tmp_path / "conf"
    for group, name, body in (("mixer", "by_path", "name: mbplug.PrefixMean\nscale: 1.0\n"),
                              ("task", "by_path", "name: mbplug.Echo\nseq_len: 8\neval_samples: 16\n"),
                              ("mixer", "by_entry_point", "name: prefix_mean\nscale: 0.5\n"),
                              ("task", "by_entry_point", "name: echo\nseq_len: 6\neval_samples: 8\n")):
        (conf / group).mkdir(parents=True, exist_ok=True)
        (conf / group / f"{name}.yaml").write_text(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(mixers, "_REGISTRY", dict(mixers._REGISTRY))
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))
    yield conf
    sys.modules.pop("mbplug", None)


@pytest.mark.parametrize("how", ["by_path", "by_entry_point"])
def test_an_outside_mixer_and_task_train_record_and_report(package, tmp_path, how):
    cfg = load([f"hydra.searchpath=[file://{package}]", f"mixer={how}", f"task={how}", *TINY,
                f"results_dir={tmp_path / 'results'}"])
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["mixer"] == cfg["mixer"]["name"] and 0 <= record["final"]["accuracy_in"] <= 1
    assert len(list((tmp_path / "results" / "runs").glob("*.json"))) == 1
    assert execute(cfg)["id"] == record["id"]  # found finished: the same id, not rerun
    assert report.main(["--benchmark", "plugin", f"results_dir={tmp_path / 'results'}"]) == 0
    out = tmp_path / "results" / "plugin" / "test"
    table = pd.read_csv(out / "table.csv")
    assert list(table["mixer"]) == [cfg["mixer"]["name"]] and "accuracy valid (%)" in table.columns
    assert (out / "learning_curves.png").stat().st_size > 0


def test_entry_points_are_listed_and_checked_like_built_in_ones(package):
    assert "prefix_mean" in mixers.available() and "echo" in tasks.available()
    assert set(mixers.options_of("prefix_mean")) == {"scale"}
    with pytest.raises(ConfigError, match=r"mixer: prefix_mean has no option\(s\) \['width'\]"):
        validate(load([f"hydra.searchpath=[file://{package}]", "mixer=by_entry_point", "task=by_entry_point",
                       "+mixer.width=3", *TINY]))


def test_a_dotted_name_that_does_not_load_says_why():
    with pytest.raises(mixers.UnknownMixerError, match=r"mixer 'nowhere_pkg.Mixer' cannot be loaded \(ModuleNotFound"):
        mixers.mixer_class("nowhere_pkg.Mixer")
    with pytest.raises(tasks.UnknownTaskError, match=r"task 'torch.nn.Linear' is .*not a subclass of tasks.base.Task"):
        tasks.task_class("torch.nn.Linear")
