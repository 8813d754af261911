"""MAC counting with torch.utils.flop_counter (counts conv and matmul; 1 MAC = 2 FLOPs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, image_size: int, in_chans: int | None = None) -> int:
    """Multiply-accumulates of one forward pass of a single image at ``image_size`` (eval mode)."""
    in_chans = in_chans or getattr(model, "in_chans", 3)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
