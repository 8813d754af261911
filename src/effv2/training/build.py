"""The one build step: recipe + model card + data + runtime -> the parts a run trains.

    model   create_model (init weights, grayscale stems and new heads adapted for fine-tuning)
    task    tasks.build_task(recipe.task, model, recipe)
    optim   build_optimizer(model, OptimizerConfig.from_recipe(recipe)); lr from LRSchedule each step
    ema     make_ema(model) when recipe.ema_decay > 0
    scaler  a GradScaler for fp16 (runtime.grad_scaler)
    streams the data streams the task reads ("labelled" = the training split)

The trainer, `effv2 bench` and the search's step timing all build here, so the step they run or
time is the same object (:func:`train_step`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.streams import Augment, Stream
from ..errors import UsageError
from ..models import create_model
from ..runtime import Runtime
from ..runtime.replicas import replicable
from .ema import make_ema
from .optim import OptimizerConfig, build_optimizer
from .step import TrainStep
from .sync_bn import convert_sync_bn, resolve_sync_bn
from .tasks import Task, build_task, task_class


@dataclass
class Parts:
    """Everything a run trains and checkpoints. ``checkpoint_parts`` names them for the checkpoint."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    ema: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    streams: list[Stream] = field(default_factory=list)

    def checkpoint_parts(self) -> dict[str, Any]:
        return {"model": self.model, "ema": self.ema, "optim": self.optimizer, "scaler": self.scaler, "task": self.task}


def seed_everything(seed: int) -> None:
    """Seed the global generators the model's init, dropout and stochastic depth draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def channel_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Fit per-channel mean/std to the data's channel count (grayscale data on an RGB card: average)."""
    if len(values) == channels:
        return tuple(values)
    return (float(sum(values) / len(values)),) * channels


# -- the model -------------------------------------------------------------------------------------
def init_overrides(src_spec, model_name: str) -> dict[str, Any]:
    """Padding and BN eps travel with converted weights (tf_ checkpoints need TF 'same' padding)."""
    from ..models import get_card

    own = get_card(model_name).spec
    if own.scaled_stages() != src_spec.scaled_stages() or own.stem_channels != src_spec.stem_channels:
        raise UsageError(
            f"--init weights are a different architecture from {model_name}; convert them for the matching model"
        )
    return {k: getattr(src_spec, k) for k in ("padding", "bn_eps") if getattr(src_spec, k) != getattr(own, k)}


def adapt_and_load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load pretrained weights for fine-tuning: a new classifier when the class count differs, and a
    stem summed over its RGB filters when the data is grayscale (what timm's adapt_input_conv does)."""
    own = model.state_dict()
    state = dict(state)
    for key in [k for k in state if k.startswith("classifier.")]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]  # keep the freshly initialised head
    w = state.get("stem.conv.weight")
    if w is not None and w.shape[1] != own["stem.conv.weight"].shape[1]:
        if own["stem.conv.weight"].shape[1] != 1:
            raise UsageError(
                f"{source}: stem has {w.shape[1]} input channels, the data {own['stem.conv.weight'].shape[1]}"
            )
        state["stem.conv.weight"] = w.sum(dim=1, keepdim=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        bad = (unexpected or [k for k in missing if not k.startswith("classifier.")])[0]
        raise UsageError(f"{source}: weights do not fit the model (first differing key {bad!r})")


def build_model(
    model_name: str, *, num_classes: int, in_chans: int, init: str | None = None, load_init: bool = True
) -> nn.Module:
    """The model to train: ``model_name`` (registered or a spec file) with fresh weights, or started
    from ``init`` (an `effv2 convert` output, a run folder or a checkpoint) unless ``load_init`` is
    False (a resumed run: its own checkpoint follows)."""
    loaded = None
    if init:
        from .inference import load_for_inference

        loaded = load_for_inference(init)
    model = create_model(
        model_name,
        num_classes=num_classes,
        in_chans=in_chans,
        **(init_overrides(loaded.model.spec, model_name) if loaded else {}),
    )
    if loaded is not None and load_init:
        adapt_and_load(model, loaded.model.state_dict(), str(init))
    return model


# -- the parts -------------------------------------------------------------------------------------
def build_streams(task: type[Task], recipe: Any, bundle: Any) -> list[Stream]:
    """The data streams ``task`` reads, from the bundle's splits."""
    available = {"labelled": bundle.train}
    missing = [s for s in task.streams if s not in available]
    if missing:
        raise UsageError(
            f"task {task.name} needs data stream(s) {', '.join(missing)}; this data has {', '.join(available)}"
        )
    augment = Augment(
        crop=recipe.crop,
        hflip=recipe.hflip,
        randaug_ops=recipe.randaug_ops,
        randaug_impl=getattr(recipe, "randaug_impl", "official"),
        crop_scale=tuple(getattr(recipe, "crop_scale", (0.08, 1.0))),
        augment=getattr(recipe, "augment", "randaugment"),
        cutout=getattr(recipe, "cutout", 0.0),
    )
    return [Stream(name, available[name], augment) for name in task.streams]


def build_parts(
    recipe: Any, model: nn.Module, runtime: Runtime, *, bundle: Any = None, base_lr: float | None = None
) -> Parts:
    """Task, optimizer, EMA, scaler and data streams around ``model`` (moved to the runtime's device
    and memory format here)."""
    name = getattr(recipe, "task", "classify")
    cls = task_class(name)
    if resolve_sync_bn(getattr(recipe, "sync_bn", False), runtime.dist.world_size, runtime.device.type):
        model = convert_sync_bn(model, runtime.device.type)  # cross-replica BN (sync_bn.py), before DDP
    runtime.place(model)
    task = build_task(name, model, recipe)
    task.to(runtime.device)
    ema = make_ema(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    lr = recipe.scaled_lr if base_lr is None else base_lr
    optimizer = build_optimizer(model, OptimizerConfig.from_recipe(recipe, lr))
    streams = build_streams(cls, recipe, bundle) if bundle is not None else []
    return Parts(model=model, task=task, optimizer=optimizer, ema=ema, scaler=runtime.grad_scaler(), streams=streams)


def train_step(parts: Parts, runtime: Runtime, recipe: Any) -> TrainStep:
    """The one training step over ``parts``; binds the task to the DDP / compiled forward."""
    parts.task.bind(runtime.wrap(parts.model), runtime)
    return TrainStep(
        parts.task,
        parts.optimizer,
        runtime,
        grad_clip=recipe.grad_clip,
        scaler=parts.scaler,
        ema=parts.ema,
        replicas=runtime.replicas if replicable(parts.task) else 1,
    )
