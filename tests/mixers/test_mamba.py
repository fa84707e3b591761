"""Mamba2 in PyTorch (chunked SSD) against the sequential recurrence and transformers' Mamba2Mixer."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.ops.ssd import ssd_chunked, ssd_sequential


@pytest.mark.parametrize("batch,length,heads,p,groups,n,chunk", [
    (2, 1, 2, 3, 1, 4, 4), (2, 7, 2, 3, 1, 4, 4), (2, 64, 4, 8, 2, 16, 16), (1, 100, 2, 4, 1, 8, 32),
    (3, 33, 4, 2, 4, 5, 8), (1, 17, 6, 4, 3, 2, 64),
])
def test_chunked_scan_equals_sequential(batch, length, heads, p, groups, n, chunk):
    gen = torch.Generator().manual_seed(length * 31 + heads)
    kw = {"generator": gen, "dtype": torch.float64}
    x = torch.randn(batch, length, heads, p, **kw)
    dt = torch.rand(batch, length, heads, **kw) * 0.5
    A = -torch.rand(heads, **kw) * 4
    B, C = torch.randn(batch, length, groups, n, **kw), torch.randn(batch, length, groups, n, **kw)
    ref, fast = ssd_sequential(x, dt, A, B, C), ssd_chunked(x, dt, A, B, C, chunk)
    assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max()


@pytest.mark.parametrize("length,chunk", [(1, 8), (21, 8), (40, 64)])
def test_torch_mamba2_equals_transformers_mamba2(length, chunk):
    torch.manual_seed(0)
    ours = mixers.build("mamba", 32, 64, impl="torch", d_state=16, headdim=16, ngroups=2, chunk_size=chunk)
    theirs = mixers.build("mamba", 32, 64, impl="transformers", d_state=16, headdim=16, ngroups=2, chunk_size=chunk)
    theirs.inner.load_state_dict(ours.inner.state_dict())  # identical parameter names
    x = torch.randn(2, length, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


def test_backends_share_hyperparameters_and_parameter_count():
    a = mixers.build("mamba", 32, 64, impl="torch", d_state=16, headdim=16)
    b = mixers.build("mamba", 32, 64, impl="transformers", d_state=16, headdim=16)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert a.backend == "torch-ssd-chunked" and b.backend == "transformers-torch-reference"
