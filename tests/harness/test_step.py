"""How a training step runs (``train.compile``): padding to buckets keeps the loss, ``compile`` trains
as eager does, a model that cannot be compiled falls back to eager and says so, CUDA graphs on GPU."""
from __future__ import annotations

import os

import pytest
import torch

from harness.run.config import ConfigError, make_model, validate
from harness.run.execute import execute
from harness.run.records import run_id
from harness.run.step import bucket_length, pad_batch, scored_only
from harness.run.train import make_optimizer, step_runner, train
from tests.harness.helpers import TINY, make_config

# copy draws batches of varying width on CPU: padding and buckets are exercised
STEP_RUN = ("mixer=attention", "mixer.heads=2", "train.steps=6", "train.eval_every=3", "train.warmup_steps=1",
            "task.max_train_len=6", "task.eval_lengths=[6]", "task.eval_samples=8", "model.d_model=16",
            "model.n_layers=1", "train.batch_size=8")
# compiled kernels sum in another order: losses agree to this relative tolerance (measured: about 1e-6)
COMPILE_RTOL = 1e-4


def losses(cfg: dict, device=torch.device("cpu")) -> tuple[list[float], dict]:
    task, train_cfg = validate(cfg)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg["model"], cfg["mixer"], task).to(device)
    result = train(model, task, train_cfg, device, torch.Generator(device=device).manual_seed(cfg["seed"]))
    return [p["train_loss"] for p in result.curve] + [result.final["loss_all"]], result.throughput["step"]


def test_bucket_length_is_the_next_power_of_two_capped_at_the_longest():
    assert [bucket_length(n, 13) for n in (1, 2, 3, 5, 8, 9, 13)] == [1, 2, 4, 8, 8, 13, 13]
    assert bucket_length(20, 13) == 20  # never shorter than the batch


def test_padding_at_the_end_keeps_the_loss_and_the_gradients(generator):
    cfg = make_config(*STEP_RUN)
    task, _ = validate(cfg)
    torch.manual_seed(0)
    model = make_model(cfg["model"], cfg["mixer"], task)
    longest = task.max_train_input_len()
    batch = next(b for b in (task.train_batch(2, generator) for _ in range(50)) if b.inputs.shape[1] < longest)
    padded = pad_batch(batch, longest)
    assert padded.inputs.shape[1] == longest and not padded.mask[:, batch.inputs.shape[1]:].any()
    grads = []
    for b in (batch, padded):
        model.zero_grad()
        loss = task.loss(model(b.inputs), b)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MIXBENCH_SLOW"), reason="inductor compiles for minutes on 2 shared CPU "
                    "cores (about 3 min measured); MIXBENCH_SLOW=1 runs it")
def test_compile_trains_as_eager_does():
    """torch.compile of forward + loss on a tiny attention model: the same losses as eager within
    COMPILE_RTOL at every evaluation, and the record says compile ran (passed; about 3 min on 2 shared
    CPU cores, almost all of it inductor compiling one graph per bucket)."""
    eager, eager_info = losses(make_config(*STEP_RUN))
    compiled, info = losses(make_config(*STEP_RUN, "train.compile=compile"))
    assert eager_info == {"asked": "none", "ran": "none", "buckets": [], "head": "all"}
    assert info["asked"] == "compile" and info["ran"] == "compile", info
    assert set(info["buckets"]) <= {4, 8, 13} and info["buckets"]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=COMPILE_RTOL, atol=0)


def test_a_model_that_cannot_be_compiled_falls_back_to_eager_and_says_why(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("this backend refuses the graph")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: refuse)
    eager, _ = losses(make_config(*STEP_RUN))
    fallen, info = losses(make_config(*STEP_RUN, "train.compile=compile"))
    assert info["ran"] == "eager" and info["fallback_step"] == 0 and "refuses the graph" in info["why"]
    # eager (unpadded) from the failed first step on: the same losses as a plain eager run
    torch.testing.assert_close(torch.tensor(fallen), torch.tensor(eager), rtol=1e-5, atol=0)


def test_compile_mode_is_checked_and_none_keeps_record_ids():
    with pytest.raises(ConfigError, match=r"train\.compile: must be one of none, compile, cuda_graph"):
        validate(make_config(*TINY, "train.compile=graphs"))
    with pytest.raises(ConfigError, match=r"train\.compile: cuda_graph captures CUDA kernels"):
        validate(make_config(*TINY, "train.compile=cuda_graph", "device=cpu"))
    cfg = make_config(*TINY)
    old = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "compile"}}
    assert run_id(cfg) == run_id(old)
    assert run_id(make_config(*TINY, "train.compile=compile")) != run_id(cfg)


def test_the_record_says_how_the_step_ran(tmp_path):
    record = execute(make_config(*TINY, results_dir=tmp_path))
    assert record["throughput"]["step"] == {"asked": "none", "ran": "none", "buckets": [], "head": "all"}


# MQAR's mixture (4-16 queries in 32-64 positions), small enough for the suite
MQAR_RUN = ("task=mqar", "task.vocab_size=128", "task.train_settings=[[32,4],[64,8],[64,16]]",
            "task.train_weights=[1,1,1]", "task.test_settings=[[64,8]]", "task.eval_samples=8", "model.d_model=16",
            "model.n_layers=2", "train.batch_size=8", "train.steps=4", "train.eval_every=2", "train.warmup_steps=1")


