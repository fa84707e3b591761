"""Parameter matching: give every model of a comparison the same parameter count.

``model.match_params: <target>`` sizes the backbone around each mixer so the whole model (tied
weights once) has ``target`` parameters within ``model.match_tolerance`` (2% by default). Mixers
are untouched; two backbone knobs move, as ``model.match_by`` says:

- ``d_model+mlp`` (default): the largest width ``d_model`` that the mixer accepts (e.g. Mamba needs
  ``expand * d_model`` divisible by ``headdim``) whose model stays at or below the target, then
  the MLP's hidden width (the block's expansion) takes up the remainder, which is less than one
  width step;
- ``d_model``: the accepted width whose count is closest to the target, nothing else;
- ``mlp``: ``d_model`` as configured, only the MLP's hidden width moves.

Counts come from models built on the ``meta`` device (no memory, no initialisation).
"""
from __future__ import annotations

from typing import Callable

import torch

from harness.run.model import SequenceModel

MATCH_BY = ("d_model+mlp", "d_model", "mlp")
WIDTH_STEP = 8          # candidate widths: multiples of this
MAX_WIDTH = 8192


class MatchError(ValueError):
    """The target cannot be met; the message says why."""


Builder = Callable[[int, int | None], SequenceModel]  # (d_model, mlp_hidden or None) -> model


def count(build: Builder, d_model: int, mlp_hidden: int | None = None) -> int | None:
    """Total parameters of ``build(d_model, mlp_hidden)`` built on ``meta``; None if the mixer rejects the width."""
    try:
        with torch.device("meta"):
            return build(d_model, mlp_hidden).parameter_counts()["total"]
    except (ValueError, TypeError):
        return None


def accepted_widths(build: Builder, stop_above: int):
    """``(d_model, total parameters)`` for the accepted multiples of ``WIDTH_STEP`` in increasing order,
    up to and including the first whose count exceeds ``stop_above`` (counts grow with the width)."""
    for d in range(WIDTH_STEP, MAX_WIDTH + 1, WIDTH_STEP):
        n = count(build, d)
        if n is None:
            continue
        yield d, n
        if n > stop_above:
            return


def fill_with_mlp(build: Builder, d_model: int, target: int, n_layers: int) -> tuple[int, int]:
    """MLP hidden width bringing the model to ``target`` parameters at ``d_model``, and the resulting count.

    Each hidden unit adds the channel mixer's ``parameters_per_unit`` per layer (the MLP's
    ``2 d_model + 1``: a row of its first layer with its bias, a column of the second; SwiGLU's ``3 d_model``).
    """
    with torch.device("meta"):
        model = build(d_model, None)
    mlp = model.blocks[0].mlp
    hidden, total = mlp.hidden, model.parameter_counts()["total"]
    per_unit = n_layers * mlp.parameters_per_unit
    hidden = hidden + round((target - total) / per_unit)
    if hidden < 1:
        raise MatchError(f"d_model={d_model} leaves no room for an MLP within {target:,} parameters")
    n = count(build, d_model, hidden)
    return hidden, n


def match_parameters(build: Builder, target: int, d_model: int, n_layers: int, by: str = "d_model+mlp",
                     tolerance: float = 0.02) -> dict:
    """Backbone sizes giving ``target`` parameters within ``tolerance`` (relative).

    Returns ``{"target", "by", "d_model", "mlp_hidden" (None: the configured ratio), "params",
    "deviation"}``; raises ``MatchError`` when the target cannot be met.
    """
    if by not in MATCH_BY:
        raise MatchError(f"match_by must be one of {', '.join(MATCH_BY)}, got {by!r}")
    hidden = None
    if by == "d_model":
        candidates = list(accepted_widths(build, target))
        if not candidates:
            raise MatchError("the mixer accepts no width")
        d_model, params = min(candidates, key=lambda dn: abs(dn[1] - target))
    elif by == "d_model+mlp":
        fitting = [dn for dn in accepted_widths(build, target) if dn[1] <= target]
        if not fitting:
            raise MatchError(f"even the narrowest accepted d_model has more than {target:,} parameters")
        d_model = fitting[-1][0]
        hidden, params = fill_with_mlp(build, d_model, target, n_layers)
    else:
        if count(build, d_model) is None:
            raise MatchError(f"the mixer rejects d_model={d_model}")
        hidden, params = fill_with_mlp(build, d_model, target, n_layers)
    deviation = params / target - 1
    if abs(deviation) > tolerance:
        raise MatchError(f"closest model has {params:,} parameters, {100 * deviation:+.1f}% from {target:,} "
                         f"(tolerance {100 * tolerance:.0f}%; try match_by=d_model+mlp)")
    return {"target": target, "by": by, "d_model": d_model, "mlp_hidden": hidden, "params": params,
            "deviation": deviation}
