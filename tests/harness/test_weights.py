"""save_weights: a finished run keeps its weights and config beside the record; the loader rebuilds
the very model; the key's default keeps every record id."""
from __future__ import annotations

import pytest
import torch

from harness.run.config import ConfigError, make_model, validate
from harness.run.execute import execute
from harness.run.records import record_path, run_id
from harness.run.weights import build_untrained, config_path, find_weights, load_trained, weights_path
from tests.harness.helpers import make_config

TINY_AE = ("task=autoencode", "task.seq_len=8", "task.vocab_size=8", "task.eval_samples=8", "train.steps=3",
           "train.eval_every=3", "train.warmup_steps=1", "model.d_model=16")


def test_a_run_with_save_weights_keeps_them_and_the_loader_rebuilds_the_trained_model(tmp_path):
    cfg = make_config("mixer=tmm", "mixer.heads=2", "model.tie_embeddings=true", *TINY_AE, "save_weights=true",
                      results_dir=tmp_path)
    record = execute(cfg)
    path = weights_path(tmp_path, record_path(tmp_path / "runs", cfg))
    assert record["status"] == "ok" and path.exists() and config_path(path).exists()
    assert not list(path.parent.glob("*.tmp"))
    model, loaded_cfg, task = load_trained(record["id"], tmp_path)
    untrained, _ = build_untrained(cfg)
    tokens = torch.randint(0, 8, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(model(tokens), untrained.eval()(tokens))  # training moved the weights
        again, _, _ = load_trained(str(path), tmp_path)
        assert torch.equal(model(tokens), again(tokens))
    assert loaded_cfg == cfg and task.name == "autoencode"
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()  # tied weights stay tied


def test_without_save_weights_nothing_is_written_and_the_loader_says_so(tmp_path):
    cfg = make_config("mixer=tmm", "mixer.heads=2", *TINY_AE, results_dir=tmp_path)
    record = execute(cfg)
    assert not (tmp_path / "weights").exists()
    with pytest.raises(FileNotFoundError, match="save_weights=true"):
        find_weights(record["id"], tmp_path)


def test_save_weights_default_keeps_record_ids_and_true_makes_a_new_run():
    base = make_config("mixer=tmm", *TINY_AE)
    without = {k: v for k, v in base.items() if k != "save_weights"}
    assert run_id(base) == run_id(without)
    assert run_id({**base, "save_weights": True}) != run_id(base)


def test_save_weights_must_be_a_boolean():
    with pytest.raises(ConfigError, match="save_weights"):
        validate({**make_config("mixer=tmm", *TINY_AE), "save_weights": "yes"}, check_device=False)


def test_the_untrained_twin_is_the_runs_initialisation(tmp_path):
    cfg = make_config("mixer=tmm", "mixer.heads=2", *TINY_AE, "train.steps=1", "save_weights=true", results_dir=tmp_path)
    twin, _ = build_untrained(cfg)
    torch.manual_seed(cfg["seed"])  # what execute does before building the model
    expected = make_model(cfg["model"], cfg["mixer"], validate(cfg, check_device=False)[0])
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), expected.state_dict().values()))


def test_a_trained_run_saves_and_loads_through_the_hub_mixin_locally(tmp_path):
    from harness.run.hub import HubModel

    cfg = make_config("mixer=tmm", "mixer.heads=2", "model.tie_embeddings=true", *TINY_AE, "save_weights=true",
                      results_dir=tmp_path)
    record = execute(cfg)
    hub = HubModel.from_run(record["id"], tmp_path)
    hub.save_pretrained(tmp_path / "hub")  # no network: a local folder
    assert {"model.safetensors", "config.json"} <= {p.name for p in (tmp_path / "hub").iterdir()}
    again = HubModel.from_pretrained(tmp_path / "hub")
    trained, _, _ = load_trained(record["id"], tmp_path)
    tokens = torch.randint(0, 8, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again.eval()(tokens), trained(tokens))
    assert again.run_config == cfg
    assert again.model.head.weight.data_ptr() == again.model.embed.weight.data_ptr()  # tied weights stay tied
