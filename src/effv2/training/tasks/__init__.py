"""Training tasks: what one training step computes, chosen by the recipe key ``task``.

A task is a small ``nn.Module`` in its own file, registered here by name with :func:`register`.
The loop (effv2.training.trainer) and the step (effv2.training.step) never know which task runs:

    out = task(batches, step)   # {"loss": scalar tensor, "<part>": scalar tensor, ...}

``batches`` maps a data stream's name to its :class:`effv2.data.loader.Batch` of this step
(``"labelled"`` always; a task that needs more lists them in ``streams``). Every entry of ``out``
besides ``loss`` is logged as ``train_<part>`` in metrics.jsonl and shown in the progress bar.
"""

from __future__ import annotations

from typing import Any

from ...errors import UsageError
from .base import Task

TASKS: dict[str, type[Task]] = {}


def register(name: str):
    """Class decorator: make a Task available as ``"task": name`` in recipes."""

    def deco(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__name__}, {cls.__name__})")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def task_class(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(
            f"recipe key task: unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS))}"
        ) from None


def build_task(name: str, model: Any, recipe: Any) -> Task:
    """The task ``name`` around ``model``, configured from its own recipe keys."""
    return task_class(name).from_recipe(model, recipe)


from . import classify as _classify  # noqa: E402,F401  (registers "classify")

__all__ = ["TASKS", "Task", "build_task", "register", "task_class"]
