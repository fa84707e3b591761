"""What each mixer trains without weight decay (``Mixer.no_weight_decay``), and that the harness's
AdamW groups follow it (``harness.run.train.param_groups``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mixers
from harness.run.model import SequenceModel
from harness.run.train import learning_rate_overrides, param_groups, weight_decay_exempt
from mixers.base import is_norm
from tests.conftest import MIXER_CASES, case_mixer

REASONS = {"marked", "optimiser override", "per-offset kernel", "norm", "bias", "vector"}


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
def test_every_mixer_declares_consistent_exemptions(case):
    mixer = mixers.build(case_mixer(case), 16, 32, **MIXER_CASES[case])
    named = dict(mixer.named_parameters())
    exempt = mixer.no_weight_decay()
    assert set(exempt) <= set(named), "exemptions name parameters the mixer does not have"
    assert set(exempt.values()) <= REASONS
    norms = {f"{m}.{n}" if m else n for m, sub in mixer.named_modules() if is_norm(sub)
             for n, _ in sub.named_parameters(recurse=False)}
    convs = {f"{m}.weight" for m, sub in mixer.named_modules() if isinstance(sub, nn.Conv1d)}
    for name, p in named.items():
        leaf = name.rsplit(".", 1)[-1]
        must = (p.dim() < 2 or getattr(p, "_no_weight_decay", False) or name in norms or name in convs
                or leaf == "bias" or leaf.endswith("_bias") or getattr(p, "_optim", {}).get("weight_decay") == 0)
        if must:
            assert name in exempt, f"{case}: {name} {tuple(p.shape)} should get no weight decay"
    assert mixer.per_offset_kernels() <= set(named)
    # what stays decayed is a matrix: a linear layer's weight (or a Toeplitz-free mixer's projections)
    assert all(named[n].dim() >= 2 for n in set(named) - set(exempt))


def test_mamba1_a_log_and_d_are_exempt_as_mamba_ssm_marks_them():
    mixer = mixers.build("mamba1", 16, 32, d_state=4, impl="torch")
    exempt = mixer.no_weight_decay()
    assert mixer.inner.A_log.dim() == 2  # (d_inner, d_state): the old rule (decay every matrix) decayed it
    assert exempt["inner.A_log"] == "marked" and exempt["inner.D"] == "marked"
    assert exempt["inner.conv1d.weight"] == "per-offset kernel"
    assert "inner.in_proj.weight" not in exempt and "inner.x_proj.weight" not in exempt


def test_mamba2_a_log_d_and_dt_bias_are_exempt():
    mixer = mixers.build("mamba2", 16, 32, d_state=8, headdim=8, impl="torch")
    exempt = mixer.no_weight_decay()
    for name in ("inner.A_log", "inner.D", "inner.dt_bias"):
        assert exempt[name] == "marked"
    assert exempt["inner.norm.weight"] == "norm"
    assert "inner.in_proj.weight" not in exempt and "inner.out_proj.weight" not in exempt


@pytest.mark.parametrize("name, options", [("tmm", {"heads": 2}), ("tmm", {"heads": 2, "expanded": True}),
                                           ("tmm_flat", {})])
def test_tmm_toeplitz_vectors_and_position_biases_are_exempt(name, options):
    mixer = mixers.build(name, 16, 32, **options)
    exempt = mixer.no_weight_decay()
    layers = ("toeplitz", "toeplitz2") if options.get("expanded") else ("toeplitz",)
    for layer in layers:
        assert getattr(mixer, layer).weight.dim() == 2 and getattr(mixer, layer).bias.dim() == 2
        assert exempt[f"{layer}.weight"] == "per-offset kernel"
        assert exempt[f"{layer}.bias"] == "bias"
    if name == "tmm":
        assert "in_proj.weight" not in exempt and "out_proj.weight" not in exempt
    else:
        assert set(exempt) == {n for n, _ in mixer.named_parameters()}  # the flat layer: nothing decays


def _model(mixer: str, **options) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=32, mixer=mixer, mixer_options=options)


def _group_of(groups: list[dict], p: torch.Tensor) -> dict:
    return next(g for g in groups if any(q is p for q in g["params"]))


def test_param_groups_follow_the_exemptions_and_nanogpt_for_the_backbone():
    model = _model("mamba1", d_state=4, impl="torch")
    groups = param_groups(model, 0.1)
    exempt = weight_decay_exempt(model)
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named)
    for name, p in named.items():
        assert _group_of(groups, p)["weight_decay"] == (0.0 if name in exempt else 0.1), name
    assert exempt["blocks.0.mixer.inner.A_log"] == "marked"
    # the backbone as nanoGPT: embedding, MLP matrices and head decayed; norms and biases not
    for name in ("embed.weight", "head.weight", "blocks.0.mlp.fc.weight", "blocks.1.mlp.proj.weight"):
        assert name not in exempt
    for name in ("norm.weight", "norm.bias", "blocks.0.norm1.weight", "blocks.1.mlp.fc.bias"):
        assert name in exempt
    optimizer = torch.optim.AdamW(groups, lr=1e-3)  # every parameter once
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_exempt_parameters_are_not_pulled_toward_zero():
    """With zero gradients, AdamW's decoupled decay alone moves a decayed weight and leaves an exempt one."""
    model = _model("tmm", heads=2)
    optimizer = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    kernel, proj = model.blocks[0].mixer.toeplitz.weight, model.blocks[0].mixer.in_proj.weight
    before = kernel.detach().clone(), proj.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(kernel, before[0])
    assert torch.allclose(proj, before[1] * (1 - 0.1 * 0.5))


