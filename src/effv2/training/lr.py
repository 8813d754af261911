"""The learning-rate schedule as one pure function of the optimizer step.

    warmup   step < W = int(warmup_epochs * steps_per_epoch):
             lr = warmup_lr + (peak - warmup_lr) * step / W            (linear; 0 at step 0 by default)
    then, by ``lr_schedule``:
    cosine       over the remaining steps, from peak to min_lr:
                 lr = min_lr + (peak - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2, T = total steps
    linear       straight from peak down to min_lr (0 by default) at the last step:
                 lr = min_lr + (peak - min_lr) * (1 - (step - W) / (T - W))
                 (budgeted-training studies, e.g. Li, Yumer & Ramanan, ICLR 2020, find a linear decay to
                 zero best when the number of steps is set by a budget; measured for the demo in
                 benchmarks/RESULTS.md)
    exponential  TF's staircase ExponentialDecay, its clock starting at step 0 as in the official code
                 (utils.WarmupLearningRateSchedule; warmup simply overrides the first W steps):
                 lr = max(peak * decay_rate ** floor(step / (steps_per_epoch * decay_epochs)), min_lr)
                 ImageNet: x0.97 every 2.4 epochs.
    step         the same decay applied at whole-epoch boundaries:
                 lr = max(peak * decay_rate ** floor(epoch / decay_epochs), min_lr), epoch = step // steps_per_epoch
    constant     lr = peak (the official fine-tuning schedule)

T is ``epochs * steps_per_epoch``, or the recipe's ``max_steps`` when that is set (a time-budget plan).

``peak`` is the ``base_lr`` argument (the trainer passes ``recipe.lr * batch_size / 256``);
``warmup_lr`` and ``min_lr`` are in the recipe's lr units (per 256 images) and are scaled by
``base_lr / recipe.lr`` like the peak.

The official cosine (not used by the shipped ImageNet recipes) runs over all T steps from step 0
with the warmup overriding its start; this one starts after the warmup, as timm and torch's
CosineAnnealingLR do, so the lr is continuous at the end of the warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

# floor(step / decay_steps) with decay_steps = steps_per_epoch * 2.4 is a float division: 72 / 7.2
# may come out as 9.999999999999998. The epsilon makes an exact boundary count as reached.
_STAIR_EPS = 1e-9
KINDS = ("cosine", "linear", "exponential", "constant", "step")


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """The schedule's own settings, in absolute lr units (already scaled to the batch)."""

    kind: str
    peak: float
    start: float  # lr at step 0 of the warmup
    floor: float  # min_lr
    warmup_steps: int
    total_steps: int  # epochs * steps_per_epoch, or max_steps
    steps_per_epoch: int
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    # re-plans of a time-budgeted run ((step, new total steps), in order): from each one on, cosine and
    # linear finish the rest of their shape by the new total, continuous in value (see with_replan)
    replans: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown lr_schedule {self.kind!r}")

    @classmethod
    def from_recipe(cls, recipe: Any, *, steps_per_epoch: int, base_lr: float) -> LRSchedule:
        """The recipe's lr keys (per 256 images) scaled like the peak: ``base_lr / recipe.lr``."""
        scale = base_lr / recipe.lr
        return cls(
            kind=recipe.lr_schedule,
            peak=base_lr,
            start=recipe.warmup_lr * scale,
            floor=recipe.min_lr * scale,
            warmup_steps=warmup_steps(steps_per_epoch, recipe),
            total_steps=total_steps(steps_per_epoch, recipe),
            steps_per_epoch=steps_per_epoch,
            decay_rate=recipe.decay_rate,
            decay_epochs=recipe.decay_epochs,
        )

    def with_replan(self, step: int, total: int) -> LRSchedule:
        """This schedule with its length changed to ``total`` steps from ``step`` on: the progress p
        through the decay (0 after the warmup, 1 at the end) reached at ``step`` is kept and the rest,
        1 - p, is spread over the new remaining steps, so the lr is continuous and still ends at its
        floor on the last step. Exponential, step and constant schedules do not depend on the length."""
        return replace(self, replans=(*self.replans, (int(step), int(total))))

    def progress(self, step: int) -> float:
        """How far through the decay ``step`` is (cosine and linear): 0 at the end of the warmup, 1 at
        the last step, piecewise linear across re-plans."""
        a, pa, end = self.warmup_steps, 0.0, self.total_steps
        for t0, total in self.replans:
            if t0 > step:
                break
            if t0 > a:
                pa = pa + (1 - pa) * (min(t0, end) - a) / (end - a) if end > a else 1.0
                a = t0
            end = total
        if end <= a:
            return 1.0
        return min(1.0, pa + (1 - pa) * (step - a) / (end - a))

    def __call__(self, step: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        peak, w = self.peak, self.warmup_steps
        if step < w:
            return self.start + (peak - self.start) * step / w
        if self.kind == "constant":
            return peak
        if self.kind in ("cosine", "linear") and self.replans and step > self.replans[0][0]:
            p = self.progress(step)
            shape = 1 - p if self.kind == "linear" else (1 + math.cos(math.pi * p)) / 2
            return self.floor + (peak - self.floor) * shape
        if self.kind in ("cosine", "linear"):
            span = self.total_steps - w
            if span <= 0:
                return peak
            t = min(step - w, span)
            if self.kind == "linear":
                return self.floor + (peak - self.floor) * (1 - t / span)
            return self.floor + (peak - self.floor) * (1 + math.cos(math.pi * t / span)) / 2
        if self.kind == "exponential":
            k = math.floor(step / (self.steps_per_epoch * self.decay_epochs) + _STAIR_EPS)
        else:  # "step"
            k = math.floor((step // self.steps_per_epoch) / self.decay_epochs + _STAIR_EPS)
        return max(peak * self.decay_rate**k, self.floor)


def total_steps(steps_per_epoch: int, recipe: Any) -> int:
    """Optimizer steps of the whole run: ``max_steps`` when set (never past the epochs), else
    ``epochs * steps_per_epoch``."""
    full = steps_per_epoch * recipe.epochs
    cap = getattr(recipe, "max_steps", 0)
    return min(full, cap) if cap else full


def warmup_steps(steps_per_epoch: int, recipe: Any) -> int:
    """Number of warmup steps: int(warmup_epochs * steps_per_epoch), as the official code."""
    return int(recipe.warmup_epochs * steps_per_epoch)


def lr_at(step: int, *, steps_per_epoch: int, recipe: Any, base_lr: float) -> float:
    """The learning rate for optimizer step ``step`` of a run with ``recipe`` (one-off convenience;
    the trainer builds its :class:`LRSchedule` once)."""
    return LRSchedule.from_recipe(recipe, steps_per_epoch=steps_per_epoch, base_lr=base_lr)(step)
