"""One optimizer step, the same for every task, for training and for step timing.

    task(batches, step) -> {"loss", parts...}      forward under the runtime's autocast (the task's job)
    zero_grad -> backward (GradScaler for fp16) -> unscale -> clip the global grad norm
      (replicas > 1: forward and backward of a shard per replica in parallel, runtime/replicas.py,
       the gradients summed into the task's before the clip)
    one host transfer: loss, parts, grad norm     the finiteness check must precede the step
    any rank non-finite -> skip on every rank     (the scaler still updates, so fp16 can back off)
    optimizer step (through the scaler) -> EMA update -> task.after_step

:mod:`effv2.bench.timing` and the search's reward time this very object, so the measured step
time S follows whatever technique a recipe's task adds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..runtime import Runtime
from ..runtime.distributed import any_true
from ..runtime.replicas import Replicas
from .tasks import Task


@dataclass(frozen=True)
class StepResult:
    parts: dict[str, float]  # "loss" and the task's named parts (NaN everywhere when skipped)
    grad_norm: float
    stepped: bool  # False: non-finite loss or gradient on some rank; nothing was updated

    @property
    def loss(self) -> float:
        return self.parts["loss"]


class TrainStep:
    """Callable ``step(batches, index, lr=None) -> StepResult``; see the module docstring."""

    def __init__(
        self,
        task: Task,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        *,
        grad_clip: float = 0.0,
        scaler: torch.amp.GradScaler | None = None,
        ema: nn.Module | None = None,
        replicas: int = 1,
    ) -> None:
        self.task, self.optimizer, self.runtime = task, optimizer, runtime
        self.scaler, self.ema = scaler, ema
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        # the task's parameters in module order (the model's first): the norm's summation order, kept fixed
        self.params = [p for p in task.parameters() if p.requires_grad]
        # BatchNorm running statistics change in the forward pass, before the finiteness check: they
        # are snapshot each step and put back when the step is skipped, so a bad batch leaves no trace.
        self.buffers = list(task.buffers())
        self._saved = [b.detach().clone() for b in self.buffers]
        if replicas > 1 and scaler is not None:
            raise ValueError("replicas train without a GradScaler (fp16 is a GPU mode)")
        self.replicas = Replicas(task, replicas) if replicas > 1 else None

    def close(self) -> None:
        """Stop the replicas' worker threads (a no-op without replicas; also done when collected)."""
        if self.replicas is not None:
            self.replicas.close()

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def __call__(self, batches: Mapping[str, Any], index: int, lr: float | None = None) -> StepResult:
        if lr is not None:
            self.set_lr(lr)
        if self.buffers:
            torch._foreach_copy_(self._saved, self.buffers)
        if self.replicas is not None:  # zeroes the task's gradients itself
            out = self.replicas.forward_backward(batches, index)
        else:
            out = self.task(batches, index)
            if "loss" not in out:
                raise KeyError(f"task {self.task.name}: forward() must return a 'loss'")
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        names = list(out)
        values = torch.stack(
            [torch.as_tensor(out[k]).detach().float().reshape(()) for k in names] + [grad_norm.detach().float()]
        ).tolist()
        parts, norm = dict(zip(names, values[:-1])), values[-1]
        bad = not (math.isfinite(parts["loss"]) and math.isfinite(norm))
        if any_true(bad, self.runtime.dist, self.runtime.device):
            self.optimizer.zero_grad(set_to_none=True)
            if self.buffers:
                torch._foreach_copy_(self.buffers, self._saved)
            if self.scaler is not None:
                self.scaler.update()
            return StepResult({k: float("nan") for k in names}, float("nan"), False)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.task.model)
        self.task.after_step(index)
        return StepResult(parts, norm, True)
