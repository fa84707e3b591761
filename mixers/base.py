"""The contract every sequence mixer fulfils.

A mixer maps ``(batch, length, d_model)`` to ``(batch, length, d_model)`` and is strictly causal:
output position ``t`` depends on input positions ``<= t`` only. It reports its analytic forward
FLOPs per sequence (``flop_terms`` / ``flops``), its declared complexity, and the backend that ran.
"""
from __future__ import annotations

import torch
from torch import nn


# what a dense (n x n) reference implementation (``impl="dense"``) costs in training, whatever the mixer
QUADRATIC = {"time_complexity": "O(n^2)", "time_exponent": 2.0, "memory_complexity": "O(n^2)", "memory_exponent": 2.0}


class Mixer(nn.Module):
    """Base class of all registered mixers.

    Subclasses set ``time_complexity`` and ``memory_complexity`` (training, in sequence length n and
    width d, as the paper states them) and implement ``flop_terms``.
    """

    time_complexity: str = "?"
    memory_complexity: str = "?"
    # the same as exponents of n (per sequence, training): what the scaling benchmark's fitted
    # log-log slopes are compared with
    time_exponent: float = float("nan")
    memory_exponent: float = float("nan")
    # what decoding holds per sequence and layer after n tokens (``state_size``), as a complexity
    # and as the exponent of n it grows with (0: a fixed-size state)
    state_complexity: str = "?"
    state_exponent: float = float("nan")
    # the work this mixer implements, and every backend it can run with (mixers/README.md lists them)
    paper: str = "?"
    backends: tuple[str, ...] = ("pytorch",)

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len

    @classmethod
    def declared_complexity(cls, impl: str | None = None, **options) -> dict:
        """``time_complexity``, ``time_exponent``, ``memory_complexity``, ``memory_exponent`` of a mixer
        built with these constructor ``options``, without building it (the scaling benchmark asks for
        variants it cannot build here, e.g. CUDA-only kernels). ``impl="dense"`` is every mixer's
        masked (n x n) reference: ``QUADRATIC``. Mixers whose complexity depends on another option
        (a kernel, a pattern, a window) override it; all declare through it in ``__init__``
        (``declare``). Options it does not depend on are ignored."""
        if impl == "dense":
            return dict(QUADRATIC)
        return {"time_complexity": cls.time_complexity, "time_exponent": cls.time_exponent,
                "memory_complexity": cls.memory_complexity, "memory_exponent": cls.memory_exponent}

    def declare(self, **options) -> None:
        """Set this instance's complexity attributes from ``declared_complexity(**options)``."""
        for key, value in self.declared_complexity(**options).items():
            setattr(self, key, value)

    @property
    def backend(self) -> str:
        """Which implementation runs the forward pass (e.g. ``torch-fft``, ``mamba_ssm-cuda``)."""
        return "pytorch"

    def backend_at(self, length: int) -> str:
        """The implementation that runs at ``length`` (mixers that switch paths by length override it)."""
        return self.backend

    def flop_terms(self, length: int) -> dict[str, float]:
        """Analytic forward FLOPs for one sequence of ``length`` tokens, split by kind.

        Keys are ``matmul`` (dense products, 2mnk: projections, convolutions, chunked scans),
        ``attention`` (scores and values of attention), ``fft`` (real FFTs at 2.5 N log2 N plus
        spectral products), ``scan`` (sequential recurrences) and ``elementwise`` (activations,
        gates, biases). See ``mixers/ops/flops.py`` for every convention.
        """
        raise NotImplementedError

    def parameter_flop_terms(self, length: int) -> dict[str, float]:
        """FLOPs done once per forward pass whatever the batch size (filters or kernel spectra
        computed from parameters alone), by kind. None unless a mixer says otherwise."""
        return {}

    def parameter_flops(self, length: int) -> float:
        return float(sum(self.parameter_flop_terms(length).values()))

    def flops(self, length: int) -> float:
        """Analytic forward FLOPs for one sequence of ``length`` tokens."""
        return float(sum(self.flop_terms(length).values()))

    # ---- generation: a cache or recurrent state, one token at a time -------------------------
    supports_decode: bool = False

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Parallel forward over a prompt ``x (batch, n, d_model)`` that also returns the decoding
        state after it. Mixers with a decode path override this."""
        raise NotImplementedError(f"{type(self).__name__} has no decode path")

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token ``x (batch, d_model)`` -> ``(batch, d_model)``, given and returning the state."""
        raise NotImplementedError(f"{type(self).__name__} has no decode path")

    def state_size(self, length: int) -> int:
        """Values held per sequence (one layer) to decode the token after ``length`` tokens: a KV
        cache or input history grows with length, a recurrent state does not."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, backend={self.backend}"
