"""Step timing: one training step (forward, loss, backward, optimizer step) or one inference batch.

The pattern follows timm's benchmark.py: a fixed random batch made once on the device, a few
warm-up steps (lazy init, cuDNN/oneDNN autotuning, torch.compile all happen there), then timed
steps, each synchronised on CUDA so the clock covers the whole step. The median is reported
because shared machines produce long-tailed step times.

Steps are built as closures (:func:`build_train_step`, :func:`build_infer_step`) so that
:mod:`effv2.bench.compare` can interleave two models step for step in one process.

Note: the timing functions *modify the model they are given*: it is moved to the device, to
channels-last when asked, put in train/eval mode, and in train mode its weights are updated.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "rmsprop")

Step = Callable[[], None]  # runs one full step and returns when the device is done with it


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device; "auto" means cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: cuda was asked for but torch.cuda.is_available() is False")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for ``amp`` in AMP_MODES ("none" gives a no-op context)."""
    if amp not in AMP_MODES:
        raise UsageError(f"amp: {amp!r} is not one of {', '.join(AMP_MODES)}")
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_sizes(batch_size: int, image_size: int, in_chans: int, steps: int, warmup: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("image_size", image_size, 1),
                             ("in_chans", in_chans, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name}: expected an integer >= {low}, got {value!r}")


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _batch(batch_size: int, in_chans: int, image_size: int, device: torch.device,
           channels_last: bool) -> torch.Tensor:
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


def make_optimizer(name: str, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer whose step is timed. Hyperparameters do not change the cost, only the kind does."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-5)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    if name == "rmsprop":  # the paper's optimizer (timm's RMSpropTF has the same cost)
        return torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5)
    raise UsageError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")


def build_train_step(model: nn.Module, *, batch_size: int, image_size: int, in_chans: int = 3,
                     num_classes: int | None = None, amp: str = "none", channels_last: bool = False,
                     optimizer: str = "sgd", device: str | torch.device = "cpu") -> Step:
    """A closure running one training step: zero_grad, forward + cross-entropy (under autocast),
    backward, optimizer step (through a GradScaler for fp16, as real fp16 training does)."""
    check_sizes(batch_size, image_size, in_chans, 1, 0)
    dev = resolve_device(device)
    autocast(amp, dev)  # validates amp
    n_cls = _num_classes(model, num_classes)
    model = _prepare(model, dev, channels_last).train()
    opt = make_optimizer(optimizer, model.parameters())
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    x = _batch(batch_size, in_chans, image_size, dev, channels_last)
    y = torch.randint(0, n_cls, (batch_size,), device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(amp, dev):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        synchronize(dev)

    return step


def build_infer_step(model: nn.Module, *, batch_size: int, image_size: int, in_chans: int = 3,
                     amp: str = "none", channels_last: bool = False,
                     device: str | torch.device = "cpu") -> Step:
    """A closure running one inference batch in eval mode under torch.inference_mode."""
    check_sizes(batch_size, image_size, in_chans, 1, 0)
    dev = resolve_device(device)
    autocast(amp, dev)
    model = _prepare(model, dev, channels_last).eval()
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
    return {"step_s": median, "img_per_s": batch_size / median, "steps": len(step_times),
            "all_step_s": list(step_times), "warmup_s": list(warmup_times), "batch_size": batch_size}


def measure(step: Step, *, batch_size: int, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Run ``warmup`` untimed steps (their times are kept in ``warmup_s``: the first one includes any
    compilation), then ``steps`` timed steps; report the median."""
    check_sizes(batch_size, 1, 1, steps, warmup)
    warm = [run_timed(step) for _ in range(warmup)]
    return summarize([run_timed(step) for _ in range(steps)], batch_size, warm)


def time_train_step(model: nn.Module, *, batch_size: int, image_size: int, in_chans: int = 3,
                    num_classes: int | None = None, steps: int = 10, warmup: int = 3, amp: str = "none",
                    channels_last: bool = False, optimizer: str = "sgd",
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median seconds per training step (forward, loss, backward, optimizer step).

    Returns ``{"step_s", "img_per_s", "steps", "all_step_s", "warmup_s", "batch_size"}``.
    The model is trained in place (see the module note).
    """
    check_sizes(batch_size, image_size, in_chans, steps, warmup)
    step = build_train_step(model, batch_size=batch_size, image_size=image_size, in_chans=in_chans,
                            num_classes=num_classes, amp=amp, channels_last=channels_last,
                            optimizer=optimizer, device=device)
    return measure(step, batch_size=batch_size, steps=steps, warmup=warmup)


def time_infer(model: nn.Module, *, batch_size: int, image_size: int, in_chans: int = 3, steps: int = 10,
               warmup: int = 3, amp: str = "none", channels_last: bool = False,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median seconds per inference batch (eval mode, torch.inference_mode); same keys as
    :func:`time_train_step`."""
    check_sizes(batch_size, image_size, in_chans, steps, warmup)
    step = build_infer_step(model, batch_size=batch_size, image_size=image_size, in_chans=in_chans,
                            amp=amp, channels_last=channels_last, device=device)
    return measure(step, batch_size=batch_size, steps=steps, warmup=warmup)
