"""``task: classify``: supervised classification, cross-entropy with label smoothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import Task


@register("classify")
class ClassifyTask(Task):
    """forward -> cross-entropy on the "labelled" stream. Soft targets (mixup/cutmix) and hard labels
    both go through cross_entropy; label smoothing applies to either (PyTorch smooths probability
    targets too). The loss is computed in fp32 outside autocast."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__(model)
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe: Any) -> ClassifyTask:
        return cls(model, label_smoothing=recipe.label_smoothing)

    def forward(self, batches: Mapping[str, Any], step: int) -> dict[str, torch.Tensor]:
        batch = batches["labelled"]
        x = self.runtime.input(batch.x)
        with self.autocast():
            logits = self.net(x)
        return {"loss": F.cross_entropy(logits.float(), batch.y, label_smoothing=self.label_smoothing)}
