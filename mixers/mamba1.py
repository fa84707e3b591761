"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

``mixers/mamba.py``'s ``MambaMixer`` with ``version=1`` fixed and mamba_ssm ``Mamba``'s defaults
(d_state 16, d_conv 4, expand 2, dt_rank ceil(d_model / 16)). Backends: mamba_ssm's CUDA selective
scan (``kernels``), the chunked PyTorch selective scan (``torch``), or transformers' ``MambaMixer``
(``transformers``, the slow reference); ``auto`` picks kernels with CUDA and mamba_ssm, else torch.
``chunk_size`` is the chunk length of the PyTorch selective scan (``mixers/ops/selective_scan.py``).
"""
from __future__ import annotations

from mixers import register
from mixers.mamba import MambaMixer


@register("mamba1")
class Mamba1(MambaMixer):
    """Mamba: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    paper = "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (arXiv 2312.00752)"
    backends = ("mamba_ssm-cuda-selective-scan", "torch-selective-scan-chunked", "transformers-torch-reference")

    def __init__(self, d_model: int, max_len: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 chunk_size: int = 256, dt_min: float = 0.001, dt_max: float = 0.1, impl: str = "auto"):
        super().__init__(d_model, max_len, version=1, d_state=d_state, d_conv=d_conv, expand=expand,
                         chunk_size=chunk_size, dt_min=dt_min, dt_max=dt_max, impl=impl)
