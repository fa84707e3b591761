"""The Toeplitz MLP Mixer's flat token-mixing layer (Badger & Roland, arXiv 2605.06683): one causal
Toeplitz vector ``w`` of length ``max_len`` and one per-position bias per layer, shared by every
channel, with no projections: ``y[t, c] = sum_{s <= t} w[t - s] x[s, c] + b[t]``. This is the layer
the authors' analysis and evaluation code loads (their ``ToeplitzCausalLinear``); ``tmm`` is the
multi-head layer with projections. ``mixers/tmm.py``'s ``ToeplitzMixer`` with ``heads=1`` and
``projections=False`` fixed: the same implementations (``impl``), initialisation (Kaiming normal,
std sqrt(2 / train_len), zero bias) and no weight decay on the vector and the bias.
"""
from __future__ import annotations

from mixers import register
from mixers.tmm import ToeplitzMixer


@register("tmm_flat")
class FlatToeplitzMixer(ToeplitzMixer):
    """One Toeplitz vector and one bias: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    paper = "Badger & Roland 2026, Toeplitz MLP Mixer (arXiv 2605.06683), the flat layer"

    def __init__(self, d_model: int, max_len: int, impl: str = "auto", fused_max_len: int = 16384,
                 train_len: int | None = None):
        super().__init__(d_model, max_len, heads=1, projections=False, impl=impl, fused_max_len=fused_max_len,
                         train_len=train_len)

