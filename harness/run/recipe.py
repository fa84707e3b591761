"""What a run trained, as run: the record's ``recipe`` field.

Read from the built model on its run device and the checked training config, not from the config
alone, so that a record states what happened (the parameters actually exempt from weight decay,
the settings a mixer gave its own parameters, the precision autocast really used).
"""
from __future__ import annotations

import torch
from torch import nn

from harness.run.train import TrainConfig, learning_rate_overrides, weight_decay_exempt


def precision_as_run(device: torch.device, precision: str) -> str:
    """``bf16 autocast`` on CUDA with ``precision: bf16`` (``harness.run.train.autocast_context``), else ``fp32``."""
    return "bf16 autocast" if precision == "bf16" and device.type == "cuda" else "fp32"


def recipe(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """``{"weight_decay", "weight_decay_rule", "weight_decay_exempt" ({name: why}, every layer's own
    mixer's in a hybrid stack), "parameter_overrides" ({name: optimiser settings}), "init",
    "short_conv", "block" (order, channel mixer: kind, activation and width, final norm, tied head),
    "readout" (each position's state, or the last one's for every output: ``SequenceModel.readout``),
    "schedule", "precision"}``. A record's ``layers`` names each layer's mixer."""
    blocks = getattr(model, "blocks", [])
    mlp = blocks[0].mlp if blocks else None
    return {
        "weight_decay": cfg.weight_decay,
        "weight_decay_rule": cfg.weight_decay_exempt,
        "weight_decay_exempt": weight_decay_exempt(model, cfg.weight_decay_exempt),
        "parameter_overrides": learning_rate_overrides(model),
        "init": getattr(model, "init", "reference"),
        "short_conv": getattr(model, "short_conv", 0),
        "block": {"order": blocks[0].order if blocks else None,
                  "mlp": None if mlp is None else {"kind": getattr(mlp, "kind", "mlp"), "hidden": mlp.hidden,
                                                   "activation": mlp.activation},
                  "final_norm": not isinstance(getattr(model, "norm", None), nn.Identity),
                  "tied_head": bool(getattr(model, "tie_embeddings", False))},
        "readout": getattr(model, "readout", "sequence"),
        "schedule": {"name": cfg.schedule, "warmup_steps": cfg.warmup_steps, "min_lr_ratio": cfg.min_lr_ratio},
        "precision": precision_as_run(device, cfg.precision),
    }


def decoding_state(model: nn.Module, length: int) -> dict | None:
    """``{"length", "values"}``: the values of decoding state (all layers, short convolutions
    included) after ``length`` tokens; None for a mixer that does not say (``state_size`` unimplemented)."""
    try:
        return {"length": length, "values": model.state_bits(length, 1)}
    except NotImplementedError:
        return None
