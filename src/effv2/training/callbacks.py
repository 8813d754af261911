"""Callbacks: cross-cutting work the loop calls at fixed points, without knowing what it is.

The loop calls ``on_step_end(trainer)`` after every optimizer step that was taken (and after any
checkpoint of that step was written), and ``on_epoch_end(trainer, record)`` after each
evaluation. Test hooks (the resume tests' SIGKILL) and future techniques' bookkeeping live here or
in the tests, never inside the loop.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_step_end(self, trainer: Any) -> None:
        """After optimizer step ``trainer.state.global_step`` (1-based count) and its checkpoint."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """After an evaluation was recorded (``record`` is the metrics.jsonl row)."""
