"""The contract every sequence mixer fulfils.

A mixer maps ``(batch, length, d_model)`` to ``(batch, length, d_model)`` and is strictly causal:
output position ``t`` depends on input positions ``<= t`` only. It reports its analytic forward
FLOPs per sequence (``flop_terms`` / ``flops``), its declared complexity, and the backend that ran.
It also declares which of its parameters get no weight decay (``no_weight_decay``) and which carry
their own optimiser settings (``param._optim``, e.g. Hyena's filter), as its authors train it.
"""
from __future__ import annotations

import torch
from torch import nn


NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's, or any module whose class name ends in ``Norm`` (mamba_ssm's
    ``RMSNormGated``, this project's ``GatedRMSNorm``)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def conventional_exemptions(module: nn.Module, kernels: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """``{parameter name: why}`` for the parameters of ``module`` that the usual conventions (mamba_ssm,
    fla, nanoGPT) train without weight decay, names as ``module.named_parameters()`` gives them:

    - ``marked``: the parameter carries ``_no_weight_decay = True`` (mamba_ssm's marks on A_log, D, dt_bias);
    - ``optimiser override``: its own ``param._optim`` sets ``weight_decay`` to 0 (Hyena's filter);
    - ``per-offset kernel``: named in ``kernels`` (one weight per sequence offset: Toeplitz vectors,
      convolution filters);
    - ``norm``: a parameter of a normalisation layer (``is_norm``);
    - ``bias``: named ``bias`` or ``*_bias`` (per-position biases included, whatever their shape);
    - ``vector``: any other parameter of fewer than two dimensions (per-channel scales, nanoGPT's rule).

    Everything else (the weight matrices of linear layers, embeddings) is decayed.
    """
    norms = {f"{prefix}.{name}" if prefix else name
             for prefix, sub in module.named_modules() if is_norm(sub) for name, _ in sub.named_parameters(recurse=False)}
    unknown = sorted(set(kernels) - {name for name, _ in module.named_parameters()})
    if unknown:
        raise ValueError(f"{type(module).__name__}: per-offset kernels {unknown} are not parameters of it")
    exempt = {}
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if getattr(p, "_no_weight_decay", False):
            exempt[name] = "marked"
        elif getattr(p, "_optim", {}).get("weight_decay", None) == 0:
            exempt[name] = "optimiser override"
        elif name in kernels:
            exempt[name] = "per-offset kernel"
        elif name in norms:
            exempt[name] = "norm"
        elif leaf == "bias" or leaf.endswith("_bias"):
            exempt[name] = "bias"
        elif p.dim() < 2:
            exempt[name] = "vector"
    return exempt


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

    # ---- training: what its authors exempt from weight decay --------------------------------
    def per_offset_kernels(self) -> set[str]:
        """Names (as ``named_parameters`` gives them) of parameters holding one weight per sequence
        offset, which get no weight decay: by default the weights of every ``nn.Conv1d`` inside the
        mixer (short causal convolutions); mixers with other kernels (Toeplitz vectors) add theirs."""
        return {f"{prefix}.weight" if prefix else "weight" for prefix, sub in self.named_modules()
                if isinstance(sub, nn.Conv1d)}

    def no_weight_decay(self) -> dict[str, str]:
        """``{parameter name: why}`` for every parameter of this mixer trained without weight decay
        (``conventional_exemptions`` with this mixer's ``per_offset_kernels``). Override to declare
        more; every registered mixer's exemptions are checked against the conventions by a test."""
        return conventional_exemptions(self, self.per_offset_kernels())

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
