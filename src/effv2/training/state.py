"""What a run is and where it stands: JSON-able records saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is left intact."""


@dataclass
class TrainState:
    """Where the run is. JSON-able; saved in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch index inside the epoch
    global_step: int = 0  # optimizer steps taken (skipped non-finite steps not counted)
    images_seen: int = 0
    best_top1: float = -1.0
    wall_s: float = 0.0  # training wall time accumulated over all sessions of the run
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # consecutive non-finite steps
    last_train_loss: float = float("nan")
    last_train_parts: dict[str, float] = field(default_factory=dict)  # epoch means of the task's other parts
    # re-plans of a time-budgeted run: [step, new total steps] (trainer.py _replan); empty without
    replans: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RunInfo:
    """What the run is, stored in every checkpoint for eval, predict and export."""

    model_name: str
    classes: list[str]
    in_chans: int
    train_size: int  # the model card's train size (the progressive schedule's default max)
    eval_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dropout: float  # the card's: the progressive schedule's default max
    drop_path: float

    def to_meta(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "in_chans": self.in_chans,
            "num_classes": len(self.classes),
            "eval_size": self.eval_size,
            "model": self.model_name,
            "mean": list(self.mean),
            "std": list(self.std),
        }
