"""The activation memory a record carries: the bytes autograd saves for backward in one training
step, the same count the scaling benchmark takes (one home), device independent."""
from __future__ import annotations

import copy

import torch

from harness.bench import measure
from harness.run import memory
from harness.run.config import make_model, validate
from harness.run.execute import execute
from harness.run.train import draw_batch, train
from tests.harness.helpers import TINY, make_config

RUN = ("mixer=attention", "mixer.heads=2", "train.steps=2", "train.eval_every=2", "train.warmup_steps=1",
       "task.max_train_len=6", "task.eval_lengths=[6]", "task.eval_samples=8", "model.d_model=16",
       "model.n_layers=2", "train.batch_size=8")


def test_the_record_carries_the_bytes_one_training_step_saves_for_backward():
    cfg = make_config(*RUN)
    task, train_cfg = validate(cfg)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg["model"], cfg["mixer"], task)
    twin = copy.deepcopy(model)
    batch = draw_batch(task, 0, train_cfg.batch_size, torch.Generator().manual_seed(cfg["seed"]))
    with memory.saved_activation_bytes() as saved:
        loss = task.loss(twin(batch.inputs), batch)
    loss.backward()  # what was saved is what backward needs: it runs
    result = train(model, task, train_cfg, torch.device("cpu"), torch.Generator().manual_seed(cfg["seed"]))
    assert result.memory["saved_bytes"] == saved["bytes"] > 0
    assert "saves for backward" in result.memory["saved_method"]


def test_more_layers_save_more_and_the_record_says_so(tmp_path):
    one = execute(make_config(*RUN, "model.n_layers=1", results_dir=tmp_path))["memory"]["saved_bytes"]
    two = execute(make_config(*RUN, results_dir=tmp_path))["memory"]["saved_bytes"]
    assert 1.3 * one < two < 2 * one  # the mixer blocks double, the embedding and head do not


def test_the_scaling_benchmark_counts_with_the_same_function():
    assert measure.saved_activation_bytes is memory.saved_activation_bytes


def test_counting_saved_bytes_frees_the_graph_and_keeps_backward_exact():
    """A saved output (sigmoid saves its result) must not keep its own graph alive once the counting
    block's outputs are dropped (it leaked every GPU run's first graph and broke CUDA graph capture);
    a backward through the counted graph gives the gradients of an uncounted one."""
    import gc
    import weakref

    x = torch.randn(1000, requires_grad=True, generator=torch.Generator().manual_seed(0))
    with memory.saved_activation_bytes() as saved:
        y = torch.sigmoid(x * 2)
        z = y.exp().sum()
    alive = weakref.ref(y)
    del y, z
    gc.collect()
    assert alive() is None and saved["bytes"] > 0
    with memory.saved_activation_bytes():
        torch.sigmoid(x * 2).exp().sum().backward()
    counted, x.grad = x.grad.clone(), None
    torch.sigmoid(x * 2).exp().sum().backward()
    torch.testing.assert_close(counted, x.grad, rtol=0, atol=0)
