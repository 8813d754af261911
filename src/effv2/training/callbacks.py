"""Callbacks: cross-cutting work the loop calls at fixed points, without knowing what it is.

The loop calls ``on_fit_start(trainer)`` once before training (after a resume has restored the
state and trimmed metrics.jsonl), ``on_step_end(trainer)`` after every optimizer step that was
taken (and after any checkpoint of that step was written), ``on_epoch_end(trainer, record)``
after each evaluation (its checkpoints written) and ``on_fit_end(trainer, summary)`` after the
run's end. Test hooks (the resume tests' SIGKILL), the logging sinks (logging_sinks.py) and
future techniques' bookkeeping live here or in the tests, never inside the loop.

A callback may define only some hooks (duck typing): the loop calls the optional ones through
:func:`call_hooks`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Callback:
    def on_fit_start(self, trainer: Any) -> None:
        """Before the first step of this process (``trainer.state`` is the resumed state, if any)."""

    def on_step_end(self, trainer: Any) -> None:
        """After optimizer step ``trainer.state.global_step`` (1-based count) and its checkpoint."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """After an evaluation was recorded (``record`` is the metrics.jsonl row)."""

    def on_fit_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        """After the run's end (test evaluation, summary.json, model folder) was written."""


def call_hooks(callbacks: Iterable[Any], hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every callback that has it."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)
