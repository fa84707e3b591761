"""The mixer registry: ``register``, ``build(name, d_model, max_len, **options)``, ``available()``,
``mixer_class(name)``, ``options_of(name)`` (``tasks`` has the same shape).

A mixer from outside this repository needs no edit here: name it by dotted path to its class
(``mixer.name=my_package.my_module.MyMixer``), or give it a short name through the
``mixbench.mixers`` entry-point group of its package (``mine = "my_package.my_module:MyMixer"``).

One file per mixer; the registry name equals the file name. A new mixer needs its file (decorated
with ``@register("name")``), an import line below, ``conf/mixer/<name>.yaml``, a case in
tests/conftest.py, and ``python -m mixers.catalogue`` to regenerate mixers/README.md.
"""
from __future__ import annotations

import inspect
from importlib import import_module, metadata
from typing import Callable

from mixers.base import Mixer

_REGISTRY: dict[str, type[Mixer]] = {}


class UnknownMixerError(ValueError):
    """Raised for a mixer name that is not registered; the message lists the valid names."""


def register(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator adding a ``Mixer`` subclass to the registry under ``name``."""

    def decorate(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"mixer {name!r} is already registered by {_REGISTRY[name].__name__}")
        if not issubclass(cls, Mixer):
            raise TypeError(f"{cls.__name__} must subclass mixers.base.Mixer")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


ENTRY_POINTS = "mixbench.mixers"  # the entry-point group through which other packages add mixers


def available() -> list[str]:
    """Sorted names of all registered mixers and of those other packages offer by entry point."""
    return sorted(set(_REGISTRY) | {ep.name for ep in metadata.entry_points(group=ENTRY_POINTS)})


def _plugin(name: str) -> type[Mixer] | None:
    """The class behind an entry point called ``name``, or at dotted path ``name``; None if neither."""
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINTS) if ep.name == name]
    module, _, attr = name.rpartition(".")
    if not found and not module:
        return None
    try:
        cls = found[0].load() if found else getattr(import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownMixerError(f"mixer {name!r} cannot be loaded ({type(err).__name__}: {err}); "
                                f"valid mixers: {', '.join(available())}") from None
    if not (isinstance(cls, type) and issubclass(cls, Mixer)):
        raise UnknownMixerError(f"mixer {name!r} is {cls!r}, not a subclass of mixers.base.Mixer")
    return register(name)(cls)


def mixer_class(name: str) -> type[Mixer]:
    """The class registered under ``name`` (loading a plugin named so); a clear error listing valid
    names otherwise."""
    cls = _REGISTRY.get(name) or _plugin(name)
    if cls is None:
        raise UnknownMixerError(f"unknown mixer {name!r}; valid mixers: {', '.join(available())}")
    return cls


def options_of(name: str) -> dict[str, inspect.Parameter]:
    """Keyword options a mixer accepts besides ``d_model`` and ``max_len``."""
    params = inspect.signature(mixer_class(name).__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "d_model", "max_len")}


def build(name: str, d_model: int, max_len: int, **options) -> Mixer:
    """Instantiate mixer ``name`` for ``(batch, length <= max_len, d_model)`` inputs.

    Unknown option names raise a ``TypeError`` naming them and the options the mixer accepts.
    """
    cls = mixer_class(name)
    valid = options_of(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"mixer {name!r} got unknown option(s) {unknown}; valid options: {', '.join(valid)}"
        )
    return cls(d_model=d_model, max_len=max_len, **options)


# Registration happens on import; keep this list in alphabetical order.
from mixers import (  # noqa: E402,F401
    attention, based, deltanet, gated_deltanet, gla, gltm, h3, hgrn2, hyena, linear_attention, mamba, mamba1, mamba2, retnet, rwkv7,
    sliding_window_attention, tmm, tmm_flat, tnn,
)

__all__ = ["Mixer", "register", "build", "available", "mixer_class", "options_of", "UnknownMixerError"]
