"""The invertibility benchmark: winding numbers and indices against hand-computed cases, the matrix
facts, the kernels read out of each Toeplitz mixer, the Kaiming baseline, and a whole tiny run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.bench import invertibility as inv
from harness.run.config import ConfigError
from harness.run.records import record_path
from harness.run.weights import build_untrained, save
from mixers.ops.toeplitz import causal_toeplitz_dense
from tests.harness.helpers import make_config


def poly_with_zeros(zeros: list[complex], n: int) -> np.ndarray:
    """The kernel (length n, real) whose symbol sum_j k_j z^j is prod (z - r) over ``zeros``."""
    coeffs = np.poly(zeros)[::-1].real  # np.poly: highest power first; the kernel is lowest first
    return np.concatenate([coeffs, np.zeros(n - len(coeffs))])


def test_delta_kernel_has_index_zero_and_full_rank():
    k = np.zeros(32)
    k[0] = 1.0
    wind, facts = inv.winding_number(k), inv.matrix_facts(k)
    assert wind["index"] == 0 and wind["certified"] and wind["reliable"]
    assert facts["rank"] == 32 and facts["condition"] == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [1, 2, 5, 31])
def test_pure_shift_by_k_has_index_minus_k_and_rank_n_minus_k(shift):
    k = np.zeros(32)
    k[shift] = 0.7
    wind, facts = inv.winding_number(k), inv.matrix_facts(k)
    assert wind["index"] == -shift and wind["winding"] == shift and wind["reliable"]
    assert facts["rank"] == 32 - shift and facts["condition"] == math.inf


@pytest.mark.parametrize("zeros, index", [
    ([0.5], -1), ([2.0], 0), ([0.5, 2.0], -1), ([0.25, -0.5], -2), ([3.0, -1.5, 1.2], 0),
    ([0.9 * np.exp(1j * np.pi / 3), 0.9 * np.exp(-1j * np.pi / 3), 1.5], -2),
    ([1.05 * np.exp(2j), 1.05 * np.exp(-2j), 0.95], -1),
])
def test_index_is_minus_the_zeros_inside_the_circle(zeros, index):
    wind = inv.winding_number(poly_with_zeros(zeros, 24))
    assert wind["index"] == index and wind["certified"] and wind["reliable"]


def test_index_agrees_with_the_roots_of_random_kernels():
    rng = np.random.default_rng(0)
    for _ in range(10):
        k = rng.standard_normal(40)
        wind = inv.winding_number(k)
        inside = int((np.abs(np.roots(k[::-1])) < 1).sum())
        assert wind["certified"] and wind["index"] == -inside


def test_a_zero_on_the_circle_is_reported_unreliable():
    wind = inv.winding_number(poly_with_zeros([-1.0, 0.5], 16))  # a(-1) = 0
    assert not wind["reliable"] and wind["relative_margin"] < 1e-7


def test_the_matrix_is_the_mixers_causal_product():
    gen = torch.Generator().manual_seed(0)
    k, x = torch.randn(12, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    expected = causal_toeplitz_dense(x[None, None, :], k[None, :])[0, 0]  # y_i = sum_{j<=i} k_{i-j} x_j
    assert np.allclose(inv.causal_toeplitz_matrix(k.numpy()) @ x.numpy(), expected.numpy())


def test_kaiming_random_baseline_has_index_near_minus_half_n_and_is_numerically_rank_deficient():
    n, gen = 128, torch.Generator().manual_seed(0)
    kernels = [inv.kaiming_kernel(n, gen) for _ in range(8)]
    winds = [inv.winding_number(k) for k in kernels]
    assert all(w["reliable"] for w in winds)
    mean_index = np.mean([w["index"] for w in winds])
    assert abs(mean_index + (n - 1) / 2) < 0.15 * n, mean_index
    assert all(inv.matrix_facts(k)["rank"] < n for k in kernels)  # exactly invertible (k_0 != 0), numerically not


@pytest.mark.parametrize("mixer", ["tmm", "tmm_flat", "tnn", "hyena"])
def test_kernels_read_out_of_each_mixer_give_its_operator(mixer):
    cfg = make_config(f"mixer={mixer}", "task=autoencode", "task.seq_len=8", "task.vocab_size=8", "model.d_model=16",
                      *(["mixer.heads=2"] if mixer == "tmm" else []))
    model, _ = build_untrained(cfg)
    m = model.blocks[0].mixer
    n, gen = 8, torch.Generator().manual_seed(1)
    kernels = inv.toeplitz_kernels(m, n)
    assert kernels and all(bank.shape[1] == n for bank in kernels.values())
    with torch.no_grad():
        if mixer in ("tmm", "tmm_flat"):
            assert np.allclose(kernels["toeplitz"], m.toeplitz.weight[:, :n].double().numpy())
        elif mixer == "tnn":
            v = torch.randn(1, m.channels, n, generator=gen)
            y = causal_toeplitz_dense(v, m.coefficients(n))[0]
            assert np.allclose(np.stack([inv.causal_toeplitz_matrix(k) @ v[0, c].double().numpy()
                                         for c, k in enumerate(kernels["tno"])]), y.double().numpy(), atol=1e-5)
        else:
            v = torch.randn(1, 16, n, generator=gen)
            y = causal_toeplitz_dense(v, m.filter(n))[0] + v[0] * m.skip[:, None]
            assert np.allclose(np.stack([inv.causal_toeplitz_matrix(k) @ v[0, c].double().numpy()
                                         for c, k in enumerate(kernels["long_filter+skip"])]), y.double().numpy(), atol=1e-5)


def test_mixers_without_a_toeplitz_operator_have_no_kernels():
    cfg = make_config("mixer=attention", "task=autoencode", "task.seq_len=8", "model.d_model=16", "mixer.heads=2")
    model, _ = build_untrained(cfg)
    assert inv.toeplitz_kernels(model.blocks[0].mixer, 8) == {}


def bench_config(**changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load("conf/invertibility.yaml"))
    cfg.pop("hydra")
    return {**cfg, **changes}


def test_the_benchmark_measures_trained_random_init_and_kaiming_and_writes_its_files(tmp_path):
    cfg = make_config("mixer=tmm", "task=autoencode", "task.seq_len=16", "model.d_model=16", "mixer.heads=2",
                      results_dir=tmp_path)
    model, _ = build_untrained(cfg)
    with torch.no_grad():
        model.blocks[0].mixer.toeplitz.weight.zero_()
        model.blocks[0].mixer.toeplitz.weight[:, 0] = 1.0  # the "trained" first layer: the identity
    path = save(model, cfg, record_path(tmp_path / "runs", cfg))
    table = inv.main_with(bench_config(runs=[str(path)], results_dir=str(tmp_path), profile="t", kaiming_samples=3))
    assert set(table["state"]) == {"trained", "random init", "kaiming random"}
    first = table[(table["state"] == "trained") & (table["layer"] == 0)]
    assert (first["index"] == 0).all() and (first["rank"] == 16).all()
    out = tmp_path / "invertibility" / "t"
    for name in ("invertibility.md", "invertibility.csv", "kernels.csv", "winding.png", "singular_values.pdf"):
        assert (out / name).exists(), name


@pytest.mark.parametrize("changes, field", [({"rank_rtol": 2.0}, "rank_rtol"), ({"length": 0}, "length"),
                                            ({"max_points": 8}, "max_points"), ({"runs": ["abcdefabcdef"]}, "runs")])
def test_bad_settings_name_the_field(tmp_path, changes, field):
    with pytest.raises(ConfigError, match=field):
        inv.main_with(bench_config(results_dir=str(tmp_path), **changes))