def test_scored_only_gathers_every_scored_position_in_order():
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    targets = torch.arange(12).view(2, 6)
    from tasks.base import Batch
    index, scored = scored_only(Batch(targets, targets, mask), 3)
    assert index[0].tolist() == [1, 3, 4] and index[1, :2].tolist() == [0, 5]
    assert scored.targets[0].tolist() == [1, 3, 4] and scored.mask.tolist() == [[True] * 3, [True, True, False]]


def test_every_tasks_scored_bound_holds(generator):
    """``Task.max_scored_positions`` bounds the scored positions of every training batch it covers."""
    for args in (MQAR_RUN, ("task=mqar", "task.train_settings=[[64,4]]", "task.train_weights=[1]"),
                 ("task=copy",), ("task=lm_text",), ("task=noisy_recall",), ("task=selective_copy",)):
        task, _ = validate(make_config(*args))
        for _ in range(30):
            batch = task.train_batch(16, generator)
            bound = task.max_scored_positions(batch.inputs.shape[1])
            if bound is not None:
                assert int(batch.mask.sum(1).max()) <= bound, args


@pytest.mark.parametrize("mixer", ["attention", "tmm", "mamba"])
def test_the_head_on_scored_positions_gives_the_whole_heads_loss_and_gradients(mixer, generator):
    """One training step's loss and every parameter's gradient, with the LM head on the scored
    positions alone and on every position, on MQAR's mixture batches (4 of 32, 16 of 64 scored)."""
    cfg = make_config(*MQAR_RUN, f"mixer={mixer}", *(["mixer.headdim=8"] if mixer == "mamba" else []))
    task, train_cfg = validate(cfg)
    torch.manual_seed(0)
    model = make_model(cfg["model"], cfg["mixer"], task)
    for _ in range(4):
        batch = task.train_batch(4, generator)
        grads = {}
        for head in ("all", "scored"):
            runner = step_runner(model, task, train_cfg.__class__(**{**vars(train_cfg), "head_positions": head}),
                                 make_optimizer(model, train_cfg, torch.device("cpu")), torch.device("cpu"))
            model.zero_grad()
            loss = runner._forward_loss(batch)
            loss.backward()
            grads[head] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
            assert runner.info["head"] == head
        torch.testing.assert_close(grads["scored"][0], grads["all"][0], rtol=1e-5, atol=1e-7)
        for a, b in zip(grads["scored"][1], grads["all"][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_evaluation_on_scored_positions_gives_the_whole_heads_loss_and_metrics(monkeypatch):
    """MQAR's evaluation sets (4 of 32 and 24 of 120 positions scored): loss and accuracy with the head
    on the scored positions equal those of the whole head."""
    from harness.run import train as train_module
    cfg = make_config(*MQAR_RUN, "task.test_settings=[[32,4],[120,24]]")
    task, _ = validate(cfg)
    torch.manual_seed(0)
    model = make_model(cfg["model"], cfg["mixer"], task)
    sets = task.eval_sets()
    scored = train_module.evaluate(model, task, sets, 3, torch.device("cpu"), "fp32")
    monkeypatch.setattr(train_module, "scored_head_applies", lambda m, t: False)
    whole = train_module.evaluate(model, task, sets, 3, torch.device("cpu"), "fp32")
    for name in sets:
        for key in whole[name]:
            assert abs(scored[name][key] - whole[name][key]) <= 1e-5 * max(1.0, abs(whole[name][key])), (name, key)


def test_a_run_with_the_scored_head_trains_as_with_the_whole_head():
    """Whole MQAR runs, scored head vs whole head: the same losses at every evaluation; the record says
    which head ran; the default (scored) keeps the ids of records written before the option."""
    whole, whole_info = losses(make_config(*MQAR_RUN, "train.head_positions=all"))
    scored, info = losses(make_config(*MQAR_RUN))
    assert whole_info["head"] == "all" and info["head"] == "scored"
    torch.testing.assert_close(torch.tensor(scored), torch.tensor(whole), rtol=1e-4, atol=0)
    cfg = make_config(*MQAR_RUN)
    old = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "head_positions"}}
    assert run_id(cfg) == run_id(old) != run_id(make_config(*MQAR_RUN, "train.head_positions=all"))
    with pytest.raises(ConfigError, match=r"train\.head_positions: must be one of scored, all"):
        validate(make_config(*TINY, "train.head_positions=some"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixer", ["attention", "tmm"])
def test_cuda_graph_trains_as_eager_does(mixer):
    """The whole step as a CUDA graph (fp32, so that rounding stays small): the same losses as eager
    within 1e-3 relative, and the record says the graph ran."""
    run = (*STEP_RUN[1:], f"mixer={mixer}", "device=cuda", "train.precision=fp32", "train.steps=12",
           "train.eval_every=4")
    run = tuple(a for a in run if not (mixer != "attention" and a.startswith("mixer.heads")))
    eager, _ = losses(make_config(*run), torch.device("cuda"))
    graphed, info = losses(make_config(*run, "train.compile=cuda_graph"), torch.device("cuda"))
    assert info["ran"] == "cuda_graph", info
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-3, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_with_the_scored_head_trains_as_eager_with_the_whole_head():
    """MQAR's mixture as a CUDA graph with the head on the scored positions (fp32): the losses of an
    eager run with the whole head, within 1e-3 relative."""
    run = (*MQAR_RUN, "mixer=attention", "device=cuda", "train.precision=fp32", "train.steps=12", "train.eval_every=4")
    eager, _ = losses(make_config(*run, "train.head_positions=all"), torch.device("cuda"))
    graphed, info = losses(make_config(*run, "train.compile=cuda_graph"), torch.device("cuda"))
    assert info["ran"] == "cuda_graph" and info["head"] == "scored", info
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-3, atol=0)
