"""Step timing: one training step (the trainer's own TrainStep) or one inference batch.

The pattern follows timm's benchmark.py: a fixed random batch made once on the device, a few
warm-up steps (lazy init, cuDNN/oneDNN autotuning, torch.compile all happen there), then timed
steps, each synchronised on CUDA so the clock covers the whole step. The median is reported
because shared machines produce long-tailed step times.

Steps are built as closures (:func:`build_train_step`, :func:`build_infer_step`) so that
:mod:`effv2.bench.compare` can interleave two models step for step in one process. The training
step is built by :mod:`effv2.training.build` from a recipe, exactly as a run builds it (task,
optimizer, GradScaler, clipping, finiteness check, EMA): what is timed is what training runs, for
any task a recipe names, for effv2's models and for timm's or torchvision's alike.

Note: the timing functions *modify the model they are given*: it is moved to the device, to
channels-last when asked, put in train/eval mode, and in train mode its weights are updated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..runtime import AMP_MODES, Runtime, autocast, resolve_device, synchronize

# The optimizers a timed step can use: the recipe's names (effv2.training.optim); "rmsprop" is kept
# as a name for the paper's optimizer, TF's RMSProp ("rmsprop_tf").
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "rmsprop_tf", "rmsprop")

Step = Callable[[], None]  # runs one full step and returns when the device is done with it

__all__ = [
    "AMP_MODES",
    "OPTIMIZERS",
    "Step",
    "autocast",
    "build_infer_step",
    "build_train_step",
    "measure",
    "resolve_device",
    "run_timed",
    "summarize",
    "synchronize",
    "time_infer",
    "time_train_step",
]


def check_sizes(batch_size: int, image_size: int, in_chans: int, steps: int, warmup: int) -> None:
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("image_size", image_size, 1),
        ("in_chans", in_chans, 1),
        ("steps", steps, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name}: expected an integer >= {low}, got {value!r}")


def _batch(batch_size: int, in_chans: int, image_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch_size, in_chans, image_size, image_size, device=device)  # (B, C, H, W)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _num_classes(model: nn.Module, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    n = getattr(model, "num_classes", None)
    if n is None:  # torchvision models do not store it; read it off the last Linear
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        n = linears[-1].out_features if linears else None
    if not n:
        raise UsageError("num_classes: the model has no classifier; pass num_classes")
    return int(n)


def _recipe(recipe: Any, optimizer: str) -> Any:
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if recipe is not None:
        return recipe
    from ..config import Recipe

    return Recipe(optimizer="rmsprop_tf" if optimizer == "rmsprop" else optimizer)


def build_train_step(
    model: nn.Module,
    *,
    batch_size: int,
    image_size: int,
    in_chans: int = 3,
    num_classes: int | None = None,
    amp: str = "none",
    channels_last: bool = False,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    compile: bool = False,
    recipe: Any = None,
    replicas: int = 1,
) -> Step:
    """A closure running one training step of ``model`` as the trainer runs it: the recipe's task
    (default ``classify``: forward + cross-entropy under autocast), backward through a GradScaler
    for fp16, clipping, the finiteness check, the optimizer step and the EMA update. ``recipe``
    (default: ``Recipe(optimizer=optimizer)``) says which task, optimizer, EMA and clipping; ``replicas``
    cuts the batch into that many shards trained in parallel (runtime/replicas.py)."""
    from ..data.loader import Batch
    from ..training.build import build_parts, train_step

    check_sizes(batch_size, image_size, in_chans, 1, 0)
    dev = resolve_device(device)
    autocast(amp, dev)  # validates amp
    rec = _recipe(recipe, optimizer)
    n_cls = _num_classes(model, num_classes)
    runtime = Runtime(device=dev, amp=amp, channels_last=channels_last, compile=compile, replicas=replicas)
    parts = build_parts(rec, model.train(), runtime)
    run_step = train_step(parts, runtime, rec)
    x = _batch(batch_size, in_chans, image_size, dev, channels_last)
    batches = {"labelled": Batch(x, torch.randint(0, n_cls, (batch_size,), device=dev))}
    lr = run_step.optimizer.param_groups[0]["lr"]

    def step() -> None:
        run_step(batches, 0, lr=lr)
        synchronize(dev)

    step.close = run_step.close  # type: ignore[attr-defined]  # the replicas' worker threads, if any
    return step


def build_infer_step(
    model: nn.Module,
    *,
    batch_size: int,
    image_size: int,
    in_chans: int = 3,
    amp: str = "none",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> Step:
    """A closure running one inference batch in eval mode under torch.inference_mode."""
    check_sizes(batch_size, image_size, in_chans, 1, 0)
    dev = resolve_device(device)
    autocast(amp, dev)
    model = Runtime(device=dev, channels_last=channels_last).place(model).eval()
    x = _batch(batch_size, in_chans, image_size, dev, channels_last)

    def step() -> None:
        with torch.inference_mode(), autocast(amp, dev):
            model(x)
        synchronize(dev)

    return step


def run_timed(step: Step) -> float:
    """Seconds for one call of ``step`` (the step synchronises the device itself)."""
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def summarize(step_times: list[float], batch_size: int, warmup_times: list[float]) -> dict[str, Any]:
    """The result dict shared by every timing function: median step time and images per second."""
    median = statistics.median(step_times)
    return {
        "step_s": median,
        "img_per_s": batch_size / median,
        "steps": len(step_times),
        "all_step_s": list(step_times),
        "warmup_s": list(warmup_times),
        "batch_size": batch_size,
    }


def measure(step: Step, *, batch_size: int, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Run ``warmup`` untimed steps (their times are kept in ``warmup_s``: the first one includes any
    compilation), then ``steps`` timed steps; report the median."""
    check_sizes(batch_size, 1, 1, steps, warmup)
    warm = [run_timed(step) for _ in range(warmup)]
    return summarize([run_timed(step) for _ in range(steps)], batch_size, warm)


def time_train_step(
    model: nn.Module,
    *,
    batch_size: int,
    image_size: int,
    in_chans: int = 3,
    num_classes: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    amp: str = "none",
    channels_last: bool = False,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    recipe: Any = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Median seconds per training step (forward, loss, backward, optimizer step).

    Returns ``{"step_s", "img_per_s", "steps", "all_step_s", "warmup_s", "batch_size"}``.
    The model is trained in place (see the module note).
    """
    check_sizes(batch_size, image_size, in_chans, steps, warmup)
    step = build_train_step(
        model,
        batch_size=batch_size,
        image_size=image_size,
        in_chans=in_chans,
        num_classes=num_classes,
        amp=amp,
        channels_last=channels_last,
        optimizer=optimizer,
        device=device,
        recipe=recipe,
        replicas=replicas,
    )
    try:
        return measure(step, batch_size=batch_size, steps=steps, warmup=warmup)
    finally:
        step.close()  # type: ignore[attr-defined]


def time_infer(
    model: nn.Module,
    *,
    batch_size: int,
    image_size: int,
    in_chans: int = 3,
    steps: int = 10,
    warmup: int = 3,
    amp: str = "none",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Median seconds per inference batch (eval mode, torch.inference_mode); same keys as
    :func:`time_train_step`."""
    check_sizes(batch_size, image_size, in_chans, steps, warmup)
    step = build_infer_step(
        model,
        batch_size=batch_size,
        image_size=image_size,
        in_chans=in_chans,
        amp=amp,
        channels_last=channels_last,
        device=device,
    )
    return measure(step, batch_size=batch_size, steps=steps, warmup=warmup)
