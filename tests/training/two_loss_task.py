"""A test-only task in one file, added without touching the loop: a second loss term (an L2 penalty on
the logits, as LogitClip-style regularizers do), both terms logged, and state of its own (a step
counter and a running mean of the penalty) that must survive a kill and a resume bit for bit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effv2.training.tasks import TASKS, Task, register


class TwoLossTask(Task):
    def __init__(self, model, label_smoothing: float = 0.0, weight: float = 0.01) -> None:
        super().__init__(model)
        self.label_smoothing, self.weight = label_smoothing, weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("penalty_mean", torch.zeros(()))

    @classmethod
    def from_recipe(cls, model, recipe):
        return cls(model, label_smoothing=recipe.label_smoothing)

    def forward(self, batches, step):
        batch = batches["labelled"]
        with self.autocast():
            logits = self.net(self.runtime.input(batch.x)).float()
        ce = F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)
        penalty = logits.pow(2).mean()
        self._last = penalty.detach()
        return {"loss": ce + self.weight * penalty, "ce": ce, "logit_l2": penalty}

    def after_step(self, step):
        self.steps += 1
        self.penalty_mean.mul_(0.9).add_(0.1 * self._last)


if "two_loss" not in TASKS:
    register("two_loss")(TwoLossTask)
