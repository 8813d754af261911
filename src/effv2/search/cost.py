"""Cost of an architecture (parameters, MACs) and the search reward.

Counts are exact: the network is built on PyTorch's ``meta`` device (no memory, no arithmetic)
and counted with the same functions as ``effv2 models`` (:mod:`effv2.models.flops`), so a search
or a scaling run can price hundreds of candidates in seconds without duplicating the builder.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..models.efficientnetv2 import EfficientNetV2
from ..models.flops import count_macs, count_params
from ..models.spec import ArchSpec

# Paper section 3.3: reward = A * S^w * P^v.
REWARD_W = -0.07  # exponent of the normalised training-step time S
REWARD_V = -0.05  # exponent of the normalised parameter count P


@dataclass(frozen=True, kw_only=True)
class Cost:
    params: int
    macs: int  # multiply-accumulates of one image at the size it was counted at


@functools.lru_cache(maxsize=4096)  # specs are frozen and hashable; searches re-price the same ones
def model_cost(spec: ArchSpec, *, image_size: int, in_chans: int = 3, num_classes: int = 1000) -> Cost:
    """Exact parameter count and MACs of ``spec`` at ``image_size``, computed on the meta device."""
    with torch.device("meta"):
        model = EfficientNetV2(spec, num_classes=num_classes, in_chans=in_chans, drop_rate=0.0, drop_path_rate=0.0)
        return Cost(params=count_params(model), macs=count_macs(model, image_size, in_chans))


@functools.lru_cache(maxsize=4096)
def model_params(spec: ArchSpec, *, in_chans: int = 3, num_classes: int = 1000) -> int:
    """Exact parameter count only (no forward pass): what scaling to a params target bisects on."""
    with torch.device("meta"):
        model = EfficientNetV2(spec, num_classes=num_classes, in_chans=in_chans, drop_rate=0.0, drop_path_rate=0.0)
        return count_params(model)


def reward(
    top1: float,
    *,
    step_s: float,
    params: int,
    base_step_s: float,
    base_params: int,
    w: float = REWARD_W,
    v: float = REWARD_V,
) -> float:
    """``A * S^w * P^v`` with A = top-1 as a fraction, S and P normalised by the backbone's.

    Normalising P only multiplies every reward by the same constant (base_params^-v), so the
    ranking is the paper's; it makes the backbone's reward equal to its accuracy, which reads
    better. Normalising S by the backbone's step time on the same device and batch makes rewards
    comparable across machines.
    """
    if step_s <= 0 or base_step_s <= 0 or params <= 0 or base_params <= 0:
        raise ValueError("reward: step times and parameter counts must be positive")
    return (top1 / 100.0) * math.pow(step_s / base_step_s, w) * math.pow(params / base_params, v)
