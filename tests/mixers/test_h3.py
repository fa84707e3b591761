"""H3: the SSM kernels are the recurrences' impulse responses, the FFT path equals the token-by-token
recurrence (values and gradients), and the layer starts as its authors initialise it."""
from __future__ import annotations

import math

import pytest
import torch

import mixers
from mixers.ops.ssm_conv import diag_discretised, diag_kernel, diag_state, diag_step, shift_kernel, shift_state, shift_step


def _diag_parameters(channels: int, modes: int, gen: torch.Generator):
    kw = {"generator": gen, "dtype": torch.float64}
    log_dt = torch.rand(channels, **kw) * 3 - 6
    inv_A_real = torch.randn(channels, modes, **kw)
    A_imag = torch.randn(channels, modes, **kw) * 3
    B = torch.complex(torch.randn(channels, modes, **kw), torch.randn(channels, modes, **kw))
    C = torch.complex(torch.randn(channels, modes, **kw), torch.randn(channels, modes, **kw))
    return diag_discretised(log_dt, inv_A_real, A_imag, B), C


@pytest.mark.parametrize("N,n", [(4, 1), (4, 9), (8, 8), (16, 5)])
def test_kernels_are_the_recurrences_impulse_responses_and_states(N, n, generator):
    channels = 3
    B, C = torch.randn(channels, N, generator=generator, dtype=torch.float64), torch.randn(channels, N, generator=generator, dtype=torch.float64)
    (dA, dB), Cd = _diag_parameters(channels, N // 2, generator)
    u = torch.randn(2, channels, n, generator=generator, dtype=torch.float64)
    shift, diag = torch.zeros(2, channels, N, dtype=torch.float64), torch.zeros(2, channels, N // 2, dtype=torch.complex128)
    ys, yd = [], []
    for t in range(n):
        y, shift = shift_step(B, C, u[..., t], shift)
        ys.append(y)
        y, diag = diag_step(dA, dB, Cd, u[..., t], diag)
        yd.append(y)
    ys, yd = torch.stack(ys, -1), torch.stack(yd, -1)
    lower = lambda kernel: torch.stack([torch.stack([kernel[:, i - j] if j <= i else torch.zeros(channels, dtype=torch.float64)
                                                     for j in range(n)], -1) for i in range(n)], -2)  # (c, n, n)
    assert torch.allclose(ys, torch.einsum("cij,bcj->bci", lower(shift_kernel(B, C, n)), u), atol=1e-12)
    assert torch.allclose(yd, torch.einsum("cij,bcj->bci", lower(diag_kernel(dA, dB, Cd, n)), u), atol=1e-12)
    assert torch.allclose(shift_state(B, u), shift, atol=1e-12)
    assert torch.allclose(diag_state(dA, dB, u), diag, atol=1e-12)
    assert shift_kernel(B, C, N + 3)[:, N:].abs().max() == 0  # N taps


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_blocked_diag_kernel_is_the_vandermonde_product(n, generator):
    (dA, dB), C = _diag_parameters(3, 4, generator)
    powers = dA[..., None] ** torch.arange(n, dtype=torch.float64)  # (channels, N / 2, n)
    assert torch.allclose(diag_kernel(dA, dB, C, n), 2 * ((C * dB)[..., None] * powers).sum(1).real, atol=1e-12)


def test_shift_kernel_with_e1_is_c():
    C = torch.randn(5, 6, dtype=torch.float64)
    B = torch.zeros(5, 6, dtype=torch.float64)
    B[:, 0] = 1
    assert torch.equal(shift_kernel(B, C, 6), C)


@pytest.mark.parametrize("d,N,e,n", [(16, 8, 1, 1), (16, 8, 2, 5), (16, 8, 4, 20), (12, 4, 3, 13), (8, 4, 2, 90)])
def test_fft_path_equals_the_recurrence(d, N, e, n):
    torch.manual_seed(n)
    fft = mixers.build("h3", d, 32, d_state=N, head_dim=e).double()
    with torch.no_grad():  # every SSM parameter away from its initial value, so each one's role is checked
        for name in ("shift_B", "B", "inv_A_real", "A_imag"):
            getattr(fft, name).add_(0.2 * torch.randn_like(getattr(fft, name)))
    recurrent = mixers.build("h3", d, 32, d_state=N, head_dim=e, impl="recurrent").double()
    recurrent.load_state_dict(fft.state_dict())
    x = torch.randn(2, n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, d, dtype=torch.float64)
    got = []
    for mixer in (fft, recurrent):
        y, state = mixer.prefill(x)
        got.append((y, state["shift"], torch.view_as_real(state["diag"]),
                    *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*got):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_initialisation_is_the_authors():
    torch.manual_seed(0)
    m = mixers.build("h3", 32, 64)
    N, H = 64, 32
    assert (m.d_state, m.head_dim) == (N, 1)
    assert torch.equal(m.shift_B, torch.eye(N)[0].expand(32, N))  # B = e_1: the kernel is C
    assert m.shift_C.abs().max() <= 1 / math.sqrt(N)  # kaiming-uniform at fan-in N, as nn.Conv1d
    assert torch.allclose(-torch.exp(m.inv_A_real), torch.full((H, N // 2), -0.5))  # S4D-Lin
    assert torch.allclose(m.A_imag, math.pi * torch.arange(N // 2).float().expand(H, N // 2))
    assert torch.equal(torch.view_as_complex(m.B), torch.ones(H, N // 2, dtype=torch.cfloat))
    dt = torch.exp(m.log_dt)
    assert dt.min() >= 0.001 and dt.max() <= 0.1
    exempt = m.no_weight_decay()
    for name in ("shift_B", "log_dt", "inv_A_real", "A_imag", "B"):
        assert exempt[name] == "optimiser override"
    assert exempt["shift_C"] == "per-offset kernel"
    assert "C" not in exempt and "q_proj.weight" not in exempt
    assert mixers.build("h3", 8, 8, ssm_lr=1e-3).log_dt._optim == {"weight_decay": 0.0, "lr": 1e-3}


def test_state_is_bounded_but_reaches_back_beyond_the_shift_window():
    torch.manual_seed(0)
    m = mixers.build("h3", 8, 64, d_state=4).double()
    x = torch.randn(1, 40, 8, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(m(x2)[:, 30], y[:, 30])  # the diagonal SSM remembers token 0 at t = 30


@pytest.mark.parametrize("options,field", [({"head_dim": 3}, "head_dim"), ({"d_state": 7}, "d_state"),
                                           ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"), ({"impl": "fla"}, "impl")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        mixers.build("h3", 16, 16, **options)


def test_bfloat16_autocast_keeps_kernels_in_float32():
    m = mixers.build("h3", 16, 32, d_state=8)
    x = torch.randn(2, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    assert (y.float() - m(x)).norm() / m(x).norm() < 5e-2
