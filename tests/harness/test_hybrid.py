"""Hybrid stacks (``model.stack``: a mixer per layer) and the channel mixer (``model.channel_mixer``):
the config's expansion, the errors that name the field, FLOPs, parameters and state summed over the
layers, causality and decoding of a hybrid, SwiGLU against its formula, matching, records and ids."""
from __future__ import annotations

import pytest
import torch

import mixers
from harness.run import records
from harness.run import stack as stacks
from harness.run.config import ConfigError, load, make_model, validate
from harness.run.execute import execute
from harness.run.model import SequenceModel, SwiGLU, swiglu_hidden
from harness.run.train import weight_decay_exempt
from harness.report.kit import group_key
from mixers.ops import flops as F
from tests.harness.helpers import TINY, make_config

MAMBA = {"name": "mamba", "impl": "torch", "d_state": 8, "headdim": 8, "chunk_size": 4}
# three kinds of decoding state: a recurrent state (gla), a KV cache (attention), an input history (tmm)
HYBRID = [{"name": "gla", "heads": 2, "impl": "chunked", "chunk_size": 4, "subchunk_size": 2},
          {"name": "attention", "heads": 2}, {"name": "tmm", "heads": 2}]


def tiny(stack: list[dict] | None = None, **backbone) -> SequenceModel:
    torch.manual_seed(0)
    n_layers = len(stack) if stack else 2
    return SequenceModel(vocab_size=11, d_model=16, n_layers=n_layers, max_len=20, mixer="attention",
                         mixer_options={"heads": 2}, stack=stack, **backbone).double().eval()


# ---- the config ---------------------------------------------------------------------------------
def test_stack_entries_expand_to_every_layers_options():
    cfg = load(["mixer=gla", "mixer.heads=2", "model.n_layers=4",
                "model.stack=[mixer,attention_nope,{name:based_linear,heads:2},{name:mixer,chunk_size:32}]"])
    stack = cfg["model"]["stack"]
    assert stack[0] == cfg["mixer"]  # the mixer group, its override included
    assert stack[1] == load(["mixer=attention_nope"])["mixer"]  # a file of conf/mixer/, as mixer=<file> composes it
    assert stack[2] == {**load(["mixer=based_linear"])["mixer"], "heads": 2}
    assert stack[3] == {**cfg["mixer"], "chunk_size": 32}
    assert stacks.expand(cfg) == cfg  # expanding an expanded config changes nothing
    assert records.mixer_label(cfg) == "gla+attention+based+gla"


@pytest.mark.parametrize("name", sorted(p.stem for p in (stacks.CONF_DIR / "mixer").glob("*.yaml")))
def test_a_stack_entry_is_what_hydra_composes_for_its_file(name):
    assert stacks.mixer_file_options(name) == load([f"mixer={name}"])["mixer"]


def test_a_stack_of_the_mixer_group_alone_is_the_plain_model():
    plain = load(["mixer=gla", "mixer.heads=2"])
    for stack in ("[mixer,mixer]", "[mixer,{name:mixer}]"):
        same = load(["mixer=gla", "mixer.heads=2", f"model.stack={stack}"])
        assert same["model"]["stack"] is None and records.run_id(same) == records.run_id(plain)
    other = load(["mixer=gla", "mixer.heads=2", "model.stack=[mixer,gla]"])  # gla.yaml's heads, not the group's
    assert other["model"]["stack"] is not None and records.run_id(other) != records.run_id(plain)


def test_plain_runs_keep_their_ids():
    """The new keys at their defaults leave a plain run's id what it was before they existed."""
    cfg = make_config(*TINY)
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items()
                            if k not in ("stack", "channel_mixer", "swiglu_multiple_of")}}
    assert records.run_id(old) == records.run_id(cfg)
    assert records.record_path("runs", old) == records.record_path("runs", cfg)
    for changed in ("model.channel_mixer=swiglu", "model.stack=[mixer,attention]"):
        assert records.run_id(make_config(*TINY, changed)) != records.run_id(cfg)


