"""The task registry: ``register``, ``build(name, **options)``, ``available()``, ``task_class(name)``,
``options_of(name)`` (``mixers`` has the same shape; ``register_task``, ``build_task`` and
``available_tasks`` are the same functions under the names the task files use).

One file per task; the registry name equals the file name. A task from outside this repository
needs no edit here: name it by dotted path to its class (``task.name=my_package.my_module.MyTask``),
or give it a short name through the ``mixbench.tasks`` entry-point group of its package.
"""
from __future__ import annotations

import inspect
from importlib import import_module, metadata
from typing import Callable

from tasks.base import Batch, Task, TaskConfigError

_TASKS: dict[str, type[Task]] = {}


class UnknownTaskError(ValueError):
    """Raised for an unregistered task name; the message lists the valid names."""


ENTRY_POINTS = "mixbench.tasks"  # the entry-point group through which other packages add tasks


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a ``Task`` subclass to the registry under ``name``."""

    def decorate(cls: type[Task]) -> type[Task]:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__name__}")
        if not issubclass(cls, Task):
            raise TypeError(f"{cls.__name__} must subclass tasks.base.Task")
        _TASKS[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Sorted names of all registered tasks and of those other packages offer by entry point."""
    return sorted(set(_TASKS) | {ep.name for ep in metadata.entry_points(group=ENTRY_POINTS)})


def _plugin(name: str) -> type[Task] | None:
    """The class behind an entry point called ``name``, or at dotted path ``name``; None if neither."""
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINTS) if ep.name == name]
    module, _, attr = name.rpartition(".")
    if not found and not module:
        return None
    try:
        cls = found[0].load() if found else getattr(import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownTaskError(f"task {name!r} cannot be loaded ({type(err).__name__}: {err}); "
                               f"valid tasks: {', '.join(available())}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UnknownTaskError(f"task {name!r} is {cls!r}, not a subclass of tasks.base.Task")
    return register(name)(cls)


def task_class(name: str) -> type[Task]:
    """The class registered under ``name`` (loading a plugin named so); a clear error listing valid
    names otherwise."""
    cls = _TASKS.get(name) or _plugin(name)
    if cls is None:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(available())}")
    return cls


def options_of(name: str) -> dict[str, inspect.Parameter]:
    """Keyword options a task accepts."""
    return {k: p for k, p in inspect.signature(task_class(name).__init__).parameters.items() if k != "self"}


def build(name: str, **options) -> Task:
    """Instantiate task ``name``; unknown names or options give an error listing the valid ones."""
    cls = task_class(name)
    valid = list(options_of(name))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TaskConfigError(f"task {name!r} got unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return cls(**options)


register_task, build_task, available_tasks = register, build, available


from tasks import (autoencode, compression, copy, copy_text, fuzzy_recall, icl_language, icl_regression,  # noqa: E402,F401
                   lm_text, memorization, mqar, noisy_recall, selective_copy)

__all__ = ["Batch", "Task", "TaskConfigError", "UnknownTaskError", "register", "build", "available", "task_class",
           "options_of", "register_task", "build_task", "available_tasks"]
