"""flash-linear-attention (fla-org/flash-linear-attention, fla 0.6.0) Triton kernels behind the
``impl=fla*`` paths of the gla, hgrn2, linear_attention, based, retnet, rwkv7, deltanet and gated_deltanet mixers.

fla is optional: it is imported on first use, never at import time (importing it pulls in its
layers and transformers), and ``fla_unavailable()`` says why it cannot run here (not installed, or
no CUDA device). Every function takes and returns fla's layout, ``(batch, length, heads, dim)``
(the based ops transpose to their head-first kernels themselves), and returns what the PyTorch
path of ``mixers/ops/linear_attention.py`` computes with the same inputs: where fla's op
normalises differently (its own epsilon, its own denominator), it is called without
normalisation and the normaliser is formed here exactly as the PyTorch path forms it (the
denominator cast to the output dtype, then ``numerator / (denominator + eps)``).

- ``gla``: ``chunk_gla`` with ``scale=1`` (queries come scaled); ``g`` is the natural-log decay,
  as ours (fla converts to base 2 inside). hgrn2 calls it too (keys ``1 - f``, as fla's ``HGRN2Attention``).
- ``retention``: ``chunk_retention`` with ``scale=1`` (queries come scaled); fla fixes head ``h``'s decay
  at ``1 - 2^(-5 - h)``, as ours.
- ``linear_attention``: ``chunk_linear_attn(normalize=False, scale=1)`` on the feature-mapped q, k;
  the denominator ``phi(q_t) . sum_{j<=t} phi(k_j)`` from a cumulative sum (float32 for 16-bit inputs).
- ``based_parallel``: ``parallel_based``'s kernel (``ParallelBasedFunction``), which forms
  ``1 + s + s^2 / 2`` with ``s = q.k / sqrt(f)`` from q, k directly, quadratic in length (fla's
  ``BasedLinearAttention`` default), returning numerator and denominator.
- ``based_fused_chunk``: ``fused_chunk_based``'s kernel (``FusedChunkBasedFunction``), the same
  kernel value through chunked zeroth-, first- and second-order states (feature_dim <= 16),
  linear in length.
- ``based_chunk``: the distinct Taylor features (153 for f = 16, as fla's ``TaylorFeatureMap``:
  their products give the same kernel value) through ``chunk_linear_attn``, fla's ``chunk`` mode of
  ``BasedLinearAttention``; one zero feature is appended when the count is odd (fla's 16-bit
  backward needs an even key width; a zero feature adds nothing).
- ``rwkv7``: ``chunk_rwkv7`` (fla's ``chunk_dplr_delta_rule``) with ``scale=1``, ``a = -kappa``,
  ``b = kappa * a_gate``, the natural-log decay ``w``, and the decay's lower bound ``-e^-0.5``
  (``safe_gate``, ``lower_bound``, 64-token chunks, as fla's ``RWKV7Attention`` calls it).
- ``delta_rule``: ``chunk_delta_rule`` (16-bit inputs; it refuses float32) or ``chunk_gated_delta_rule``
  (with log decays; and float32 inputs without decays, with decays of zero: the same recurrence), with
  ``scale=1`` and the kernels' own q, k normalisation off (q, k come normalised and scaled, beta after
  its sigmoid, the log decays formed, as the PyTorch path of ``mixers/ops/delta_rule.py`` takes them); q and
  k are cast to v's dtype (CUDA autocast forms the L2 norms in float32). ``gated_delta_backward_refused``
  says where fla refuses the gated kernel's backward (Hopper with Triton >= 3.4, < 3.7.1, without tilelang).
"""
from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import torch


@lru_cache(maxsize=1)
def fla_ops() -> SimpleNamespace:
    """fla's entry points used here, imported once (an ``ImportError`` where fla is absent)."""
    from fla.ops.based.fused_chunk import FusedChunkBasedFunction
    from fla.ops.based.parallel import ParallelBasedFunction
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.retention import chunk_retention
    from fla.ops.rwkv7 import chunk_rwkv7
    return SimpleNamespace(chunk_gla=chunk_gla, chunk_linear_attn=chunk_linear_attn, chunk_retention=chunk_retention,
                           parallel_based=ParallelBasedFunction.apply, fused_chunk_based=FusedChunkBasedFunction.apply,
                           chunk_rwkv7=chunk_rwkv7, chunk_delta_rule=chunk_delta_rule,
                           chunk_gated_delta_rule=chunk_gated_delta_rule)


@lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        fla_ops()
    except Exception as err:  # ImportError, or a Triton / version mismatch raised while importing
        return f"flash-linear-attention does not import ({type(err).__name__}: {err})"
    return None


