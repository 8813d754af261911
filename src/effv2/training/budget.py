"""Training to a time budget: measure the real step time at each progressive stage's size, then plan
the epochs so the whole schedule (warmup, lr decay, every stage, its regularization, EMA) fits.

    plan = plan_budget(recipe, model_name, bundle, runtime, info)   # measures, a few seconds
    recipe = replace(recipe, epochs=plan["epochs"])                 # the plan is recorded in config.json

What is timed is the trainer's own TrainStep on real batches of the data pipeline (RandAugment,
mixup, loading included) at each stage's image size, warm-up steps excluded, on a throwaway copy
of the parts (the run itself is built and seeded afterwards, so planning changes none of its
draws). Evaluation counts against the budget: one evaluation's time is measured on a few batches
and scaled to the validation set. Once made, the plan is data: ``--resume`` uses the recorded
epochs, so a resumed run follows the same schedule and stays bitwise exact. The budget is also the
hard stop (time_budget_s), in case the machine runs slower than when it was measured.
"""

from __future__ import annotations

import time
from typing import Any

from ..data.imagesets import ImageSet
from ..data.order import steps_per_epoch as count_steps
from ..data.streams import StepContext, train_steps
from ..runtime import Runtime, synchronize
from .evaluate import evaluate
from .schedule import all_stages, stage_bounds

MARGIN = 0.05  # plan for 95% of the budget: timing noise on shared machines is 5-10%


def planned_seconds(
    epochs: int, *, stage_step_s: list[float], steps_per_epoch: int, eval_s: float, eval_every: int
) -> float:
    """Wall time of a run of ``epochs`` epochs (pure): each stage's epochs x steps x its step time,
    plus one evaluation every ``eval_every`` epochs and after the last."""
    bounds = stage_bounds(epochs, len(stage_step_s))
    train = sum((b - a) * steps_per_epoch * s for (a, b), s in zip(bounds, stage_step_s))
    n_evals = len({e for e in range(eval_every, epochs + 1, eval_every)} | {epochs})
    return train + n_evals * eval_s


def plan_epochs(
    budget_s: float,
    *,
    stage_step_s: list[float],
    steps_per_epoch: int,
    eval_s: float,
    eval_every: int = 1,
    min_epochs: int = 1,
    max_epochs: int = 100_000,
    margin: float = MARGIN,
) -> int:
    """The most epochs whose planned time fits ``(1 - margin) * budget_s`` (at least ``min_epochs``)."""
    target = (1 - margin) * budget_s
    best = min_epochs
    for e in range(min_epochs, max_epochs + 1):
        t = planned_seconds(
            e, stage_step_s=stage_step_s, steps_per_epoch=steps_per_epoch, eval_s=eval_s, eval_every=eval_every
        )
        if t > target:
            break
        best = e
    return best


def _time_steps(step, batches, *, warm: int, timed: int, device, max_warm: int = 30, max_warm_s: float = 5.0) -> float:
    """Median seconds per step after a warm-up that lasts until two consecutive steps agree within 25%
    (first steps at a new shape pay for kernel selection and allocation), at least ``warm`` steps."""

    def one(i: int) -> float:
        t0 = time.perf_counter()
        step(next(batches), i)
        synchronize(device)
        return time.perf_counter() - t0

    t_warm, prev, i = time.perf_counter(), None, 0
    while i < max_warm and time.perf_counter() - t_warm < max_warm_s:
        t = one(i)
        i += 1
        if i >= warm and prev is not None and abs(t - prev) <= 0.25 * prev:
            break
        prev = t
    times = sorted(one(i + k) for k in range(timed))
    return times[len(times) // 2]


def _endless(streams, ctx: StepContext):
    epoch = 0
    while True:
        yield from train_steps(streams, ctx, epoch=epoch)
        epoch += 1


def _eval_seconds(model, val: ImageSet, runtime: Runtime, info: Any, batch_size: int, num_workers: int) -> float:
    n = min(len(val), 2 * batch_size)
    probe = val.subset(list(range(n)))
    evaluate(
        model,
        probe.subset(list(range(min(n, batch_size)))),
        runtime=runtime,
        image_size=info.eval_size,
        mean=info.mean,
        std=info.std,
        batch_size=batch_size,
        num_workers=num_workers,
    )  # warm-up
    t0 = time.perf_counter()
    evaluate(
        model,
        probe,
        runtime=runtime,
        image_size=info.eval_size,
        mean=info.mean,
        std=info.std,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    return (time.perf_counter() - t0) * len(val) / n


def plan_budget(
    recipe: Any,
    model_name: str,
    bundle: Any,
    runtime: Runtime,
    info: Any,
    *,
    budget_s: float,
    warm: int = 2,
    timed: int = 5,
) -> dict[str, Any]:
    """Measure and plan (see the module docstring). Returns the plan recorded in config.json."""
    from .build import build_model, build_parts, train_step

    t_start = time.perf_counter()
    net = build_model(model_name, num_classes=len(bundle.classes), in_chans=bundle.in_chans)
    parts = build_parts(recipe, net, runtime, bundle=bundle)
    step = train_step(parts, runtime, recipe)
    p = recipe.progressive
    stages = all_stages(
        p, train_size=info.train_size, dropout=info.dropout, drop_path=info.drop_path, eval_size=recipe.eval_size
    )
    batch = recipe.batch_size // runtime.dist.world_size
    steps_per_epoch = count_steps(len(bundle.train), batch, runtime.dist.world_size)
    step_s: list[float] = []
    for sp in stages:
        parts.task.on_stage(sp)
        ctx = StepContext(
            batch_size=batch,
            image_size=sp.image_size,
            randaug_magnitude=sp.randaug_magnitude,
            mixup_alpha=sp.mixup_alpha,
            cutmix_alpha=sp.cutmix_alpha,
            num_classes=len(bundle.classes),
            seed=recipe.seed,
            rank=runtime.dist.rank,
            world_size=runtime.dist.world_size,
            num_workers=recipe.num_workers,
            device=runtime.device,
            mean=info.mean,
            std=info.std,
            channels_last=runtime.channels_last,
        )
        step_s.append(_time_steps(step, _endless(parts.streams, ctx), warm=warm, timed=timed, device=runtime.device))
    eval_s = _eval_seconds(parts.model, bundle.val, runtime, info, recipe.eval_batch_size, recipe.num_workers)
    min_epochs = max(1, int(-(-recipe.warmup_epochs // 1)))
    epochs = plan_epochs(
        budget_s,
        stage_step_s=step_s,
        steps_per_epoch=steps_per_epoch,
        eval_s=eval_s,
        eval_every=recipe.eval_every_epochs,
        min_epochs=min_epochs,
    )
    planned = planned_seconds(
        epochs, stage_step_s=step_s, steps_per_epoch=steps_per_epoch, eval_s=eval_s, eval_every=recipe.eval_every_epochs
    )
    return {
        "budget_s": budget_s,
        "epochs": epochs,
        "planned_s": round(planned, 2),
        "margin": MARGIN,
        "stage_sizes": [sp.image_size for sp in stages],
        "step_s": [round(s, 5) for s in step_s],
        "steps_per_epoch": steps_per_epoch,
        "eval_s": round(eval_s, 3),
        "measured_in_s": round(time.perf_counter() - t_start, 2),
        "evaluation": "counted in the budget",
    }
