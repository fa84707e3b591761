"""The retention benchmark: the hidden state it reads, a decoder that recovers what a state holds
(and nothing more), and a whole tiny run on text and random inputs."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as TF

from harness.bench import retention as ret
from harness.run.config import ConfigError
from harness.run.records import record_path
from harness.run.weights import build_untrained, save
from tests.harness.helpers import make_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and on a shared machine far faster than several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bench_config(**changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load("conf/retention.yaml"))
    cfg.pop("hydra")
    cfg["decoder"].update(changes.pop("decoder", {}))
    return {**cfg, **changes}


def test_hidden_state_is_the_last_tokens_residual_stream():
    model, _ = build_untrained(make_config("mixer=tmm", "task=autoencode", "task.seq_len=8", "model.d_model=16",
                                           "mixer.heads=2"))
    tokens = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(0))
    state = ret.hidden_state(model.eval(), tokens, None)
    with torch.no_grad():
        assert torch.allclose(model.head(model.norm(state)), model(tokens)[:, -1], atol=1e-5)
        first = ret.hidden_state(model, tokens, 1)
        assert torch.allclose(first, model.blocks[0](model.read_in(tokens, 0))[:, -1], atol=1e-6)
    with pytest.raises(ConfigError, match="layer"):
        ret.hidden_state(model, tokens, 3)


def test_decoder_recovers_what_the_state_holds_and_nothing_more():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (600, 5), generator=gen)
    cfg = bench_config(decoder={"width": 64, "steps": 300, "batch_size": 64, "lr": 3e-3})
    holds_all = TF.one_hot(tokens, 4).flatten(1).float()  # every token, readable
    holds_first_two = holds_all.clone()
    holds_first_two[:, 8:] = 0.0  # positions 0 and 1 only
    for states, expected in ((holds_all, [1, 1, 1, 1, 1]), (holds_first_two, [1, 1, 0, 0, 0])):
        decoder = ret.train_decoder(states[:500], tokens[:500], 4, cfg, torch.Generator().manual_seed(1))
        with torch.no_grad():
            _, accuracy = ret.per_position(decoder(states[500:]), tokens[500:])
        for a, full in zip(accuracy.tolist(), expected):
            assert (a > 0.97) if full else (a < 0.45), accuracy  # chance is 0.25


def test_the_benchmark_measures_text_and_random_inputs_and_writes_its_files(tmp_path):
    (tmp_path / "train.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    (tmp_path / "valid.txt").write_text("pack my box with five dozen liquor jugs. " * 50)
    cfg = make_config("mixer=tmm", "task=copy_text", "task.seq_len=16", "model.d_model=16", "mixer.heads=2",
                      f"task.train_files=[{tmp_path / 'train.txt'}]", f"task.validation_files=[{tmp_path / 'valid.txt'}]",
                      results_dir=tmp_path)
    model, task = build_untrained(cfg)
    path = save(model, cfg, record_path(tmp_path / "runs", cfg))
    table = ret.main_with(bench_config(runs=[str(path)], results_dir=str(tmp_path), profile="t", train_samples=64,
                                       eval_samples=16, decoder={"steps": 5, "width": 16}))
    assert sorted(zip(table["state"], table["inputs"])) == sorted(
        (s, i) for s in ("trained", "random init") for i in ("text", "random"))
    assert table["length"].eq(task.max_train_input_len()).all() and table["accuracy"].between(0, 1).all()
    out = tmp_path / "retention" / "t"
    for name in ("retention.md", "retention.csv", "positions.csv", "retention.png", "retention.pdf"):
        assert (out / name).exists(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_benchmark_runs_on_the_gpu_and_measures_what_the_cpu_does(tmp_path):
    cfg = make_config("mixer=tmm", "task=autoencode", "task.seq_len=8", "task.vocab_size=8", "model.d_model=16",
                      "mixer.heads=2", results_dir=tmp_path)
    model, _ = build_untrained(cfg)
    path = save(model, cfg, record_path(tmp_path / "runs", cfg))
    tables = {device: ret.main_with(bench_config(runs=[str(path)], results_dir=str(tmp_path), profile=device, device=device,
                                                 inputs=["random"], train_samples=256, eval_samples=64,
                                                 decoder={"steps": 50, "width": 32}))
              for device in ("cpu", "cuda")}
    assert (tables["cpu"]["accuracy"] - tables["cuda"]["accuracy"]).abs().max() < 0.1


@pytest.mark.parametrize("changes, field", [({"inputs": ["speech"]}, "inputs"), ({"train_samples": 0}, "train_samples"),
                                            ({"decoder": {"width": 0}}, "decoder.width"), ({"benchmark": "none"}, "benchmark")])
def test_bad_settings_name_the_field(tmp_path, changes, field):
    with pytest.raises(ConfigError, match=field):
        ret.main_with(bench_config(results_dir=str(tmp_path), **changes))


def test_shift_register_states_hold_exactly_the_last_tokens():
    from harness.bench.retention_check import shift_register_states
    tokens = torch.tensor([[3, 1, 2, 0]])
    codes = torch.arange(8.0).view(4, 2)  # token t -> (2t, 2t + 1)
    state = shift_register_states(tokens, codes, 2, 6)
    assert state.tolist() == [[0.0, 1.0, 4.0, 5.0, 0.0, 0.0]]  # the last token (0), then the one before (2)


def test_the_probe_reads_what_a_known_state_holds_and_nothing_older(tmp_path):
    """The known-answer check at a small size: a state that stores the last 2 of 8 tokens is read back at
    distances 0-1 (> 95%) and at chance beyond (< 30%, chance 12.5%); an empty state at chance everywhere."""
    from harness.bench import retention_check

    cfg = bench_config(decoder={"width": 64, "steps": 300, "batch_size": 64, "lr": 3e-3})
    cfg.update(slots=[0, 2], code_dim=4, d_model=16, vocab=8, length=8, train_samples=512, eval_samples=256,
               profile="known_answer", results_dir=str(tmp_path))
    table = retention_check.main_with(cfg).set_index("slots")
    assert table.loc[2, "min inside (%)"] > 95 and table.loc[2, "accuracy beyond (%)"] < 30
    assert table.loc[0, "accuracy beyond (%)"] < 30
    assert (tmp_path / "retention" / "known_answer" / "known_answer.png").exists()


def test_a_known_answer_check_wider_than_the_state_names_the_field():
    from harness.bench import retention_check

    cfg = bench_config()
    cfg.update(slots=[8], code_dim=4, d_model=16, vocab=8, length=8)
    with pytest.raises(ConfigError, match=r"slots: 8 slots x code_dim 4 = 32 exceed d_model=16"):
        retention_check.main_with(cfg)
