"""Mamba2 (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality").

``mixers/mamba.py``'s ``MambaMixer`` with ``version=2`` fixed and mamba_ssm ``Mamba2``'s defaults.
Backends: mamba_ssm's Triton SSD kernels (``kernels``), the chunked PyTorch SSD scan (``torch``), or
transformers' ``Mamba2Mixer`` (``transformers``); ``auto`` picks kernels with CUDA and mamba_ssm,
else torch.
"""
from __future__ import annotations

from mixers import register
from mixers.mamba import MambaMixer


@register("mamba2")
class Mamba2(MambaMixer):
    """Mamba2: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    paper = ("Dao & Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
             "Structured State Space Duality (arXiv 2405.21060)")
    backends = ("mamba_ssm-triton-ssd", "torch-ssd-chunked", "transformers-torch-reference")

    def __init__(self, d_model: int, max_len: int, d_state: int = 128, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 256, dt_min: float = 0.001,
                 dt_max: float = 0.1, a_init_min: float = 1.0, a_init_max: float = 16.0, impl: str = "auto"):
        super().__init__(d_model, max_len, version=2, d_state=d_state, d_conv=d_conv, expand=expand,
                         headdim=headdim, ngroups=ngroups, chunk_size=chunk_size, dt_min=dt_min, dt_max=dt_max,
                         a_init_min=a_init_min, a_init_max=a_init_max, impl=impl)
