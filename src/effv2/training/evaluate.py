"""The one evaluation function: used by the trainer, `effv2 eval`, the search and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imagesets import ImageSet
from ..data.loader import eval_batches
from ..inference.data_config import DataConfig
from ..runtime import Runtime
from ..runtime.distributed import all_reduce_sum


@torch.no_grad()
def evaluate(
    model: nn.Module,
    imageset: ImageSet,
    *,
    runtime: Runtime,
    image_size: int | None = None,
    mean=None,
    std=None,
    batch_size: int = 256,
    num_workers: int = 0,
    on_bad: Callable[[list[dict]], None] | None = None,
    data_config: DataConfig | None = None,
    flip: bool = False,
) -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` on ``imageset``, in eval mode under
    the runtime's autocast; every rank evaluates its own shard and the sums are all-reduced, so the
    result is exact and the same on every rank. ``n`` is the number of images scored (files that
    fail to decode are left out and passed to ``on_bad``). The model's train/eval mode is restored.

    ``data_config`` (a model's preprocessing, as ``effv2 predict`` applies it: size, crop fraction,
    interpolation, mean, std) replaces ``image_size`` / ``mean`` / ``std``: image files get exactly
    its transform; in-memory sets are resized directly to its size and normalised with its mean/std.

    ``flip``: score the mean of the logits of each image and its horizontal mirror (test-time
    augmentation; twice the compute). The recipe's ``eval_flip`` decides it, on validation only.
    """
    if data_config is not None:
        image_size, mean, std = data_config.size, data_config.mean, data_config.std
        file_transform = data_config.resize_transform()
    else:
        if image_size is None or mean is None or std is None:
            raise TypeError("evaluate: give image_size, mean and std, or a data_config")
        file_transform = None
    was_training = model.training
    model.eval()
    dev = runtime.device
    totals = torch.zeros(4, dtype=torch.float64, device=dev)  # correct1, correct5, loss_sum, n
    try:
        for batch in eval_batches(
            imageset,
            batch_size=batch_size,
            image_size=image_size,
            rank=runtime.dist.rank,
            world_size=runtime.dist.world_size,
            num_workers=num_workers,
            device=dev,
            mean=mean,
            std=std,
            channels_last=runtime.channels_last,
            file_transform=file_transform,
        ):
            if batch.bad and on_bad is not None:
                on_bad(batch.bad)
            if batch.y.shape[0] == 0:  # every file of this batch was unreadable
                continue
            with runtime.autocast():
                logits = model(batch.x).float()
                if flip:
                    logits = (logits + model(batch.x.flip(3)).float()) / 2
            k = min(5, logits.shape[1])
            hit = logits.topk(k, dim=1).indices.eq(batch.y[:, None])  # (B, k)
            totals += torch.stack(
                [
                    hit[:, 0].sum(),
                    hit.any(1).sum(),
                    F.cross_entropy(logits, batch.y, reduction="sum"),
                    torch.tensor(batch.y.shape[0], device=dev),
                ]
            ).double()
    finally:
        model.train(was_training)
    all_reduce_sum(totals, runtime.dist)
    n = max(totals[3].item(), 1.0)
    return {
        "top1": 100 * totals[0].item() / n,
        "top5": 100 * totals[1].item() / n,
        "loss": totals[2].item() / n,
        "n": int(totals[3].item()),
    }
