"""The FFT causal Toeplitz product equals the dense masked-matrix reference."""
from __future__ import annotations

import math

import pytest
import torch

import mixers
from mixers.ops.toeplitz import causal_toeplitz_dense, causal_toeplitz_fft, toeplitz_matrix

MAX_LEN = 256


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp(min=1e-30))


def test_toeplitz_matrix_by_hand():
    k = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(toeplitz_matrix(k, 3), torch.tensor([[1.0, 0, 0], [2, 1, 0], [3, 2, 1]]))


# (x shape without length, kernel shape without length): one kernel, per-head kernels shared by
# channels (tmm), per-channel kernels (hyena)
SHAPES = [((3,), ()), ((2, 4, 5), (4, 1)), ((1, 8, 1), (8, 1)), ((2, 6), (6,))]


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100, 255, MAX_LEN])
@pytest.mark.parametrize("x_shape,k_shape", SHAPES)
def test_fft_equals_dense_fp32(n, x_shape, k_shape):
    gen = torch.Generator().manual_seed(n * 7 + len(x_shape))
    x = torch.randn(*x_shape, n, generator=gen)
    kernel = torch.randn(*k_shape, MAX_LEN, generator=gen)
    ref, fast = causal_toeplitz_dense(x, kernel), causal_toeplitz_fft(x, kernel)
    assert fast.shape == ref.shape == x.shape
    assert rel_err(fast, ref) < 1e-5


@pytest.mark.parametrize("n", [1, 7, 64, MAX_LEN])
def test_fft_gradients_equal_dense(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(2, 3, n, generator=gen, requires_grad=True)
    k = torch.randn(3, MAX_LEN, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, n, generator=gen)
    grads = []
    for op in (causal_toeplitz_dense, causal_toeplitz_fft):
        x.grad = k.grad = None
        (op(x, k[:, :]) * w).sum().backward()
        grads.append((x.grad.clone(), k.grad.clone()))
    assert rel_err(grads[1][0], grads[0][0]) < 1e-5
    assert rel_err(grads[1][1], grads[0][1]) < 1e-5


@pytest.mark.parametrize("n", [1, 7, 64, 128])
@pytest.mark.parametrize("options", [{"heads": 4}, {"heads": 1, "projections": False}, {"heads": 2, "expanded": True}])
def test_tmm_fft_module_equals_dense_module(n, options):
    torch.manual_seed(n)
    fast = mixers.build("tmm", 32, 128, impl="fft", **options)
    dense = mixers.build("tmm", 32, 128, impl="dense", **options)
    dense.load_state_dict(fast.state_dict())
    with torch.no_grad():  # non-zero biases so the per-position bias is exercised too
        for m in (fast, dense):
            m.toeplitz.bias.copy_(torch.linspace(-1, 1, m.toeplitz.bias.numel()).view_as(m.toeplitz.bias))
    x = torch.randn(3, n, 32)
    assert rel_err(fast(x), dense(x)) < 1e-5


def test_tmm_shorter_inputs_use_the_leading_part_of_the_kernel():
    torch.manual_seed(0)
    m = mixers.build("tmm", 8, 64, heads=1, projections=False)
    x = torch.randn(1, 64, 8)
    with torch.no_grad():
        assert torch.allclose(m(x[:, :10]), m(x)[:, :10], atol=1e-5)


def test_tmm_flat_layer_matches_the_definition():
    """y[i, c] = sum_{j <= i} w[i - j] x[j, c] + bias[i], one vector shared by all channels."""
    torch.manual_seed(0)
    m = mixers.build("tmm", 4, 6, heads=1, projections=False)
    with torch.no_grad():
        m.toeplitz.bias.uniform_()
    x = torch.randn(1, 6, 4)
    w, b = m.toeplitz.weight[0], m.toeplitz.bias[0]
    expected = torch.stack([sum(w[i - j] * x[0, j] for j in range(i + 1)) + b[i] for i in range(6)])
    assert torch.allclose(m(x)[0], expected, atol=1e-5)


def test_tmm_auto_takes_the_fft_path_on_cpu_and_fused_refuses_it():
    m = mixers.build("tmm", 64, 128)  # conf default impl=auto
    assert m.backend == "torch-fft" and m.backend_at(64) == "torch-fft"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="impl=fused needs Triton, a CUDA device"):
            mixers.build("tmm", 64, 128, impl="fused")
    with pytest.raises(ValueError, match="impl must be one of auto, fused, fft, dense"):
        mixers.build("tmm", 64, 128, impl="triton")


