"""Progressive learning with adaptive regularization as pure functions (no torch, no state).

Training is cut into M stages (``progressive.n_stages``); stage i trains at one image size with one
set of regularization magnitudes. Two variants, named by ``progressive.variant``:

``"paper"`` (Algorithm 1, Table 6): every quantity is linearly interpolated between its min and max,
    value_i = min + (max - min) * i / (M - 1)
for image size, RandAugment magnitude, Mixup (and CutMix) alpha and dropout. The paper gives no
rounding rule for sizes, so sizes are rounded to the nearest integer, halves up
(S 128 -> 300 in 4 stages: 128, 185, 243, 300).

``"code"`` (the released google/automl efficientnetv2 main_tf2.py / main.py):
    size_i = int(min + (max - min) * (i + 1) / M)          (S: 171, 214, 257, 300; stage 0 is NOT min)
    randaug_i, mixup_i, cutmix_i = linspace(min, max, M)[i]
and no dropout schedule: the code computes one but never applies it, so dropout stays at the
model's value (``dropout_max``, itself the model's dropout unless a layer set it).

Both variants: stochastic depth is fixed at ``drop_path_max`` (the model's) unless
``drop_path_min`` is set, then it is interpolated like the other magnitudes (an effv2 extension).
With ``enabled=False`` there is one stage at ``max_size`` with every regularization at its max.
M = 1 is the same single stage (no division by M - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.schema import ProgressiveConfig


@dataclass(frozen=True)
class StageParams:
    """What one stage trains with."""

    index: int  # 0-based stage
    n_stages: int
    image_size: int  # training image size in pixels (square)
    randaug_magnitude: float  # 0 = RandAugment off
    mixup_alpha: float  # 0 = off
    cutmix_alpha: float  # 0 = off
    dropout: float  # classifier dropout
    drop_path: float  # stochastic depth rate at the last block


def stage_bounds(epochs: int, n_stages: int) -> list[tuple[int, int]]:
    """``[start_epoch, end_epoch)`` of every stage.

    Epochs are split as evenly as possible; when they do not divide, the *later* stages take the
    extra epochs (an earlier stage is never longer than a later one), so the final, full-size stage
    always gets the most. With fewer epochs than stages the first stages are empty (start == end)
    and are skipped: 2 epochs in 4 stages train stages 2 and 3.
    (The official code cuts at int(i * E / M) instead: 10 epochs in 4 stages give 2, 3, 2, 3.)
    """
    if epochs < 1 or n_stages < 1:
        raise ValueError(f"stage_bounds needs epochs >= 1 and n_stages >= 1, got {epochs}, {n_stages}")
    base, extra = divmod(epochs, n_stages)
    bounds, start = [], 0
    for i in range(n_stages):
        end = start + base + (1 if i >= n_stages - extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def stage_of_epoch(epoch: int, epochs: int, n_stages: int) -> int:
    """The stage that trains ``epoch`` (0-based); epochs at or past the end belong to the last stage."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    for i, (_, end) in enumerate(stage_bounds(epochs, n_stages)):
        if epoch < end:
            return i
    return n_stages - 1


def _lerp(lo: float, hi: float, i: int, m: int) -> float:
    """min + (max - min) * i / (M - 1); the max for a single stage. Rounded to 10 decimals so
    logged values read 0.2, not 0.19999999999999998."""
    value = hi if m == 1 else lo + (hi - lo) * i / (m - 1)
    return round(value, 10)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def stage_params(
    stage: int,
    cfg: ProgressiveConfig,
    *,
    train_size: int,
    dropout: float,
    drop_path: float,
    eval_size: int | None = None,
) -> StageParams:
    """Image size and regularization of stage ``stage`` under ``cfg`` (see the module doc).

    ``train_size``, ``dropout`` and ``drop_path`` are the model's (its card): they stand in for
    ``cfg.max_size``, ``cfg.dropout_max`` and ``cfg.drop_path_max`` when those are null. A resolved
    recipe has them filled already. ``eval_size`` is needed only for ``max_size_from="eval"`` with a
    null ``max_size``.
    """
    if cfg.max_size is not None:
        max_size = cfg.max_size
    elif cfg.max_size_from == "eval":
        if eval_size is None:
            raise ValueError("progressive.max_size_from='eval' with a null max_size needs eval_size")
        max_size = eval_size
    else:
        max_size = train_size
    dropout_max = dropout if cfg.dropout_max is None else cfg.dropout_max
    drop_path_max = drop_path if cfg.drop_path_max is None else cfg.drop_path_max
    m = cfg.n_stages if cfg.enabled else 1
    if not 0 <= stage < m:
        raise ValueError(f"stage must be in 0..{m - 1}, got {stage}")
    if m > 1 and cfg.min_size > max_size:
        raise ValueError(f"progressive.min_size={cfg.min_size} is larger than the max size {max_size}")

    if m == 1:
        size = max_size
    elif cfg.variant == "paper":
        size = _round_half_up(cfg.min_size + (max_size - cfg.min_size) * stage / (m - 1))
    else:  # "code": int(ibase + (isize - ibase) * (i + 1) / M)
        size = int(cfg.min_size + (max_size - cfg.min_size) * (stage + 1) / m)

    if cfg.variant == "paper":
        drop = _lerp(cfg.dropout_min, dropout_max, stage, m)
    else:
        drop = dropout_max  # the released code never applies its dropout schedule
    if cfg.drop_path_min is None:
        path = drop_path_max
    else:
        path = _lerp(cfg.drop_path_min, drop_path_max, stage, m)
    return StageParams(
        index=stage,
        n_stages=m,
        image_size=size,
        randaug_magnitude=_lerp(cfg.randaug_min, cfg.randaug_max, stage, m),
        mixup_alpha=_lerp(cfg.mixup_min, cfg.mixup_max, stage, m),
        cutmix_alpha=_lerp(cfg.cutmix_min, cfg.cutmix_max, stage, m),
        dropout=drop,
        drop_path=path,
    )


def all_stages(
    cfg: ProgressiveConfig, *, train_size: int, dropout: float, drop_path: float, eval_size: int | None = None
) -> list[StageParams]:
    """Every stage of ``cfg`` (one when progressive learning is off)."""
    m = cfg.n_stages if cfg.enabled else 1
    return [
        stage_params(i, cfg, train_size=train_size, dropout=dropout, drop_path=drop_path, eval_size=eval_size)
        for i in range(m)
    ]
