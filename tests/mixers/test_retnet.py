"""Multi-scale retention: the chunked form and the recurrence equal the paper's parallel retention,
decoding continues the parallel forward, fla's op (its documented maths on CPU, its kernel on CUDA)
equals the PyTorch path."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mixers
from mixers.ops import fla_kernels
from mixers.retnet import retention_log_decays
from tests.mixers.test_fla import TOLERANCE, fla_against_pytorch_errors, fla_here, relative_error


def paper_parallel_retention(mixer, x: torch.Tensor) -> torch.Tensor:
    """Sun et al. 2023, eq. (5): ``Retention(X) = (Q K^T (.) D) V``, ``D[n, m] = gamma^(n - m)`` for ``n >= m``,
    per head, on rotated q, k (q scaled by dk^-1/2); then the per-head norm, gate and output projection."""
    n = x.shape[1]
    q, k, v, gate = mixer._inputs(x, 0, "b n (h e) -> b h n e")
    gamma = torch.exp(retention_log_decays(mixer.heads, dtype=x.dtype))  # (h,)
    pos = torch.arange(n, dtype=x.dtype)
    D = gamma[:, None, None] ** (pos[:, None] - pos[None, :]) * (pos[:, None] >= pos[None, :])  # (h, n, n)
    o = (q @ k.transpose(-1, -2) * D) @ v
    return mixer._output(o, gate, "b h n e -> b n (h e)")


def test_decays_are_the_papers():
    assert torch.allclose(torch.exp(retention_log_decays(4, dtype=torch.float64)),
                          torch.tensor([1 - 2.0**-5, 1 - 2.0**-6, 1 - 2.0**-7, 1 - 2.0**-8], dtype=torch.float64))


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("d,heads,n,chunk,sub", [(16, 2, 1, 64, 16), (16, 2, 21, 8, 4), (32, 4, 40, 16, 8), (24, 3, 33, 64, 16)])
def test_paths_equal_the_paper_parallel_form(impl, d, heads, n, chunk, sub):
    torch.manual_seed(n)
    mixer = mixers.build("retnet", d, 64, heads=heads, chunk_size=chunk, subchunk_size=sub, impl=impl).double()
    x = torch.randn(2, n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, d, dtype=torch.float64)
    got = []
    for forward in (mixer, lambda t: paper_parallel_retention(mixer, t)):
        y = forward(x)
        got.append((y, *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*got):
        assert torch.allclose(a, b, atol=1e-11, rtol=1e-9)


def test_rotary_makes_scores_depend_on_offsets_only():
    mixer = mixers.build("retnet", 16, 64, heads=2).double()
    x = torch.randn(1, 1, 16, dtype=torch.float64).expand(1, 30, 16)  # one token repeated
    q, k, _, _ = mixer._inputs(x, 0, "b n (h e) -> b h n e")
    scores = q @ k.transpose(-1, -2)  # (1, h, n, n): constant along diagonals
    for offset in (0, -3, -17):
        diagonal = torch.diagonal(scores, offset, -2, -1)
        assert torch.allclose(diagonal, diagonal[..., :1].expand_as(diagonal), atol=1e-12)
    assert not torch.allclose(scores[..., 3, 0], scores[..., 4, 0])  # but do depend on the offset


def test_defaults_are_flas_layer():
    mixer = mixers.build("retnet", 64, 32)
    assert (mixer.heads, mixer.key_dim, mixer.value_dim) == (8, 64, 128)
    assert all(m.bias is None for m in mixer.modules() if isinstance(m, torch.nn.Linear))
    assert mixer.backend == "torch-chunked"


@pytest.mark.parametrize("options,field", [({"heads": 3}, "heads"), ({"impl": "fast"}, "impl"),
                                           ({"chunk_size": 6, "subchunk_size": 4}, "subchunk_size"),
                                           ({"heads": 16, "expand_k": 0.5}, "even"), ({"expand_k": 0.3}, "expand_k")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        mixers.build("retnet", 32, 16, **options)


# ---- fla's op: what fla 0.6.0 documents chunk_retention computes, on CPU ---------------------------------------
def fake_chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False):
    """``o_t = scale q_t S_t``, ``S_t = gamma_h S_{t-1} + k_t^T v_t``, ``gamma_h = 1 - 2^(-5 - h)``, (B, T, H, .)."""
    assert initial_state is None
    b, n, h, dk = q.shape
    scale = dk ** -0.5 if scale is None else scale
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(h, dtype=q.dtype))
    S = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for t in range(n):
        S = S * gamma[:, None, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * (q[:, t, :, :, None] * S).sum(-2))
    return torch.stack(out, dim=1), S if output_final_state else None


@pytest.fixture
def fake_fla(monkeypatch):
    monkeypatch.setattr(fla_kernels, "fla_ops", lambda: SimpleNamespace(chunk_retention=fake_chunk_retention))
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    monkeypatch.setattr(fla_kernels, "require_cuda_input", lambda *args: None)


@pytest.mark.parametrize("n", [1, 13, 40])
def test_fla_path_on_documented_op_equals_pytorch_path(fake_fla, n):
    torch.manual_seed(n)
    ours = mixers.build("retnet", 64, 64, heads=2, chunk_size=8, subchunk_size=4).double()
    fla = mixers.build("retnet", 64, 64, heads=2, impl="fla").double()
    fla.load_state_dict(ours.state_dict())
    assert fla.backend == "fla-chunk"
    x = torch.randn(2, n, 64, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, 64, dtype=torch.float64)
    got = []
    for mixer in (ours, fla):
        y, state = mixer.prefill(x)
        got.append((y, state["kv"], *torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()])))
    for a, b in zip(*got):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_conf_default_is_the_pytorch_path_on_cuda_too(fake_fla):
    """fla is opt-in (impl=fla, or impl=auto) until its GPU equality tests have passed on a GPU."""
    from omegaconf import OmegaConf
    options = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "mixer" / "retnet.yaml"))
    options.pop("name")
    for mixer in (mixers.build("retnet", 128, 64, **options), mixers.build("retnet", 128, 64)):  # conf, class defaults
        assert mixer.impl == "chunked" and mixer._path(torch.device("cuda")) == "chunked"


@pytest.mark.parametrize("heads,fits", [(8, True), (16, False)])  # key widths 16 and 8 at d_model 128
def test_auto_takes_fla_on_cuda_only_for_heads_fla_tiles(fake_fla, heads, fits):
    mixer = mixers.build("retnet", 128, 64, impl="auto", heads=heads)
    assert mixer._path(torch.device("cuda")) == ("fla" if fits else "chunked")
    assert mixer._path(torch.device("cpu")) == "chunked"
    if not fits:
        with pytest.raises(ValueError, match="retnet: impl=fla needs per-head widths >= 16"):
            mixers.build("retnet", 128, 64, impl="fla", heads=heads)


def test_forced_fla_without_fla_or_cuda_names_the_option():
    if fla_kernels.fla_unavailable() is None:
        pytest.skip("fla runs here")
    with pytest.raises(ValueError, match="impl=fla"):
        mixers.build("retnet", 64, 16, impl="fla")
    assert mixers.build("retnet", 64, 16, impl="auto").backend == "torch-chunked"


# ---- GPU: the real kernel ------------------------------------------------------------------------------------
@pytest.mark.gpu
@fla_here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernel_equals_pytorch_path_on_gpu(monkeypatch, dtype):
    """fla's chunk_retention at the default layer (8 heads) against the float32 chunked path."""
    from tests.mixers.test_fla import GPU_SHAPES
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    failures = []
    for batch, n, d_model in GPU_SHAPES:
        start = time.perf_counter()
        failures += fla_against_pytorch_errors(monkeypatch, "retnet", "fla", batch, n, d_model, dtype)
        torch.cuda.synchronize()
        # fla_against_pytorch_errors has printed (and flushed) this shape's failures
        print(f"retnet impl=fla {dtype}: batch {batch}, n {n}, d_model {d_model} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@fla_here
def test_fla_prefill_decodes_on_gpu():
    torch.manual_seed(0)
    mixer = mixers.build("retnet", 128, 256, impl="fla").cuda().eval()
    x = torch.randn(2, 80, 128, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        y, state = mixer.prefill(x[:, :64])
        outs = [y]
        for t in range(64, 80):
            o, state = mixer.step(x[:, t], state)
            outs.append(o[:, None])
    assert relative_error(torch.cat(outs, dim=1), full) <= TOLERANCE[torch.float32]
    auto = mixers.build("retnet", 128, 256, impl="auto").cuda()
    assert auto.backend == "fla-chunk"
