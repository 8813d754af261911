"""The learning-rate schedule as one pure function of the optimizer step.

    warmup   step < W = int(warmup_epochs * steps_per_epoch):
             lr = warmup_lr + (peak - warmup_lr) * step / W            (linear; 0 at step 0 by default)
    then, by ``lr_schedule``:
    cosine       over the remaining steps, from peak to min_lr:
                 lr = min_lr + (peak - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2, T = epochs * steps_per_epoch
    exponential  TF's staircase ExponentialDecay, its clock starting at step 0 as in the official code
                 (utils.WarmupLearningRateSchedule; warmup simply overrides the first W steps):
                 lr = max(peak * decay_rate ** floor(step / (steps_per_epoch * decay_epochs)), min_lr)
                 ImageNet: x0.97 every 2.4 epochs.
    step         the same decay applied at whole-epoch boundaries:
                 lr = max(peak * decay_rate ** floor(epoch / decay_epochs), min_lr), epoch = step // steps_per_epoch
    constant     lr = peak (the official fine-tuning schedule)

``peak`` is the ``base_lr`` argument (the trainer passes ``recipe.lr * batch_size / 256``);
``warmup_lr`` and ``min_lr`` are in the recipe's lr units (per 256 images) and are scaled by
``base_lr / recipe.lr`` like the peak.

The official cosine (not used by the shipped ImageNet recipes) runs over all T steps from step 0
with the warmup overriding its start; this one starts after the warmup, as timm and torch's
CosineAnnealingLR do, so the lr is continuous at the end of the warmup.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .recipe import Recipe

# floor(step / decay_steps) with decay_steps = steps_per_epoch * 2.4 is a float division: 72 / 7.2
# may come out as 9.999999999999998. The epsilon makes an exact boundary count as reached.
_STAIR_EPS = 1e-9


def warmup_steps(steps_per_epoch: int, recipe: "Recipe") -> int:
    """Number of warmup steps: int(warmup_epochs * steps_per_epoch), as the official code."""
    return int(recipe.warmup_epochs * steps_per_epoch)


def lr_at(step: int, *, steps_per_epoch: int, recipe: "Recipe", base_lr: float) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of a run with ``recipe``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    scale = base_lr / recipe.lr
    peak, floor_lr, start = base_lr, recipe.min_lr * scale, recipe.warmup_lr * scale
    w = warmup_steps(steps_per_epoch, recipe)
    if step < w:
        return start + (peak - start) * step / w
    kind = recipe.lr_schedule
    if kind == "constant":
        return peak
    if kind == "cosine":
        span = steps_per_epoch * recipe.epochs - w
        if span <= 0:
            return peak
        t = min(step - w, span)
        return floor_lr + (peak - floor_lr) * (1 + math.cos(math.pi * t / span)) / 2
    if kind == "exponential":
        k = math.floor(step / (steps_per_epoch * recipe.decay_epochs) + _STAIR_EPS)
    elif kind == "step":
        k = math.floor((step // steps_per_epoch) / recipe.decay_epochs + _STAIR_EPS)
    else:
        raise ValueError(f"unknown lr_schedule {kind!r}")
    return max(peak * recipe.decay_rate ** k, floor_lr)