@pytest.mark.parametrize("overrides,message", [
    (["model.stack=[mixer,foo]"], "model.stack[1]: unknown mixer 'foo'"),
    (["model.stack=[mixer,{heads:2}]"], "model.stack[1]: a mapping entry needs a name"),
    (["model.stack=[mixer,{name:nope}]"], "model.stack[1].name: unknown mixer 'nope'"),
    (["model.stack=[mixer,attention,attention]"], "model.stack: has 3 layers (tmm+attention×2) but model.n_layers is 2"),
    (["model.stack=[gla,attention]"], "model.stack: has no layer of the mixer group (tmm"),
    (["model.stack=[mixer,{name:attention,bogus:1}]"], "model.stack[1]: attention has no option(s) ['bogus']"),
    (["model.stack=[mixer,{name:attention,heads:0}]"], "model.stack[1].heads: must be an integer >= 1"),
    (["model.stack=[mixer,{name:attention,heads:two}]"], "model.stack[1].heads: must be an integer"),
    (["model.stack=[]"], "model.stack: must be null"),
    (["model.channel_mixer=moe"], "model.channel_mixer: must be one of mlp, swiglu"),
    (["model.swiglu_multiple_of=0"], "model.swiglu_multiple_of: must be an integer >= 1"),
])
def test_bad_stacks_and_channel_mixers_name_the_field_before_training(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_config(*TINY, *overrides))
    assert message in str(err.value)


def test_a_layer_that_cannot_be_built_names_the_stack(tmp_path):
    cfg = make_config(*TINY, "model.stack=[mixer,{name:mamba,impl:torch,headdim:5}]")  # 2 * 16 not divisible by 5
    task, _ = validate(cfg)
    with pytest.raises(ConfigError, match=r"mixer \(tmm\+mamba\)"):
        make_model(cfg["model"], cfg["mixer"], task)


# ---- the model ----------------------------------------------------------------------------------
def test_a_hybrids_flops_parameters_and_state_are_its_layers_summed():
    n, d = 20, 16
    hybrid, plain = tiny(HYBRID), tiny([HYBRID[1]] * 3)
    layers = [mixers.build(layer["name"], d, 20, **{k: v for k, v in layer.items() if k != "name"}) for layer in HYBRID]
    assert hybrid.flop_terms(n)["mixer"] == pytest.approx(sum(m.flops(n) for m in layers))
    # everything else (embedding, MLPs, norms, head) is the same as in a model of one mixer
    assert hybrid.flops(n) - hybrid.flop_terms(n)["mixer"] == pytest.approx(plain.flops(n) - plain.flop_terms(n)["mixer"])
    assert hybrid.parameter_flops(n) == pytest.approx(sum(m.parameter_flops(n) for m in layers))
    assert hybrid.parameter_counts()["mixer"] == sum(p.numel() for m in layers for p in m.parameters())
    assert hybrid.state_bits(n, 1) == sum(m.state_size(n) for m in layers)
    summary = hybrid.layer_summary(n)
    assert [s["mixer"] for s in summary] == ["gla", "attention", "tmm"]
    assert [s["state"] for s in summary] == [m.state_size(n) for m in layers]
    assert hybrid.mixer_name == "gla+attention+tmm"
    assert hybrid.backend == "; ".join(f"{layer['name']}: {m.backend}" for layer, m in zip(HYBRID, layers))


def test_a_hybrid_is_causal_and_decodes_as_it_runs_in_parallel():
    model = tiny(HYBRID, short_conv=2, channel_mixer="swiglu")
    tokens = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        changed = tokens.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 11
        after = model(changed)
        assert torch.allclose(after[:, :12], full[:, :12], atol=1e-12)  # strictly causal (FFT rounding aside)
        assert not torch.allclose(after[:, 12], full[:, 12])
        logits, states = model.prefill(tokens[:, :6])
        assert torch.allclose(logits, full[:, :6], atol=1e-10)
        for t in range(6, 20):
            step_logits, states = model.decode(tokens[:, t], states)
            assert torch.allclose(step_logits, full[:, t], atol=1e-9), t