@pytest.mark.parametrize("shape", [(2, 1, 8, 2, 4), (3, 17, 12, 3, 20), (1, 64, 16, 1, 64), (2, 100, 32, 4, 128)], ids=str)
def test_heads_fft_with_recomputed_spectra_equals_dense_with_gradients(shape):
    from einops import rearrange

    from mixers.ops.toeplitz import causal_toeplitz_heads_fft

    batch, n, d, heads, max_len = shape
    gen = torch.Generator().manual_seed(n * 7 + d)
    x = torch.randn(batch, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(heads, max_len, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    y = causal_toeplitz_heads_fft(x, w, heads)
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    u = rearrange(x, "b n (h e) -> b h e n", h=heads)
    ref = rearrange(causal_toeplitz_dense(u, w[:, None, :n]), "b h e n -> b n (h e)")
    rx, rw = torch.autograd.grad(ref, (x, w), dy)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_fused_tile_flops_count_the_tiles_the_kernel_visits():
    from mixers.tmm import fused_tile_flops

    d = 8
    for n in (1, 63, 64, 65, 200, 1024):
        for block, rows in ((64, 64), (64, 128), (32, 128), (16, 256)):
            # (rows x block) tiles whose first column is at or left of the row block's last row
            visited = sum(1 for i in range(-(-n // rows)) for j in range(-(-n // block))
                          if j * block <= i * rows + rows - 1)
            assert fused_tile_flops(n, d, block, rows) == 2.0 * d * rows * block * visited
            assert fused_tile_flops(n, d, block, rows) >= n * (n + 1) * d  # the causal products themselves
    blocks = 1024 // 64
    assert fused_tile_flops(1024, d, 64, 64) == 2.0 * d * 64**2 * blocks * (blocks + 1) / 2


@pytest.mark.parametrize("x_shape,k_shape", [((2, 5, 17), (5, 17)), ((3, 4, 1), (4, 1)), ((2, 3, 4, 33), (4, 40)),
                                             ((2, 6, 64), (1, 64)), ((1, 2, 100), (2, 100)), ((3, 50), (50,))])
@pytest.mark.parametrize("slice_samples", [1 << 25, 300])  # one slice of channels, or a few channels a slice
def test_lean_fft_equals_dense_in_values_and_gradients(monkeypatch, x_shape, k_shape, slice_samples):
    """The FFT product that saves only its inputs (tnn, hyena): values and both gradients of the reference."""
    from mixers.ops import toeplitz
    from mixers.ops.toeplitz import causal_toeplitz_fft_lean
    monkeypatch.setattr(toeplitz, "LEAN_FFT_SLICE_SAMPLES", slice_samples)
    gen = torch.Generator().manual_seed(x_shape[-1])
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*k_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    ref, lean = causal_toeplitz_dense(x, k), causal_toeplitz_fft_lean(x, k)
    assert torch.allclose(lean, ref, atol=1e-12)
    for a, b in zip(torch.autograd.grad((lean * w).sum(), [x, k]), torch.autograd.grad((ref * w).sum(), [x, k])):
        assert torch.allclose(a, b, atol=1e-11)


def test_lean_fft_saves_less_than_autograd_through_the_ffts():
    from mixers.ops.toeplitz import causal_toeplitz_fft_lean
    x = torch.randn(4, 8, 256, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(8, 256, requires_grad=True)
    saved = {}
    for name, fn in (("autograd", causal_toeplitz_fft), ("lean", causal_toeplitz_fft_lean)):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            fn(x, k.to(x.dtype) if name == "autograd" else k)
        saved[name] = sum(sizes)
    assert saved["lean"] <= x.numel() * 2 + k.numel() * 4 < saved["autograd"]


@pytest.mark.parametrize("name", ["tmm", "tmm_flat"])
def test_toeplitz_init_follows_the_training_length_not_max_len(name):
    """The authors' vectors have the training length, so Kaiming normal gives std sqrt(2 / L_train)."""
    torch.manual_seed(0)
    wide = mixers.build(name, 16, 4096, train_len=256)
    assert wide.toeplitz.weight.shape[-1] == 4096
    assert wide.toeplitz.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    default = mixers.build(name, 16, 4096)  # no training length given: max_len
    assert default.toeplitz.weight.std().item() == pytest.approx(math.sqrt(2 / 4096), rel=0.05)
    assert not wide.toeplitz.bias.any()
    with pytest.raises(ValueError, match="train_len"):
        mixers.build(name, 16, 64, train_len=65)


@pytest.mark.parametrize("name", ["tmm", "tmm_flat", "hyena", "tnn"])
def test_the_backbone_passes_the_longest_training_input_as_train_len(name):
    from harness.run.config import load, make_model, validate

    cfg = load([f"mixer={name}", "train=test"])
    task, _ = validate(cfg, check_device=False)
    assert task.max_train_input_len() == 2 * cfg["task"]["max_train_len"] + 1 < task.max_input_len()
    model = make_model(cfg["model"], cfg["mixer"], task)
    assert model.max_len == task.max_input_len()
    assert {m.train_len for m in model.mixer_modules} == {task.max_train_input_len()}
    given = make_model(cfg["model"], {**cfg["mixer"], "train_len": 40}, task)
    assert {m.train_len for m in given.mixer_modules} == {40}


def test_auto_takes_the_fft_path_on_cpu_and_fused_refuses_cpu_inputs_where_triton_is_installed(monkeypatch):
    """On a GPU machine (Triton and CUDA present) a CPU-placed TMM still runs the FFT path."""
    import mixers.tmm

    monkeypatch.setattr(mixers.tmm, "triton_available", lambda: True)
    auto = mixers.build("tmm", 32, 64, heads=2)
    assert auto.backend == "torch-fft" and auto.backend_at(64) == "torch-fft"
    assert auto(torch.randn(1, 9, 32)).shape == (1, 9, 32)
    fused = mixers.build("tmm", 32, 64, heads=2, impl="fused")
    with pytest.raises(RuntimeError, match="impl=fused runs a Triton kernel, which needs CUDA inputs"):
        fused(torch.randn(1, 9, 32))
