"""Backbone options: the short convolution (Zoology's BaseConv), no MLP, the MLP-first block, no final
norm, the shared initialisation policies, the linear schedule, and what records say of them."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.run import records
from harness.run.config import ConfigError, make_model, validate
from harness.run.execute import execute
from harness.run.model import SequenceModel, ShortConv
from harness.run.train import lr_factor, weight_decay_exempt
from mixers.ops import flops as F
from tests.harness.helpers import make_config

TINY = ("train.steps=4", "train.eval_every=2", "train.warmup_steps=1", "task.max_train_len=4", "task.eval_lengths=[4]",
        "task.eval_samples=8", "model.d_model=16", "mixer.heads=2")


def reference_short_conv(layer: ShortConv, u: torch.Tensor) -> torch.Tensor:
    """``conv(u)[t] = bias + sum_j w[j] u[t - (k - 1) + j]`` (zero before the start), times the projection, plus ``u``."""
    k, n = layer.kernel_size, u.shape[1]
    w, b = layer.conv.weight[:, 0, :], layer.conv.bias  # (d, k), (d,)
    conv = torch.stack([b + sum(w[:, j] * u[:, t - (k - 1) + j] for j in range(k) if t - (k - 1) + j >= 0)
                        for t in range(n)], dim=1)
    return conv * layer.projection(u) + u


@pytest.mark.parametrize("kernel_size", [1, 3, 4])
def test_short_conv_equals_its_reference_in_values_and_gradients(kernel_size):
    torch.manual_seed(0)
    layer = ShortConv(6, kernel_size).double()
    u = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    fast, slow = layer(u), reference_short_conv(layer, u)
    assert torch.allclose(fast, slow, atol=1e-12)
    g = torch.randn_like(fast)
    grads = torch.autograd.grad(fast, [u, *layer.parameters()], g)
    grads_ref = torch.autograd.grad(slow, [u, *layer.parameters()], g)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-12)


MAMBA = ("mamba", {"impl": "torch", "d_state": 8, "headdim": 8, "chunk_size": 4})
BACKBONES = {  # each with a mixer (three kinds of decoding state: recurrent, cache, Toeplitz)
    "short_conv": (dict(short_conv=3), MAMBA),
    "short_conv_no_mlp": (dict(short_conv=4, mlp_ratio=0), ("attention", {"heads": 2})),
    "tmm_repro": (dict(order="mlp_first", mlp_activation="silu", final_norm=False, init="kaiming"), ("tmm", {"heads": 2})),
    "normal_002": (dict(init="normal_002", short_conv=2, tie_embeddings=True), ("tmm", {"heads": 2})),
}


def tiny(mixer: str, options: dict, **backbone) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer=mixer, mixer_options=options,
                         **backbone).double().eval()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_is_causal_and_decodes_as_it_runs_in_parallel(backbone):
    options, (mixer, mixer_options) = BACKBONES[backbone]
    model = tiny(mixer, mixer_options, **options)
    tokens = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        changed = tokens.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 11
        assert torch.allclose(model(changed)[:, :12], full[:, :12], atol=1e-12)  # strictly causal (FFT rounding aside)
        assert not torch.allclose(model(changed)[:, 12], full[:, 12])
        logits, states = model.prefill(tokens[:, :6])
        assert torch.allclose(logits, full[:, :6], atol=1e-10)
        for t in range(6, 20):
            step_logits, states = model.decode(tokens[:, t], states)
            assert torch.allclose(step_logits, full[:, t], atol=1e-9), t


def test_short_conv_parameters_flops_state_and_weight_decay():
    plain, conv = tiny("attention", {"heads": 2}), tiny("attention", {"heads": 2}, short_conv=3)
    d, k, L, n = 16, 3, 2, 20
    per_layer = d * k + d + d * d + d + 2 * d  # filter + its bias, projection + its bias, the sublayer's norm
    assert conv.parameter_counts()["total"] - plain.parameter_counts()["total"] == L * per_layer
    extra = L * (F.causal_depthwise_conv(n, d, k) + 2 * n * d * d + 4 * n * d + F.layer_norm(n, d) + n * d)
    assert conv.flop_terms(n)["short_conv"] == pytest.approx(extra)
    assert conv.flops(n) - plain.flops(n) == pytest.approx(extra)
    assert conv.state_bits(n) - plain.state_bits(n) == L * d * (k - 1) * 32
    exempt = weight_decay_exempt(conv)
    assert exempt["blocks.0.short_conv.conv.weight"] == "per-offset kernel"
    assert exempt["blocks.1.short_conv.conv.bias"] == "bias" and exempt["blocks.0.conv_norm.weight"] == "norm"
    assert "blocks.0.short_conv.projection.weight" not in exempt


def test_no_mlp_has_no_mlp_parameters_or_flops():
    model = tiny("attention", {"heads": 2}, mlp_ratio=0)
    assert all(b.mlp is None and b.norm2 is None for b in model.blocks)
    assert not any(".mlp." in name for name, _ in model.named_parameters())
    terms = model.flop_terms(20)
    assert terms["mlp"] == 0
    assert terms["norm_residual"] == (2 + 1) * F.layer_norm(20, 16) + 2 * 20 * 16  # one norm and add per block


def test_defaults_draw_the_same_model_as_before_the_options():
    """Options off: the same parameters (names and values) as the layout before the options existed."""
    torch.manual_seed(0)
    old = SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer="tmm", mixer_options={"heads": 2})
    torch.manual_seed(0)
    new = SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer="tmm", mixer_options={"heads": 2},
                        init="reference", short_conv=0, order="mixer_first", mlp_activation="gelu", final_norm=True)
    a, b = dict(old.named_parameters()), dict(new.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_normal_002_initialises_every_linear_layer_and_embedding():
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=512, d_model=128, n_layers=2, max_len=64, mixer="mamba",
                          mixer_options={"version": 1, "impl": "torch"}, init="normal_002")
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    mixer = model.blocks[0].mixer.inner  # mamba_ssm's Mamba (simple) layer
    assert mixer.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)  # into the residual
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)
    assert torch.all(mixer.dt_proj.bias > -10) and mixer.dt_proj.bias.abs().sum() > 0  # mamba_ssm's dt init kept
    assert torch.equal(mixer.A_log[0], torch.log(torch.arange(1, mixer.d_state + 1, dtype=torch.float32)))


def test_kaiming_is_the_tmm_authors_init():
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=512, d_model=128, n_layers=2, max_len=64, mixer="tmm", mixer_options={"heads": 4},
                          init="kaiming", order="mlp_first", mlp_activation="silu", final_norm=False)
    assert model.embed.weight.std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding's N(0, 1)
    assert model.head.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert model.blocks[1].mlp.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert model.blocks[1].mlp.proj.weight.std().item() == pytest.approx(math.sqrt(2 / model.blocks[1].mlp.hidden), rel=0.05)
    assert all(b.mlp.fc.bias.abs().sum() == 0 for b in model.blocks)
    assert isinstance(model.norm, nn.Identity)


def test_linear_schedule_decays_linearly_to_its_floor():
    assert lr_factor(0, 10, 110, 0.0, "linear") == pytest.approx(0.1)
    assert lr_factor(10, 10, 110, 0.0, "linear") == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.0, "linear") == pytest.approx(0.5)
    assert lr_factor(110, 10, 110, 0.0, "linear") == pytest.approx(0.0)
    assert lr_factor(60, 10, 110, 0.1, "cosine") == pytest.approx(0.55)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_training_follows_the_configured_schedule(tmp_path, schedule):
    """The learning rate that the optimiser really uses at each step is ``lr_factor`` of ``train.schedule``."""
    cfg = make_config(*TINY, f"train.schedule={schedule}", "train.steps=12", "train.warmup_steps=2",
                      "train.eval_every=12", results_dir=tmp_path)
    task, tc = validate(cfg)
    model = make_model(cfg["model"], cfg["mixer"], task)
    from harness.run.train import Trainer
    trainer = Trainer(model, task, tc, torch.device("cpu"), {})
    generator = torch.Generator().manual_seed(0)
    for step in range(tc.steps):
        trainer.runner(task.train_batch(tc.batch_size, generator), step)
        trainer.optimizer.zero_grad(set_to_none=True)
        expected = tc.lr * lr_factor(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio, schedule)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_new_backbone_keys_keep_old_ids_at_their_defaults(tmp_path):
    cfg = make_config(*TINY, results_dir=tmp_path)
    added = ("init", "short_conv", "order", "mlp_activation", "final_norm")
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k not in added},
           "train": {k: v for k, v in cfg["train"].items() if k != "schedule"}}
    assert records.run_id(old) == records.run_id(cfg)
    for key, value in (("init", "normal_002"), ("short_conv", 4), ("order", "mlp_first"), ("mlp_activation", "silu"),
                       ("final_norm", False)):
        assert records.run_id({**cfg, "model": {**cfg["model"], key: value}}) != records.run_id(cfg), key
    assert records.run_id({**cfg, "train": {**cfg["train"], "schedule": "linear"}}) != records.run_id(cfg)


@pytest.mark.parametrize("override,message", [
    ("model.init=xavier", "model.init: must be one of reference, normal_002, kaiming"),
    ("model.short_conv=-1", "model.short_conv: must be 0 (off) or a kernel size >= 1"),
    ("model.order=mixer_last", "model.order: must be one of mixer_first, mlp_first"),
    ("model.mlp_activation=relu", "model.mlp_activation: must be one of gelu, silu"),
    ("train.schedule=step", "train.schedule: must be one of cosine, linear"),
])
def test_bad_backbone_options_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make_config(*TINY, override))


def test_no_mlp_cannot_be_matched_by_its_width():
    with pytest.raises(ConfigError, match="model.match_by: 'd_model\\+mlp' moves the MLP's width, but mlp_ratio is 0"):
        validate(make_config(*TINY, "model.mlp_ratio=0", "+model.match_params=20000"))
    cfg = make_config(*TINY, "model.mlp_ratio=0", "+model.match_params=20000", "+model.match_by=d_model",
                      "+model.match_tolerance=0.2")
    task, _ = validate(cfg)
    assert make_model(cfg["model"], cfg["mixer"], task).blocks[0].mlp is None


def test_record_states_the_recipe_as_run(tmp_path):
    record = execute(make_config(*TINY, "model.short_conv=3", "model.init=normal_002", results_dir=tmp_path))
    recipe = record["recipe"]
    assert recipe["init"] == "normal_002" and recipe["short_conv"] == 3
    assert recipe["precision"] == "fp32" and recipe["schedule"]["name"] == "cosine"
    assert recipe["weight_decay_exempt"]["blocks.0.short_conv.conv.weight"] == "per-offset kernel"
    assert recipe["weight_decay_exempt"]["blocks.0.mixer.toeplitz.weight"] == "per-offset kernel"
    assert "blocks.0.mlp.fc.weight" not in recipe["weight_decay_exempt"]
    assert recipe["block"] == {"order": "mixer_first", "mlp": {"kind": "mlp", "hidden": 64, "activation": "gelu"},
                               "final_norm": True, "tied_head": False}
    assert recipe["parameter_overrides"] == {}


def test_record_lists_mamba1s_a_log_and_hyenas_filter_settings(tmp_path):
    mamba = execute(make_config(*TINY[:-1], "mixer=mamba1", "mixer.impl=torch", "mixer.d_state=4",
                                results_dir=tmp_path))
    assert mamba["recipe"]["weight_decay_exempt"]["blocks.0.mixer.inner.A_log"] == "marked"
    hyena = execute(make_config(*TINY[:-1], "mixer=hyena", results_dir=tmp_path))
    overrides = hyena["recipe"]["parameter_overrides"]
    assert overrides and all("weight_decay" in v for v in overrides.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_short_conv_backbone_on_cuda_bf16_matches_fp32_on_cpu():
    """Zoology's backbone (short conv, no MLP, tied head) under bf16 autocast on CUDA: logits and
    gradients within bf16 rounding of the fp32 CPU model's."""
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=64, d_model=64, n_layers=2, max_len=64, mixer="attention",
                          mixer_options={"heads": 4}, short_conv=3, mlp_ratio=0, tie_embeddings=True, init="normal_002")
    tokens = torch.randint(0, 64, (4, 64))
    cpu_logits = model(tokens)
    cpu_logits.square().mean().backward()
    cpu_grad = model.blocks[0].short_conv.conv.weight.grad.clone()
    model.zero_grad()
    gpu = model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = gpu(tokens.cuda())
    logits.float().square().mean().backward()
    scale = cpu_logits.abs().max()
    assert (logits.float().cpu() - cpu_logits).abs().max() <= 2e-2 * scale
    grad = gpu.blocks[0].short_conv.conv.weight.grad.float().cpu()
    assert (grad - cpu_grad).abs().max() <= 5e-2 * cpu_grad.abs().max()
