"""Shared fixtures: small sizes so the whole suite runs in minutes on 2 CPU cores."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers.mamba import transformers_mamba_uses_kernels

# Options giving each registered mixer (and notable variants) a small, fast instance.
MIXER_CASES = {
    "tmm": {"heads": 2},
    "tmm-flat": {"heads": 1, "projections": False},
    "tmm-expanded": {"heads": 2, "expanded": True},
    "tmm-dense": {"heads": 2, "impl": "dense"},
    "tmm_flat": {},
    "tmm_flat-dense": {"impl": "dense"},
    "attention": {"heads": 2},
    "attention-nope": {"heads": 2, "position": "nope"},
    "mamba": {"d_state": 8, "headdim": 8, "chunk_size": 8, "impl": "torch"},
    "mamba-v1": {"version": 1, "d_state": 4, "impl": "transformers"},
    "h3": {"d_state": 8},
    "h3-heads": {"d_state": 8, "head_dim": 2},
    "h3-recurrent": {"d_state": 8, "head_dim": 2, "impl": "recurrent"},
    "hyena": {"filter_width": 16},
    "mamba1": {"d_state": 4, "chunk_size": 5, "impl": "torch"},
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8, "impl": "torch"},
    "tnn": {"rpe_dim": 8, "rpe_layers": 2},
    "tnn-dense": {"rpe_dim": 8, "rpe_layers": 2, "impl": "dense"},
    "gltm": {"pattern": "power2", "heads": 16, "block_size": 8},
    "gltm-square": {"pattern": "square", "heads": 16, "block_size": 2},  # n^1.5 terms visible at d 32
    "hgrn2": {"expand_ratio": 8, "chunk_size": 8, "subchunk_size": 4},
    "hgrn2-bounded": {"expand_ratio": 8, "lower_bound": 0.5, "impl": "recurrent"},
    "linear_attention": {"heads": 2, "chunk_size": 8},
    "linear_attention-recurrent": {"heads": 2, "impl": "recurrent"},
    "gla": {"heads": 2, "chunk_size": 8, "subchunk_size": 4},
    "gla-recurrent": {"heads": 2, "impl": "recurrent"},
    "based": {"heads": 2, "feature_dim": 4, "window": 8, "chunk_size": 8},
    "based-linear": {"heads": 2, "feature_dim": 4, "window": 0, "chunk_size": 8},
    "retnet": {"heads": 2, "chunk_size": 8, "subchunk_size": 4},
    "retnet-recurrent": {"heads": 2, "impl": "recurrent"},
    "rwkv7": {"head_dim": 8, "chunk_size": 8, "zero_output_init": False},  # fla zeroes o_proj: no output to test
    "rwkv7-recurrent": {"head_dim": 8, "impl": "recurrent", "zero_output_init": False},
    "deltanet": {"heads": 2, "chunk_size": 8},
    "deltanet-recurrent": {"heads": 2, "impl": "recurrent"},
    "gated_deltanet": {"heads": 2, "chunk_size": 8},
    "gated_deltanet-recurrent": {"heads": 2, "impl": "recurrent"},
    "sliding_window_attention": {"heads": 2, "window": 8},
    "sliding_window_attention-dense": {"heads": 2, "window": 8, "impl": "dense"},
}

if transformers_mamba_uses_kernels():
    # transformers' Mamba mixers then run causal_conv1d / mamba_ssm, which refuse CPU tensors: its
    # reference path, what this case exercises, does not exist here (the GPU machine).
    del MIXER_CASES["mamba-v1"]


def case_mixer(case: str) -> str:
    return case.split("-")[0]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_every_registered_mixer_has_a_case():
    assert {case_mixer(c) for c in MIXER_CASES} == set(mixers.available())


class _KernelStandIn:
    """Stands in for mamba_ssm's modules on a CPU machine: the same parameter names (ours), and a
    forward that fails as a CUDA kernel given CPU tensors would."""

    @staticmethod
    def build(mixer, dt_min, dt_max, a_min, a_max):
        from mixers.mamba import Mamba1Torch, Mamba2Torch

        if mixer.version == 1:
            module = Mamba1Torch(mixer.d_model, mixer.d_state, mixer.d_conv, mixer.expand, mixer.dt_rank, dt_min,
                                 dt_max, mixer.chunk_size)
            name = "mamba_ssm-cuda-selective-scan"
        else:
            module = Mamba2Torch(mixer.d_model, mixer.d_state, mixer.d_conv, mixer.expand, mixer.headdim,
                                 mixer.ngroups, mixer.chunk_size, dt_min, dt_max, a_min, a_max)
            name = "mamba_ssm-triton-ssd-fused-causal_conv1d"
        torch.randn(1000)  # mamba_ssm's own initialisation draws other numbers

        def refuse(*args, **kwargs):
            raise RuntimeError("a CUDA kernel was given CPU tensors")

        module.forward = module.prefill = module.step = refuse
        return module, name


@pytest.fixture
def mamba_kernels_installed(monkeypatch):
    """A machine where mamba_ssm imports and a GPU is visible (``auto`` picks ``kernels``)."""
    import mixers.mamba

    monkeypatch.setattr(mixers.mamba, "kernels_available", lambda: True)
    monkeypatch.setattr(mixers.mamba.MambaMixer, "_build_mamba_ssm", _KernelStandIn.build)
