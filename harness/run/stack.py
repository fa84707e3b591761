"""Hybrid stacks: a mixer per layer (``model.stack``), and the names records and reports give them.

``model.stack`` is null (every layer runs the ``mixer`` group: the plain model) or a list of one
entry per layer (its length is ``model.n_layers``), each

- ``mixer``: the ``mixer`` group's mixer with its options, command-line overrides included;
- a name from ``conf/mixer/`` (``attention``, ``attention_nope``, ``based_linear``): that file's
  options, as ``mixer=<name>`` would compose them;
- a mapping ``{name: <file>, <option>: <value>, ...}``: that file's options with these over them.

From the command line (Hydra's list and mapping syntax; a sweep lists several stacks)::

    python -m harness.run mixer=gla model.n_layers=3 model.stack=[mixer,mixer,attention]
    python -m harness.run mixer=gla,based model.n_layers=3 model.stack=[mixer,mixer,attention]    # -m: two hybrids
    python -m harness.run mixer=gla model.n_layers=2 "model.stack=[mixer,{name:attention,heads:2}]"

At least one layer must be the ``mixer`` group's (else its options, which are part of a run's
identity, would be ignored). ``expand`` turns every entry into the full options of its layer
(``{"name": <registered mixer>, <option>: <value>, ...}``), so that the resolved config, and the
run's id with it, holds every layer's options; a stack whose layers are all the ``mixer`` group's
is the plain model, and becomes null (the same record id). ``label`` names a run's mixers:
``gla×2+attention`` (a run of identical layers ``×`` its length), or the mixer's name.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MIXER_ENTRY = "mixer"  # the stack entry that stands for the ``mixer`` group


class StackError(ValueError):
    """A ``model.stack`` entry cannot be expanded; the message names it (``model.stack[2]``)."""


def mixer_file_options(name: str, conf_dir: Path = CONF_DIR, field: str = "model.stack") -> dict:
    """The options ``conf/mixer/<name>.yaml`` composes to, its defaults list applied as Hydra does
    (files of the same group listed in ``defaults``, ``_self_`` where it stands, last when absent)."""
    known = sorted(p.stem for p in (conf_dir / "mixer").glob("*.yaml"))
    path = conf_dir / "mixer" / f"{name}.yaml"
    if not isinstance(name, str) or name not in known:
        raise StackError(f"{field}: unknown mixer {name!r}; valid: {MIXER_ENTRY} (the mixer group), {', '.join(known)}")
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    defaults = own.pop("defaults", [])
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged: dict = {}
    for entry in defaults:
        if entry == "_self_":
            merged.update(own)
        elif isinstance(entry, str):
            merged.update(mixer_file_options(entry, conf_dir, field))
        else:
            raise StackError(f"{field}: conf/mixer/{name}.yaml has a defaults entry {entry!r} that stacks do not "
                             "follow (only names of files in conf/mixer/)")
    return merged


def expand_entry(entry: object, mixer_group: dict, field: str, conf_dir: Path = CONF_DIR) -> dict:
    """One stack entry as its layer's full options ``{"name": <registered mixer>, ...}``."""
    if entry == MIXER_ENTRY:
        return dict(mixer_group)
    if isinstance(entry, str):
        return mixer_file_options(entry, conf_dir, field)
    if isinstance(entry, dict):
        if "name" not in entry:
            raise StackError(f"{field}: a mapping entry needs a name (a file of conf/mixer/), got {entry!r}")
        if entry["name"] == MIXER_ENTRY:
            base = dict(mixer_group)
        else:
            base = mixer_file_options(entry["name"], conf_dir, f"{field}.name")
        return {**base, **{k: v for k, v in entry.items() if k != "name"}}
    raise StackError(f"{field}: must be {MIXER_ENTRY!r}, a name of conf/mixer/ or a mapping with a name, got {entry!r}")


def expand(cfg: dict, conf_dir: Path = CONF_DIR) -> dict:
    """``cfg`` with ``model.stack`` expanded to every layer's full options (a new dict; ``cfg`` as it
    is without a stack). Expanding an expanded config changes nothing."""
    model = cfg.get("model")
    stack = model.get("stack") if isinstance(model, dict) else None
    if stack is None:
        return cfg
    if not isinstance(stack, (list, tuple)) or not stack:
        raise StackError(f"model.stack: must be null (every layer the mixer group's) or a non-empty list of "
                         f"layers, got {stack!r}")
    group = cfg.get("mixer") if isinstance(cfg.get("mixer"), dict) else {}
    layers = [expand_entry(e, group, f"model.stack[{i}]", conf_dir) for i, e in enumerate(stack)]
    plain = all(layer == group for layer in layers) and len(layers) == model.get("n_layers")
    return {**cfg, "model": {**model, "stack": None if plain else layers}}


def layers(model_cfg: dict, mixer_cfg: dict) -> list[dict]:
    """Every layer's mixer options, ``{"name", ...}``: the expanded stack, or ``n_layers`` times the mixer group."""
    stack = model_cfg.get("stack")
    return [dict(layer) for layer in stack] if stack else [dict(mixer_cfg) for _ in range(model_cfg["n_layers"])]


def display_name(names_and_options: list[dict], times: str = "×") -> str:
    """``gla×2+attention``: consecutive identical layers as one name ``×`` their count, joined by ``+``."""
    runs: list[list] = []
    for layer in names_and_options:
        if runs and runs[-1][0] == layer:
            runs[-1][1] += 1
        else:
            runs.append([layer, 1])
    return "+".join(str(layer["name"] if isinstance(layer, dict) else layer) + (f"{times}{n}" if n > 1 else "")
                    for layer, n in runs)


def label(config: dict) -> str:
    """A run's mixers by name: ``gla×2+attention`` for a hybrid stack, else the mixer's name."""
    stack = (config.get("model") or {}).get("stack")
    return display_name(stack) if stack else str(config["mixer"]["name"])


def file_label(config: dict) -> str:
    """``label`` in the characters of a record's file name: ``gla_x2+attention``."""
    stack = (config.get("model") or {}).get("stack")
    return display_name(stack, times="_x") if stack else str(config["mixer"]["name"])
