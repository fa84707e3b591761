"""Causal Toeplitz products (= causal long convolutions) along the last axis.

``y[..., i] = sum_{j <= i} k[..., i - j] * x[..., j]``, i.e. ``y = T x`` with the lower-triangular
Toeplitz matrix ``T[i, j] = k[i - j]`` for ``j <= i`` and 0 above the diagonal.

``causal_toeplitz_dense`` builds ``T`` explicitly (O(n^2), the reference); ``causal_toeplitz_fft``
computes the same product in O(n log n) by zero-padding to a linear (not circular) convolution.
Both broadcast ``kernel`` against ``x`` over all leading dimensions.
"""
from __future__ import annotations

import math

import torch

from mixers.ops.flops import fft_size


def toeplitz_matrix(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """Lower-triangular Toeplitz matrices ``(..., length, length)`` from ``kernel (..., >= length)``.

    Built by tiling ``u = [k[n-1], ..., k[0], 0 x (n-1)]`` and reading it with a row stride one
    shorter than ``u``, so row i starts at ``u[n-1-i]``: no gather, whose backward would
    accumulate n^2 gradients into n entries with atomics on GPU.
    """
    n = length
    u = torch.cat([kernel[..., :n].flip(-1), kernel.new_zeros(*kernel.shape[:-1], n - 1)], dim=-1)  # (..., 2n-1)
    tiled = u.repeat(*([1] * (u.dim() - 1)), n)[..., n - 1 : n - 1 + n * (2 * n - 2)]
    if n == 1:
        return u[..., None]
    return tiled.reshape(*kernel.shape[:-1], n, 2 * n - 2)[..., :n]


def causal_toeplitz_dense(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reference: ``x (..., n)``, ``kernel (..., >= n)`` broadcastable -> ``(..., n)`` via the dense matrix.

    One (n x n) matrix per distinct kernel, applied as a batched product to every signal that
    shares it (as the TMM reference code does: ``x (rows, n) @ W^T``), never expanded per signal.
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    k_lead = (1,) * (len(lead) - (kernel.dim() - 1)) + tuple(kernel.shape[:-1])
    own = [i for i, (a, b) in enumerate(zip(lead, k_lead)) if b != 1]  # dims with a kernel each
    shared = [i for i in range(len(lead)) if i not in own]  # dims that share one kernel
    xs = x.permute(*own, *shared, len(lead)).reshape(math.prod(lead[i] for i in own), -1, n)
    matrix = toeplitz_matrix(kernel[..., :n].reshape(-1, n), n)  # (kernels, n, n)
    y = xs @ matrix.transpose(-1, -2)  # (kernels, signals per kernel, n)
    y = y.reshape(*(lead[i] for i in own), *(lead[i] for i in shared), n)
    return y.permute(*torch.argsort(torch.tensor(own + shared)).tolist(), len(lead))


def _transform_dtype(t: torch.Tensor) -> torch.Tensor:
    """torch.fft has no bfloat16 and only power-of-two float16: transform those in float32."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def kernel_spectrum(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """Real FFT of ``kernel[..., :length]`` at the causal-convolution size (float32 or float64)."""
    return torch.fft.rfft(_transform_dtype(kernel[..., :length]), n=fft_size(length))


def causal_toeplitz_fft(
    x: torch.Tensor, kernel: torch.Tensor, spectrum: torch.Tensor | None = None
) -> torch.Tensor:
    """Fast path: ``x (..., n)``, ``kernel (..., >= n)`` broadcastable -> ``(..., n)`` in O(n log n).

    Half-precision inputs are transformed in float32 (torch.fft has no bfloat16); the result is
    cast back to ``x.dtype``. Pass ``spectrum = kernel_spectrum(kernel, n)`` to reuse a kernel's FFT.
    """
    n = x.shape[-1]
    n_fft = fft_size(n)
    if spectrum is None:
        spectrum = kernel_spectrum(kernel, n)
    x_f = torch.fft.rfft(_transform_dtype(x), n=n_fft)
    y = torch.fft.irfft(x_f * spectrum, n=n_fft)[..., :n]
    return y.to(x.dtype)


# Channels transformed at once by ``causal_toeplitz_fft_lean``: about this many FFT samples per slice,
# which bounds its float32 / complex transients (~28 bytes per sample: 0.9 GB) whatever the batch.
LEAN_FFT_SLICE_SAMPLES = 1 << 25


def _channel_slices(x: torch.Tensor) -> list[slice]:
    """Slices of ``x``'s channel axis (``-2``) of about ``LEAN_FFT_SLICE_SAMPLES`` FFT samples each."""
    channels = x.shape[-2] if x.dim() >= 2 else 1
    per_channel = max(1, x.numel() // max(1, x.shape[-1]) // channels) * fft_size(x.shape[-1])
    step = max(1, LEAN_FFT_SLICE_SAMPLES // per_channel)
    return [slice(i, min(i + step, channels)) for i in range(0, channels, step)]


def _kernel_part(kernel: torch.Tensor, part: slice) -> torch.Tensor:
    """The kernels of a channel slice (all of ``kernel`` where it has no channel axis of its own)."""
    return kernel[..., part, :] if kernel.dim() >= 2 and kernel.shape[-2] != 1 else kernel


class _CausalToeplitzLeanFFT(torch.autograd.Function):
    """``causal_toeplitz_fft`` that saves only ``x`` and ``kernel`` for backward and recomputes the
    spectra there (autograd through the FFTs would save the input's complex float32 spectrum of
    twice its length: 8x the bytes of a bf16 input, and the kernel's), transforming a slice of the
    channels at a time so that the float32 transients stay bounded."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, kernel)
        n = x.shape[-1]
        n_fft = fft_size(n)
        y = torch.empty_like(x)
        for part in _channel_slices(x):
            x_f = torch.fft.rfft(_transform_dtype(x[..., part, :] if x.dim() >= 2 else x), n=n_fft)
            x_f.mul_(kernel_spectrum(_kernel_part(kernel, part), n))  # in place: no autograd inside forward
            out = torch.fft.irfft(x_f, n=n_fft)[..., :n]
            if x.dim() >= 2:
                y[..., part, :] = out
            else:
                y.copy_(out)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, kernel = ctx.saved_tensors
        n = x.shape[-1]
        n_fft = fft_size(n)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dkernel = torch.zeros_like(kernel) if ctx.needs_input_grad[1] else None
        own = kernel.dim() >= 2 and kernel.shape[-2] != 1  # a kernel per channel: slices write their own rows
        for part in _channel_slices(x):
            pick = (lambda t: t[..., part, :]) if x.dim() >= 2 else (lambda t: t)  # noqa: E731
            k = _kernel_part(kernel, part)
            dy_f = torch.fft.rfft(_transform_dtype(pick(dy)), n=n_fft)
            if dx is not None:  # dx[j] = sum_{i >= j} k[i - j] dy[i]: a correlation (n_fft >= 2n - 1: no wrap)
                pick(dx).copy_(torch.fft.irfft(dy_f * kernel_spectrum(k, n).conj(), n=n_fft)[..., :n])
            if dkernel is not None:  # dk[m] = sum_i dy[i] x[i - m], summed over the signals sharing k
                cross = dy_f.mul_(torch.fft.rfft(_transform_dtype(pick(x)), n=n_fft).conj())
                extra = cross.dim() - k.dim()
                cross = cross.sum(dim=tuple(range(extra))) if extra else cross
                shared = [i for i in range(k.dim() - 1) if k.shape[i] == 1 and cross.shape[i] != 1]
                cross = cross.sum(dim=shared, keepdim=True) if shared else cross
                grad = torch.fft.irfft(cross, n=n_fft)[..., :n].to(kernel.dtype)
                if own:
                    dkernel[..., part, :n] = grad
                else:
                    dkernel[..., :n] += grad
        return dx, dkernel


def causal_toeplitz_fft_lean(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``causal_toeplitz_fft(x, kernel)`` (the same values), with training memory that of ``x`` and
    ``kernel`` alone and float32 transients bounded by ``LEAN_FFT_SLICE_SAMPLES``: ``x (..., channels,
    n)``, ``kernel (..., channels or 1, >= n)`` broadcastable against it, no more dimensions than ``x``."""
    return _CausalToeplitzLeanFFT.apply(x, kernel)


class _HeadsToeplitzFFT(torch.autograd.Function):
    """Per-head causal Toeplitz product by FFT that saves only ``x`` and ``w`` for backward and
    recomputes the spectra there, one head at a time (transient memory: one head's spectra)."""

    @staticmethod
    def forward(ctx, x, weight, heads):
        batch, n, d = x.shape
        e, n_fft = d // heads, fft_size(n)
        spectra = torch.fft.rfft(_transform_dtype(weight[:, :n]), n=n_fft)  # (heads, bins)
        y = torch.empty_like(x)
        for h in range(heads):
            part = slice(h * e, (h + 1) * e)
            x_f = torch.fft.rfft(_transform_dtype(x[..., part]), n=n_fft, dim=1)  # (batch, bins, e)
            y[..., part] = torch.fft.irfft(x_f * spectra[h, :, None], n=n_fft, dim=1)[:, :n]
        ctx.save_for_backward(x, weight)
        ctx.heads = heads
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        heads = ctx.heads
        batch, n, d = x.shape
        e, n_fft = d // heads, fft_size(n)
        spectra = torch.fft.rfft(_transform_dtype(weight[:, :n]), n=n_fft)
        dx = torch.empty_like(x)
        cross = spectra.new_empty(spectra.shape)  # sum over batch and channels of DY conj(X)
        for h in range(heads):
            part = slice(h * e, (h + 1) * e)
            dy_f = torch.fft.rfft(_transform_dtype(dy[..., part]), n=n_fft, dim=1)
            # dx[j] = sum_{i >= j} w[i - j] dy[i]: a correlation; zero padding to n_fft >= 2n - 1
            # keeps the circular products free of wrap-around for the n outputs kept.
            dx[..., part] = torch.fft.irfft(dy_f * spectra[h, :, None].conj(), n=n_fft, dim=1)[:, :n]
            x_f = torch.fft.rfft(_transform_dtype(x[..., part]), n=n_fft, dim=1)
            cross[h] = (dy_f * x_f.conj()).sum(dim=(0, 2))
        dweight = torch.zeros_like(weight, dtype=cross.real.dtype)
        dweight[:, :n] = torch.fft.irfft(cross, n=n_fft)[:, :n]  # dw[k] = sum dy[i] x[i - k]
        return dx, dweight.to(weight.dtype), None


def causal_toeplitz_heads_fft(x: torch.Tensor, weight: torch.Tensor, heads: int) -> torch.Tensor:
    """``x (batch, n, heads * e)``, ``weight (heads, >= n)`` -> ``(batch, n, heads * e)``: head h's
    channels times ``T_h[i, j] = w[h, i - j]`` (j <= i), by FFT in O(n log n), in ``x.dtype``.

    Saves only ``x`` and ``w`` for backward (spectra are recomputed there), so training memory is
    that of the input, not of float32 spectra of twice its length.
    """
    return _HeadsToeplitzFFT.apply(x, weight, heads)