def fla_unavailable() -> str | None:
    """Why fla's kernels cannot run here (None when they can): fla must import and CUDA be present."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _import_error()


# fla's chunk kernels tile each head's key and value widths by their next power of two and multiply the
# tiles with Triton's tl.dot, which needs every dimension >= 16: narrower heads take the PyTorch path
MIN_HEAD_WIDTH = 16


def fits(**widths: int) -> bool:
    """Whether per-head widths (e.g. ``key=8, value=16``) suit fla's chunk kernels."""
    return all(w >= MIN_HEAD_WIDTH for w in widths.values())


def require_fits(mixer: str, impl: str, **widths: int) -> None:
    """Raise a ``ValueError`` naming the widths when they are below ``MIN_HEAD_WIDTH``."""
    if not fits(**widths):
        sizes = ", ".join(f"{name} {w}" for name, w in widths.items())
        raise ValueError(f"{mixer}: impl={impl} needs per-head widths >= {MIN_HEAD_WIDTH} (fla's Triton tiles), "
                         f"got {sizes}; use fewer heads, impl=auto or chunked")


def require_fla(mixer: str, impl: str) -> None:
    """Raise a ``ValueError`` naming the option when ``impl`` (an fla path) cannot run here."""
    reason = fla_unavailable()
    if reason is not None:
        raise ValueError(f"{mixer}: impl={impl} needs flash-linear-attention 0.6.0 (pip install "
                         f"flash-linear-attention) and a CUDA device, but here: {reason}; use impl=auto or chunked")


def require_cuda_input(mixer: str, impl: str, x: torch.Tensor) -> None:
    """fla's kernels are Triton: a clear error for inputs elsewhere (the module was moved off CUDA)."""
    if not x.is_cuda:
        raise RuntimeError(f"{mixer}: impl={impl} runs flash-linear-attention's Triton kernels, which need CUDA "
                           f"inputs (got {x.device}); use impl=auto or chunked on CPU")


def choose_path(impl: str, device: torch.device, fits: bool) -> str:
    """The path a mixer with fla kernels runs for inputs on ``device``: ``impl`` when it names one;
    for ``auto``, ``fla`` on CUDA where fla imports and the shapes fit it (``fits``), ``chunked`` (the
    PyTorch path) otherwise."""
    if impl != "auto":
        return impl
    return "fla" if device.type == "cuda" and fits and fla_unavailable() is None else "chunked"


def chunk_backend(path: str) -> str:
    """The backend name a record gives a path of a mixer whose fla kernel is a chunked one."""
    return "fla-chunk" if path == "fla" else f"torch-{path}"


def normalise(numerator: torch.Tensor, denominator: torch.Tensor, eps: float) -> torch.Tensor:
    """``numerator (..., dv) / (denominator (...) + eps)`` in the numerator's dtype, as the PyTorch path
    (which divides the two columns of one output tensor)."""
    return numerator / (denominator.to(numerator.dtype)[..., None] + eps)


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` (scaled), ``k``, ``g`` (log decays <= 0) ``(b, n, h, dk)``, ``v (b, n, h, dv)`` -> ``o (b, n, h, dv)``
    and the final state ``(b, h, dk, dv)`` in ``v``'s dtype."""
    o, state = fla_ops().chunk_gla(q, k, v, g, scale=1.0, output_final_state=True)
    return o, state.to(v.dtype)


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` (scaled), ``k (b, n, h, dk)``, ``v (b, n, h, dv)`` -> ``o (b, n, h, dv)`` and the final state
    ``(b, h, dk, dv)`` in ``v``'s dtype, with head ``h``'s fixed decay ``1 - 2^(-5 - h)``."""
    o, state = fla_ops().chunk_retention(q, k, v, scale=1.0, output_final_state=True)
    return o, state.to(v.dtype)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised causal linear attention: feature-mapped ``q, k (b, n, h, dk)``, ``v (b, n, h, dv)`` ->
    ``o_t = q_t S_t / (q_t . z_t + eps)`` ``(b, n, h, dv)`` and the state ``[S, z] (b, h, dk, dv + 1)``
    (the PyTorch path's layout: z is the ones column's state)."""
    numerator, S = fla_ops().chunk_linear_attn(q, k, v, scale=1.0, normalize=False, output_final_state=True)
    ct = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype  # as the PyTorch path computes
    z = torch.cumsum(k, dim=1, dtype=ct)  # (b, n, h, dk)
    denominator = (q.to(ct) * z).sum(-1)  # (b, n, h)
    state = torch.cat([S.to(ct), z[:, -1, :, :, None]], dim=-1)
    return normalise(numerator, denominator, eps), state.to(v.dtype)


def based_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalised Taylor linear attention, ``K(q, k) = 1 + s + s^2 / 2``, ``s = q.k / sqrt(f)``: raw
    ``q, k (b, n, h, f)`` (f <= 128), ``v (b, n, h, dv)`` -> ``(b, n, h, dv)``; O(n^2) work."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # head-first, as the kernel reads them
    numerator, denominator = fla_ops().parallel_based(q, k, v, q.shape[-1] ** -0.5)
    return normalise(numerator, denominator, eps).transpose(1, 2)