def test_hyena_filter_learning_rate_follows_the_run_unless_fixed():
    model = _model("hyena", filter_width=16)
    overrides = learning_rate_overrides(model)
    assert overrides and all(v == {"weight_decay": 0.0} for v in overrides.values())
    assert all(".filter." in name for name in overrides)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-2)
    assert {g["lr"] for g in optimizer.param_groups} == {3e-2}  # safari: lr: ${optimizer.lr}
    fixed = _model("hyena", filter_width=16, filter_lr=1e-3)
    optimizer = torch.optim.AdamW(param_groups(fixed, 0.1), lr=3e-2)
    filter_weight = fixed.blocks[0].mixer.filter.mlp[0].weight
    assert _group_of(optimizer.param_groups, filter_weight)["lr"] == 1e-3
    assert _group_of(optimizer.param_groups, filter_weight)["weight_decay"] == 0.0
    assert weight_decay_exempt(fixed)["blocks.0.mixer.filter.mlp.0.weight"] == "optimiser override"


def test_the_matrices_rule_reproduces_the_older_grouping():
    """``train.weight_decay_exempt=matrices``: every parameter of two or more dimensions decayed."""
    model = _model("mamba1", d_state=4, impl="torch")
    groups = param_groups(model, 0.1, "matrices")
    for name, p in model.named_parameters():
        assert _group_of(groups, p)["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0), name
    assert "blocks.0.mixer.inner.A_log" not in weight_decay_exempt(model, "matrices")
    with pytest.raises(ValueError, match="conventions, matrices"):
        weight_decay_exempt(model, "all")


@pytest.mark.parametrize("rule", ["conventions", "matrices"])
def test_training_leaves_unused_toeplitz_lags_alone_unless_the_old_rule_decays_them(rule):
    """Lags past the longest training input get no gradient, so only weight decay could move them."""
    from harness.run.config import load, make_model, validate
    from harness.run.train import train

    cfg = load(["mixer=tmm", "mixer.heads=2", "train=test", "train.steps=3", "train.eval_every=3",
                "train.progress=false", "train.lr=0.1", "train.weight_decay=0.5", "train.warmup_steps=0",
                "train.min_lr_ratio=1.0", "train.grad_clip=0", f"train.weight_decay_exempt={rule}",
                "task.max_train_len=8", "task.eval_lengths=[16]", "task.eval_samples=4"])
    task, train_cfg = validate(cfg, check_device=False)
    torch.manual_seed(0)
    model = make_model(cfg["model"], cfg["mixer"], task)
    unused = slice(task.max_train_input_len(), model.max_len)  # lags no training input reaches
    kernel = model.blocks[0].mixer.toeplitz.weight
    before = kernel.detach()[:, unused].clone()
    train(model, task, train_cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    after = kernel.detach()[:, unused]
    if rule == "conventions":
        assert torch.equal(after, before)
    else:
        assert torch.allclose(after, before * (1 - 0.1 * 0.5) ** 3)
