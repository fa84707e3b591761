"""The two state space models of H3 (Fu et al. 2023), as convolution kernels and as recurrences.

Both are linear time-invariant SSMs ``x_t = A x_{t-1} + B u_t``, ``y_t = C x_t`` per channel, so their
output is a causal convolution ``y = K * u`` with ``K[l] = C A^l B``: the kernels feed an FFT long
convolution (``mixers/ops/toeplitz.py``); the recurrences are the paper's token-by-token form (the
reference, and the decoding step); ``*_state`` give the state after a whole input from the kernel view.

- The **shift SSM**: ``A`` shifts the state down by one (``x_t[0] = 0``, ``x_t[m] = x_{t-1}[m - 1]`` before
  adding ``B u_t``), real ``B, C (channels, N)``: ``K[s] = sum_m B[m] C[m + s]`` for ``s < N``, zero beyond
  (a learned ``N``-tap filter: H3's "shift" SSM, a short convolution with ``B = e_1``).
- The **diagonal SSM** (S4D, Gu et al. 2022): ``N / 2`` complex modes per channel, with conjugate pairs
  implied, ``A = -exp(inv_A_real) + i A_imag``, step ``dt = exp(log_dt)``, bilinear discretisation
  ``dA = (1 + dt A / 2) / (1 - dt A / 2)``, ``dB = dt B / (1 - dt A / 2)``; ``K[l] = 2 Re(sum_n C_n dB_n dA_n^l)``
  (the real part: the conjugate modes' half). H3's reference: HazyResearch/zoology
  ``zoology/mixers/h3/ss_kernel_diag.py`` (``SSKernelDiag``, ``disc='bilinear'``, ``real_type='exp'``).

Shapes: ``u (..., channels, n)`` signals; shift ``B, C (channels, N)``, state ``(..., channels, N)``; diagonal
``dA, dB, C`` complex ``(channels, N / 2)``, state complex ``(..., channels, N / 2)``.
"""
from __future__ import annotations

import torch
from torch.nn import functional as TF

from mixers.ops.toeplitz import causal_toeplitz_dense


# ---- shift SSM ----------------------------------------------------------------------------------------------
def shift_kernel(B: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    """``K (channels, length)``: ``K[s] = sum_m B[m] C[m + s]`` for ``s < N``, zero for ``s >= N``."""
    N = B.shape[-1]
    windows = TF.pad(C, (0, N)).unfold(-1, N, 1)[:, :N]  # (channels, s, m) = C[s + m]
    kernel = torch.einsum("csm,cm->cs", windows, B)  # (channels, N)
    return TF.pad(kernel, (0, length - N)) if length > N else kernel[:, :length]


def shift_step(B: torch.Tensor, C: torch.Tensor, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: ``u (..., channels)``, ``state (..., channels, N)`` -> ``y (..., channels)`` and the new state."""
    state = TF.pad(state, (1, -1)) + B * u[..., None]
    return (C * state).sum(-1), state


def shift_state(B: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The state after ``u (..., channels, n)`` from a zero state: ``x[m] = sum_{s <= m} B[m - s] u_{n-1-s}``."""
    N = B.shape[-1]
    recent = TF.pad(u, (N, 0))[..., -N:].flip(-1)  # (..., channels, N): u_{n-1-s}, zero before the start
    return causal_toeplitz_dense(recent, B)


# ---- diagonal SSM (S4D) -------------------------------------------------------------------------------------
def diag_discretised(log_dt: torch.Tensor, inv_A_real: torch.Tensor, A_imag: torch.Tensor,
                     B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear ``dA, dB`` complex ``(channels, N / 2)`` from ``log_dt (channels,)``, ``inv_A_real, A_imag``
    ``(channels, N / 2)`` and complex ``B (channels, N / 2)``."""
    dt = torch.exp(log_dt)[:, None]
    dtA = torch.complex(-torch.exp(inv_A_real), A_imag) * dt
    return (1 + dtA / 2) / (1 - dtA / 2), B * dt / (1 - dtA / 2)


DIAG_KERNEL_BLOCK = 64  # positions per block of ``diag_kernel``'s Vandermonde product


def diag_kernel_blocks(length: int) -> tuple[int, int]:
    """``(blocks, block)`` of positions ``diag_kernel`` forms for ``length``: ``blocks * block >= length``."""
    block = min(length, DIAG_KERNEL_BLOCK)
    return -(-length // block), block


def diag_kernel(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    """``K (channels, length) = 2 Re(sum_n C_n dB_n dA_n^l)``, a Vandermonde product, in blocks of positions
    ``l = c b + j`` (``b`` positions a block): ``dA^l = dA^(c b) dA^j``, so ``(C dB dA^(c b)) (channels, blocks, N / 2)``
    times ``dA^j (channels, N / 2, b)``, contracted as two real products; the powers as ``exp(l log dA)``.
    Nothing of size ``channels x N x length`` is formed."""
    blocks, block = diag_kernel_blocks(length)
    log_dA = torch.log(dA)[..., None]  # (channels, N / 2, 1)
    steps = torch.arange(max(blocks, block), device=dA.device, dtype=dA.real.dtype)
    inner = torch.exp(log_dA * steps[:block])  # (channels, N / 2, b): dA^j
    outer = (C * dB)[:, None, :] * torch.exp(log_dA * (steps[:blocks] * block)).transpose(1, 2)  # (channels, blocks, N / 2)
    K = 2 * (torch.einsum("cbn,cnj->cbj", outer.real, inner.real) - torch.einsum("cbn,cnj->cbj", outer.imag, inner.imag))
    return K.flatten(1)[:, :length]


def diag_step(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, u: torch.Tensor,
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: real ``u (..., channels)``, complex ``state (..., channels, N / 2)`` -> real ``y`` and the state."""
    state = dA * state + dB * u[..., None]
    return 2 * (C * state).real.sum(-1), state


def diag_state(dA: torch.Tensor, dB: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The state after ``u (..., channels, n)`` from a zero state: ``dB sum_j dA^(n-1-j) u_j``."""
    n = u.shape[-1]
    back = torch.arange(n - 1, -1, -1, device=u.device, dtype=dA.real.dtype)
    powers = torch.exp(torch.log(dA)[..., None] * back)  # (channels, N / 2, n)
    return dB * torch.einsum("...cl,cnl->...cn", u.to(powers.dtype), powers)