def test_each_layer_keeps_its_own_mixers_weight_decay_exemptions():
    model = tiny([*HYBRID[:2], MAMBA])
    exempt = weight_decay_exempt(model)
    for i, layer in enumerate(model.blocks):
        own = {f"blocks.{i}.mixer.{k}": v for k, v in layer.mixer.no_weight_decay().items()}
        assert own.items() <= exempt.items()
        inside = {k for k in exempt if k.startswith(f"blocks.{i}.mixer.")}
        assert inside == set(own)
    assert {f"blocks.2.mixer.inner.{k}": "marked" for k in ("A_log", "D", "dt_bias")}.items() <= exempt.items()  # mamba_ssm's marks
    assert not any(k.startswith(("blocks.0.", "blocks.1.")) and k.endswith("A_log") for k in exempt)


def test_a_uniform_stack_draws_the_same_model_as_the_plain_one():
    torch.manual_seed(0)
    plain = SequenceModel(vocab_size=11, d_model=16, n_layers=2, max_len=20, mixer="attention", mixer_options={"heads": 2})
    stacked = tiny([{"name": "attention", "heads": 2}] * 2).float()
    a, b = dict(plain.named_parameters()), dict(stacked.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- SwiGLU -------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,ratio,multiple,expected", [(64, 4, 16, 176), (64, 4, 256, 256), (4096, 4, 256, 11008),
                                                       (16, 2, 1, 21)])
def test_swiglu_width_is_llamas(d, ratio, multiple, expected):
    """Llama 7B's 11008 from d 4096 and multiple 256; MAD's 176 from d 64 and multiple 16."""
    assert swiglu_hidden(d, ratio, multiple) == expected


def test_swiglu_equals_its_formula_in_values_and_gradients_and_counts_its_flops():
    torch.manual_seed(0)
    layer = SwiGLU(6, 4, multiple_of=4).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w1, w2, w3 = layer.gate.weight, layer.up.weight, layer.proj.weight
    reference = (torch.sigmoid(x @ w1.T) * (x @ w1.T) * (x @ w2.T)) @ w3.T  # W3 (silu(W1 x) * W2 x)
    fast = layer(x)
    assert torch.allclose(fast, reference, atol=1e-12)
    g = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, [x, w1, w2, w3], g), torch.autograd.grad(reference, [x, w1, w2, w3], g)):
        assert torch.allclose(a, b, atol=1e-12)
    h = layer.hidden
    assert h == 16 and sum(p.numel() for p in layer.parameters()) == 3 * 6 * h  # no biases
    assert layer.flops(5) == 2 * F.linear(5, 6, h) + F.linear(5, h, 6) + 5 * 5 * h


def test_swiglu_backbone_flops_parameters_and_init():
    model = tiny(channel_mixer="swiglu")
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, SwiGLU) and mlp.hidden == swiglu_hidden(16, 4, 16) == 48
    plain = tiny()
    assert model.flop_terms(20)["mlp"] == 2 * mlp.flops(20)
    others = {k: v for k, v in model.flop_terms(20).items() if k != "mlp"}
    assert others == {k: v for k, v in plain.flop_terms(20).items() if k != "mlp"}
    assert not any(".mlp." in k and "bias" in k for k, _ in model.named_parameters())
    assert "blocks.0.mlp.gate.weight" not in weight_decay_exempt(model)  # matrices are decayed
    big = SequenceModel(vocab_size=11, d_model=256, n_layers=2, max_len=8, mixer="attention",
                        mixer_options={"heads": 2}, channel_mixer="swiglu")
    assert big.blocks[0].mlp.gate.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.01, rel=0.05)  # 0.02 / sqrt(2 n_layers)


