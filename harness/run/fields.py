"""Type checks of config values against Python annotations (a mixer's or task's keyword arguments,
``TrainConfig``'s fields), so that a string, a float or null where an integer belongs is a clear
error naming the field before anything is built or trained."""
from __future__ import annotations

import math
import types
import typing

FLOAT32_MAX = 3.4028234663852886e38  # parameters and learning rates become float32 tensors

def type_error(field: str, value: object, wanted: str) -> str:
    """``train.steps: must be an integer, got 'abc' (str)``."""
    return f"{field}: must be {wanted}, got {value!r} ({type(value).__name__})"


def describe(annotation: object) -> str:
    """Human words for an annotation: ``int | None`` -> ``an integer or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number (at most 3.4e38 in size, as float32 holds)"
    if annotation is str:
        return "a string"
    if annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1:
                return f"a list of {len(args)} {plural(args[0])}"
            return f"a list of {len(args)}: " + ", ".join(describe(a) for a in args)
        return f"a list of {plural(args[0])}" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))


def plural(annotation: object) -> str:
    words = {bool: "true/false values", int: "integers", float: "finite numbers", str: "strings"}
    return words.get(annotation, f"values that are {describe(annotation)}")


def matches(value: object, annotation: object) -> bool:
    """Whether ``value`` (as YAML/Hydra gives it) fits ``annotation``; ints pass for floats."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (typing.Any, object) or annotation is None:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and abs(value) <= FLOAT32_MAX)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if annotation in (tuple, list):  # a bare sequence annotation: Hydra gives lists for tuples
        return isinstance(value, (list, tuple))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation we do not understand: leave it to the component


INT64 = 2**63


def too_big(value: object) -> bool:
    """An integer (or one inside a list) that torch cannot hold: it would fail deep inside a run."""
    if isinstance(value, (list, tuple)):
        return any(too_big(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64


def check(field: str, value: object, annotation: object) -> str | None:
    """``None`` when ``value`` fits, else the error message (naming ``field`` and the allowed type)."""
    if too_big(value):
        return f"{field}: {value!r} is out of range; integers must lie in [-2**63, 2**63)"
    return None if matches(value, annotation) else type_error(field, value, describe(annotation))


def hints(func: typing.Callable) -> dict[str, object]:
    """Resolved annotations of ``func`` (or a dataclass); empty when they cannot be resolved."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only means no type check
        return {}
