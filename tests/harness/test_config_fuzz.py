"""Fuzz the config loader: random overrides (wrong types, null, negatives, floats for integers,
unknown keys, impossible combinations) either run a one-step smoke or raise a ConfigError that
names a field; never a bare traceback, never a run recorded as ``failed``.

    MIXBENCH_FUZZ_EXAMPLES=2000 python -m pytest tests/harness/test_config_fuzz.py   # a longer fuzz
"""
from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.run.config import ConfigError, load
from harness.run.execute import execute
import mixers
from tests.conftest import MIXER_CASES, case_mixer

# One step of a tiny run, for every mixer case of the suite (tests/conftest.py, small sizes).
SMOKE = ("train=test", "train.steps=1", "train.warmup_steps=0", "train.eval_every=1", "train.progress=false",
         "task.max_train_len=4", "task.eval_lengths=[4]", "task.eval_samples=4", "model.d_model=32")


def as_override(key: str, value: object) -> str:
    return f"mixer.{key}={str(value).lower() if isinstance(value, bool) else value}"


MIXER_SMOKE = {case: (f"mixer={case_mixer(case)}", *(as_override(k, v) for k, v in options.items()))
               for case, options in MIXER_CASES.items()}
FIELDS = ("seed", "device", "benchmark", "force", "concurrent_runs", "deterministic", "gpu.jobs_per_gpu",
          "model.d_model", "model.n_layers", "model.mlp_ratio", "model.norm", "model.tie_embeddings", "model.max_len",
          "train.profile", "train.steps", "train.batch_size", "train.lr", "train.weight_decay", "train.weight_decay_exempt", "train.betas",
          "train.warmup_steps", "train.min_lr_ratio", "train.grad_clip", "train.eval_every", "train.eval_batch_size",
          "train.precision", "train.threads", "task.protocol", "task.alphabet_size", "task.min_len",
          "task.max_train_len", "task.eval_lengths", "task.eval_samples", "task.eval_seed")
UNKNOWN = ("+model.dropout", "+train.epochs", "+task.noise", "+sed", "+mixer.haeds", "+gpu.count")
WORDS = ("abc", "''", "fft", "dense", "torch", "kernels", "transformers", "auto", "variable", "fixed", "bf16",
         "fp32", "rmsnorm", "layernorm", "cpu", "cuda")

ints = st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 2, 3, 4, 8, 16, 2**70]))
floats = st.one_of(st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e-9, 0.999, 1.5, 1e300]),
                   st.floats(-2, 40, allow_nan=False).map(lambda x: round(x, 3)))
scalars = st.one_of(ints, floats, st.sampled_from(["true", "false", "null", "nan", "inf", "-inf"]),
                    st.sampled_from(WORDS))
values = st.one_of(scalars.map(str), st.lists(st.one_of(ints, floats), max_size=3).map(
    lambda xs: "[" + ",".join(map(str, xs)) + "]"), st.just("{a:1}"))


@st.composite
def overrides(draw) -> tuple[str, list[str]]:
    case = draw(st.sampled_from(sorted(MIXER_SMOKE)))
    options = sorted(mixers.options_of(case_mixer(case)))
    keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f"mixer.{o}" for o in options]), st.sampled_from(UNKNOWN))
    pairs = draw(st.lists(st.tuples(keys, values), min_size=1, max_size=3, unique_by=lambda kv: kv[0]))
    return case, [f"{k}={v}" for k, v in pairs]


def field_named(message: str, fuzzed: list[str]) -> bool:
    """Whether the error names one of the fuzzed fields."""
    return any(o.split("=", 1)[0].split(".")[-1].lstrip("+") in message for o in fuzzed)


@settings(max_examples=int(os.environ.get("MIXBENCH_FUZZ_EXAMPLES", 60)), deadline=None,
          derandomize="MIXBENCH_FUZZ_EXAMPLES" not in os.environ,  # the suite: the same examples every time
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=overrides())
def test_random_overrides_run_or_fail_clearly(case, tmp_path_factory):
    mixer_case, fuzzed = case
    results = tmp_path_factory.mktemp("fuzz")
    threads = torch.get_num_threads()
    try:
        cfg = load([*SMOKE, *MIXER_SMOKE[mixer_case], f"results_dir={results}", *fuzzed])
        if isinstance(cfg.get("results_dir"), str):
            cfg["results_dir"] = str(results)  # fuzzed paths must not write into the repository
        record = execute(cfg)
    except ConfigError as err:
        assert field_named(str(err), fuzzed), (fuzzed, str(err))
        return
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    assert record["status"] in ("ok", "diverged"), (fuzzed, record.get("error"), record.get("traceback"))