@pytest.mark.parametrize("extra", [("model.channel_mixer=swiglu",), ("model.stack=[mixer,gla]", "mixer=attention")])
def test_matching_sizes_hybrids_and_swiglu_within_tolerance(extra):
    cfg = make_config(*TINY, "model=matched", "model.match_params=60000", "mixer.heads=2", *extra)
    task, _ = validate(cfg)
    model = make_model(cfg["model"], cfg["mixer"], task)
    assert abs(model.parameter_counts()["total"] / 60000 - 1) <= 0.02
    assert model.matching["mlp_hidden"] is not None


# ---- records and reports ------------------------------------------------------------------------
def test_a_hybrid_trains_and_its_record_and_report_name_the_stack(tmp_path):
    """A two-layer gla + attention hybrid with SwiGLU learns to copy eight tokens (about 0.1 accuracy
    after 20 steps, 1.0 after 60: measured)."""
    cfg = make_config("mixer=attention", "mixer.heads=2", "model.stack=[gla,mixer]", "model.channel_mixer=swiglu",
                      "model.d_model=32", "task.protocol=fixed", "task.max_train_len=8", "task.eval_lengths=[8]",
                      "task.eval_samples=64", "train.steps=120", "train.eval_every=20", "train.threads=1",
                      results_dir=tmp_path)
    record = execute(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["curve"][0]["eval"]["L8"]["accuracy"] < 0.5
    assert record["final"]["eval"]["L8"]["accuracy"] >= 0.95, record["final"]["eval"]
    assert record["mixer"] == "gla+attention"
    assert [layer["mixer"] for layer in record["layers"]] == ["gla", "attention"]
    assert record["recipe"]["block"]["mlp"]["kind"] == "swiglu"
    assert any(k.startswith("blocks.0.mixer.") for k in record["recipe"]["weight_decay_exempt"])
    path = records.record_path(tmp_path / "runs", cfg)
    assert path.name.startswith("copy-gla+attention-") and path.exists()
    assert records.read_record(path)["id"] == records.run_id(cfg)
    assert group_key(record)[0] == "gla+attention"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_hybrid_on_cuda_runs_each_layers_kernels_and_matches_cpu():
    """gla, attention and mamba with ``impl=auto`` (fla and mamba_ssm kernels where installed) and
    SwiGLU: fp32 logits on CUDA within kernel rounding of the CPU model's, decoding as it runs in
    parallel, and the backend naming each layer's path."""
    stack = [{"name": "gla", "heads": 4, "impl": "auto"}, {"name": "attention", "heads": 4},
             {"name": "mamba", "impl": "auto", "d_state": 16, "headdim": 16, "chunk_size": 16}]
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=64, d_model=64, n_layers=3, max_len=64, mixer="attention",
                          mixer_options={"heads": 4}, stack=stack, channel_mixer="swiglu").eval()
    tokens = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu_logits = model(tokens)
        gpu = model.cuda()
        full = gpu(tokens.cuda())
        assert (full.cpu() - cpu_logits).abs().max() <= 1e-3 * cpu_logits.abs().max()
        logits, states = gpu.prefill(tokens[:, :32].cuda())
        for t in range(32, 64):
            step, states = gpu.decode(tokens[:, t].cuda(), states)
            assert (step - full[:, t]).abs().max() <= 1e-3 * full.abs().max(), t
    assert gpu.backend.startswith("gla: ") and "; attention: " in gpu.backend and "; mamba: " in gpu.backend


def test_reports_tell_stacks_apart_by_label_and_by_layer_options_only_where_a_label_is_shared():
    from harness.report.kit import varying_keys

    def record(*overrides):
        return {"config": make_config(*TINY, *overrides)}

    plain, hybrid = record(), record("model.stack=[mixer,attention]")
    assert "model.stack" not in varying_keys([plain, hybrid])  # the labels (tmm, tmm+attention) tell them apart
    assert [group_key(r)[0] for r in (plain, hybrid)] == ["tmm", "tmm+attention"]
    narrow = record("model.stack=[mixer,{name:attention,heads:2}]")  # the same label, a layer's option differs
    assert "model.stack" in varying_keys([hybrid, narrow])
