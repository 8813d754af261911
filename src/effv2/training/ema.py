"""Exponential moving average of the weights *and* BN statistics (torch.optim.swa_utils).

The official code uses TF's ExponentialMovingAverage with ``num_updates``, whose effective decay
is ``min(decay, (1 + n) / (10 + n))``: early in training the average follows the model closely,
so short runs (and fine-tuning with 0.9996) are not dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_updates: int) -> float:
    """TF's warm-up rule for the EMA decay (pure)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def _tf_ema_multi_avg_fn(decay: float):
    @torch.no_grad()
    def avg(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        d = ema_decay_at(decay, int(num_averaged))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):  # integer buffers (num_batches_tracked): follow the model
            if not a.is_floating_point():
                a.copy_(c)

    return avg


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` covering parameters and buffers (BN running statistics)."""
    ema = AveragedModel(model, multi_avg_fn=_tf_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema
