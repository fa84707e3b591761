"""FLOP conventions used by every mixer and by the backbone, in one place.

- A dense product of an (m, k) by a (k, n) matrix costs ``2 m n k`` (one multiply, one add).
- A real FFT (rfft or irfft) of length N costs ``2.5 N log2 N`` (half a complex FFT's 5 N log2 N).
- A complex multiply costs 6 real FLOPs; a complex multiply-accumulate 8.
- Elementwise operations cost one FLOP per element per operation (bias adds, residual adds, gates);
  GELU, SiLU and softplus count 4 (sigmoid or tanh, multiply), exp 1, as listed at each call site.
- Depthwise convolutions count what ``nn.Conv1d(padding=k - 1)`` computes: n + k - 1 outputs.
- Keys of ``flop_terms``: ``matmul`` (everything computed as dense products: linear layers,
  convolutions, dense Toeplitz, SSD chunk products; what ``torch.utils.flop_counter`` counts on
  CPU), ``attention`` (scores and values inside scaled_dot_product_attention), ``fft``, ``scan``
  (sequential recurrences), ``elementwise``.
- Training = forward + backward = 3 x forward unless a mixer states otherwise.
- Causal attention counts only the n(n+1)/2 unmasked query-key pairs, as a causal kernel computes.
"""
from __future__ import annotations

import math

TRAIN_MULTIPLIER = 3


def linear(tokens: int, d_in: int, d_out: int) -> float:
    """The product of a linear layer applied to ``tokens`` vectors: ``2 tokens d_in d_out``.

    A bias adds ``tokens d_out`` elementwise FLOPs, counted by the caller under ``elementwise``.
    """
    return 2.0 * tokens * d_in * d_out


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


def matmul_fft_causal_conv(length: int, channels: int, radix: int = 16) -> float:
    """The same convolution with every FFT done as dense ``radix``-point DFTs, i.e. complex matrix
    products on tensor cores (Monarch / FlashFFTConv style): a real transform of ``n_fft`` samples as
    a complex one of ``n_fft / 2`` (8 ``radix`` real FLOPs per point per stage, ``log_radix`` stages),
    twiddles and packing not counted; one forward and one inverse per signal, then the products."""
    n_fft = fft_size(length)
    half = max(n_fft // 2, 1)
    stages = math.log(half, radix) if half > 1 else 0.0
    return channels * (2 * half * 8 * radix * stages + 6.0 * (n_fft // 2 + 1))


def causal_depthwise_conv(length: int, channels: int, kernel_size: int) -> float:
    """Depthwise causal convolution with ``kernel_size`` taps, as ``nn.Conv1d(padding=k - 1)`` computes
    it: ``length + k - 1`` outputs (the last ``k - 1`` are discarded), a multiply-add per tap."""
    return 2.0 * (length + kernel_size - 1) * channels * kernel_size


def layer_norm(tokens: int, d: int) -> float:
    """Mean, variance, normalise, scale and shift: about 5 FLOPs per element."""
    return 5.0 * tokens * d