def based_fused_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``based_parallel`` through fla's fused chunked kernel (f <= 16), O(n) work."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    numerator, denominator = fla_ops().fused_chunk_based(q, k, v, q.shape[-1] ** -0.5)
    return normalise(numerator, denominator, eps).transpose(1, 2)


def distinct_taylor_features(x: torch.Tensor) -> torch.Tensor:
    """``x (..., f)`` -> ``[1, x / f^(1/4), x_i^2 / (sqrt 2 sqrt f), x_i x_j / sqrt f (i < j)]`` (``1 + f +
    f (f + 1) / 2`` features, padded to an even count with a zero):
    ``phi(x) . phi(y) = 1 + x.y / sqrt(f) + (x.y)^2 / (2 f)``."""
    f = x.shape[-1]
    i, j = torch.triu_indices(f, f, 1, device=x.device)
    parts = [torch.ones_like(x[..., :1]), x / f ** 0.25, x * x / (math.sqrt(2.0) * math.sqrt(f)),
             x[..., i] * x[..., j] / math.sqrt(f)]
    if (1 + f + f * (f + 1) // 2) % 2:
        parts.append(torch.zeros_like(x[..., :1]))
    return torch.cat(parts, dim=-1)


def based_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``based_parallel`` through the distinct Taylor features and ``chunk_linear_attn``, O(n) work."""
    return linear_attention(distinct_taylor_features(q), distinct_taylor_features(k), v, eps)[0]


def rwkv7(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
          decay_bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-7's generalised delta rule ``S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t^T v_t``, ``o_t = r_t S_t``:
    ``r, w`` (log decays in ``[-decay_bound, 0)``), ``k, a, b (b, n, h, dk)``, ``v (b, n, h, dv)`` -> ``o (b, n, h, dv)``
    and the final state ``(b, h, dk, dv)`` in ``v``'s dtype."""
    o, state = fla_ops().chunk_rwkv7(r=r, w=w, k=k, v=v, a=a, b=b, scale=1.0, output_final_state=True,
                                     safe_gate=True, lower_bound=-decay_bound, chunk_size=64)
    return o, state.to(v.dtype)


@lru_cache(maxsize=1)
def gated_delta_backward_refused() -> str | None:
    """Why fla refuses the backward of ``chunk_gated_delta_rule`` here (None where it runs, or fla is absent).

    fla 0.6.0's ``chunk_bwd_dqkwg`` (``fla/ops/common/chunk_o.py``) raises a ``RuntimeError`` for gated inputs
    on Hopper GPUs (H100, H200) with Triton >= 3.4 and < 3.7.1, which miscompiles it (fla issue #640), unless
    its TileLang backend takes the call: then the gated delta rule (gated_deltanet; deltanet in float32, which
    runs the gated kernel with zero decays) runs forward on fla's kernels but cannot be trained through them."""
    try:
        import triton
        from fla.backends import _DISPATCH_DISABLED
        from fla.ops.common.backends.tilelang import CommonTileLangBackend
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except Exception:  # fla absent, or no CUDA / Triton here
        return None
    if not (IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1):
        return None
    if not _DISPATCH_DISABLED and CommonTileLangBackend.is_available() and CommonTileLangBackend().is_enabled():
        return None
    return (f"fla refuses the backward of chunk_gated_delta_rule on Hopper with Triton {triton.__version__} "
            "(>= 3.4 and < 3.7.1 miscompile its gated chunk_bwd_dqkwg, fla issue #640) without tilelang")


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule: ``q`` (normalised, scaled), ``k`` (normalised) ``(b, n, h, dk)``, ``v (b, n, h, dv)``,
    ``beta`` and log decays ``g <= 0`` (None: none) ``(b, n, h)`` -> ``o (b, n, h, dv)`` and the final state
    ``(b, h, dk, dv)`` in ``v``'s dtype."""
    ops = fla_ops()
    # the kernels' dtype is v's: under CUDA autocast the L2 norms' sum and rsqrt run in float32 (autocast's
    # float32 list), so q and k arrive in float32 beside 16-bit v, which chunk_delta_rule refuses
    # (q.dtype == k.dtype == v.dtype); fla's own layers hand its kernels q, k, v of one dtype
    q, k = q.to(v.dtype), k.to(v.dtype)
    if g is None and q.dtype in (torch.float16, torch.bfloat16):
        o, state = ops.chunk_delta_rule(q, k, v, beta, scale=1.0, output_final_state=True,
                                        use_qk_l2norm_in_kernel=False)
    else:
        g = torch.zeros_like(beta, dtype=torch.float32) if g is None else g
        o, state = ops.chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, output_final_state=True,
                                              use_qk_l2norm_in_kernel=False)
    return o.to(v.dtype), state.to(v.dtype)
