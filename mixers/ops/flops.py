"""FLOP conventions used by every mixer and by the backbone, in one place.

- A dense product of an (m, k) by a (k, n) matrix costs ``2 m n k`` (one multiply, one add).
- A real FFT (rfft or irfft) of length N costs ``2.5 N log2 N`` (half a complex FFT's 5 N log2 N).
- A complex multiply costs 6 real FLOPs; a complex multiply-accumulate 8.
- Elementwise operations cost one FLOP per element per operation, as listed at each call site.
- Training = forward + backward = 3 x forward unless a mixer states otherwise.
- Causal attention counts only the n(n+1)/2 unmasked query-key pairs, as a causal kernel computes.
"""
from __future__ import annotations

import math

TRAIN_MULTIPLIER = 3


def linear(tokens: int, d_in: int, d_out: int, bias: bool = False) -> float:
    """A linear layer applied to ``tokens`` vectors: ``2 tokens d_in d_out`` (+ bias adds)."""
    return 2.0 * tokens * d_in * d_out + (tokens * d_out if bias else 0.0)


def fft_size(length: int) -> int:
    """FFT length used for a causal (linear, not circular) convolution of ``length`` samples."""
    return 1 << max(0, (2 * length - 1 - 1).bit_length())


def real_fft(n_fft: int, count: int = 1) -> float:
    """``count`` real FFTs (forward or inverse) of length ``n_fft``."""
    return count * 2.5 * n_fft * math.log2(max(n_fft, 2))


def fft_causal_conv(length: int, channels: int) -> float:
    """FFT causal convolution of ``channels`` signals of ``length`` samples with known spectra.

    An rfft per signal, a complex product per frequency bin and an irfft per signal. The kernels'
    own rffts depend on parameters only and are counted once per forward pass (``real_fft``).
    """
    n_fft = fft_size(length)
    bins = n_fft // 2 + 1
    return real_fft(n_fft, 2 * channels) + 6.0 * bins * channels


def causal_depthwise_conv(length: int, channels: int, kernel_size: int) -> float:
    """Depthwise causal convolution with ``kernel_size`` taps (multiply-add per tap)."""
    return 2.0 * length * channels * kernel_size


def layer_norm(tokens: int, d: int) -> float:
    """Mean, variance, normalise, scale and shift: about 5 FLOPs per element."""
    return 5.0 * tokens * d
