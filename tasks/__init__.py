"""The task registry: ``register_task``, ``build_task(name, **options)``, ``available_tasks()``.

One file per task; the registry name equals the file name.
"""
from __future__ import annotations

import inspect
from typing import Callable

from tasks.base import Batch, Task, TaskConfigError

_TASKS: dict[str, type[Task]] = {}


class UnknownTaskError(ValueError):
    """Raised for an unregistered task name; the message lists the valid names."""


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorate(cls: type[Task]) -> type[Task]:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__name__}")
        _TASKS[name] = cls
        return cls

    return decorate


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def build_task(name: str, **options) -> Task:
    """Instantiate task ``name``; unknown names or options give an error listing the valid ones."""
    if name not in _TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(available_tasks())}")
    cls = _TASKS[name]
    valid = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TaskConfigError(f"task {name!r} got unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return cls(**options)


from tasks import copy, copy_text, icl_language, icl_regression, lm_text, mqar, selective_copy  # noqa: E402,F401

__all__ = ["Batch", "Task", "TaskConfigError", "register_task", "build_task", "available_tasks"]
