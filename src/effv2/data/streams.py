"""Data streams by name: one training step can read several (the labelled one; an unlabelled one next).

A :class:`Stream` is an image set with its own augmentation. :func:`train_steps` yields, for each
step of an epoch, ``{name: Batch}`` for every stream. The first stream (``"labelled"``, the primary)
defines the epoch: its batches are exactly :func:`effv2.data.loader.train_batches` of
(seed, epoch), so a run with one stream is the same as before streams existed. Every other stream
is cycled through its own epochs: global step g = epoch * steps + batch reads that stream's
batch ``g mod its_steps`` of its epoch ``g // its_steps``, with its own seed derived from
(seed, name). So every stream is deterministic in (seed, epoch, batch, rank) and a run resumes
mid-epoch with ``start_batch`` alone, without replaying anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import UsageError
from .imagesets import ImageSet
from .loader import Batch, train_batches
from .order import derive_seed, steps_per_epoch

PRIMARY = "labelled"


@dataclass(frozen=True)
class Augment:
    """A stream's augmentation; the stage supplies the magnitudes (times ``*_scale``)."""

    crop: str = "auto"
    hflip: bool = True
    randaug_ops: int = 2
    randaug_impl: str = "official"  # "official" or "torchvision" (loader.train_batches)
    randaug_scale: float = 1.0  # x the stage's RandAugment magnitude (0: off; a weak view for a teacher)
    mix: bool = True  # Mixup/CutMix at the stage's alphas (needs labels)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random_resized area range (loader.train_batches)
    augment: str = "randaugment"  # the per-image policy: "randaugment", "autoaugment" or "none"
    cutout: float = 0.0  # noise-filled square of side cutout x size per image (0 = off)


@dataclass(frozen=True)
class Stream:
    name: str
    imageset: ImageSet
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class StepContext:
    """What every stream's batches of one epoch share."""

    batch_size: int  # per rank
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int
    seed: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    device: torch.device | str = "cpu"
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    channels_last: bool = False


def stream_steps(stream: Stream, ctx: StepContext) -> int:
    return steps_per_epoch(len(stream.imageset), ctx.batch_size, ctx.world_size)


def _batches(stream: Stream, ctx: StepContext, *, seed: int, epoch: int, start_batch: int) -> Iterator[Batch]:
    a = stream.augment
    return train_batches(
        stream.imageset,
        batch_size=ctx.batch_size,
        image_size=ctx.image_size,
        randaug_magnitude=ctx.randaug_magnitude * a.randaug_scale,
        randaug_ops=a.randaug_ops,
        randaug_impl=a.randaug_impl,
        mixup_alpha=ctx.mixup_alpha if a.mix else 0.0,
        cutmix_alpha=ctx.cutmix_alpha if a.mix else 0.0,
        num_classes=ctx.num_classes,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=ctx.num_workers,
        device=ctx.device,
        mean=ctx.mean,
        std=ctx.std,
        hflip=a.hflip,
        crop=a.crop,
        channels_last=ctx.channels_last,
        crop_scale=a.crop_scale,
        augment=a.augment,
        cutout=a.cutout,
    )


def _cycled(stream: Stream, ctx: StepContext, first_step: int) -> Iterator[Batch]:
    """A secondary stream from global step ``first_step`` on, through as many of its epochs as needed."""
    n = stream_steps(stream, ctx)
    if n == 0:
        raise UsageError(
            f"data stream {stream.name!r}: batch {ctx.batch_size} x {ctx.world_size} is more than its "
            f"{len(stream.imageset)} images"
        )
    seed = derive_seed(ctx.seed, "stream", stream.name)
    epoch, start = divmod(first_step, n)
    while True:
        yield from _batches(stream, ctx, seed=seed, epoch=epoch, start_batch=start)
        epoch, start = epoch + 1, 0


def train_steps(
    streams: Sequence[Stream], ctx: StepContext, *, epoch: int, start_batch: int = 0
) -> Iterator[dict[str, Batch]]:
    """``{name: Batch}`` for steps ``start_batch..`` of ``epoch`` (the primary stream's epoch).
    The streams are checked when this is called, not at the first step."""
    names = [s.name for s in streams]
    if not names or names[0] != PRIMARY:
        raise ValueError(f"the first data stream must be {PRIMARY!r}, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"data stream names must be unique, got {names}")
    return _zip_streams(streams, ctx, epoch=epoch, start_batch=start_batch)


def _zip_streams(
    streams: Sequence[Stream], ctx: StepContext, *, epoch: int, start_batch: int
) -> Iterator[dict[str, Batch]]:
    primary = _batches(streams[0], ctx, seed=ctx.seed, epoch=epoch, start_batch=start_batch)
    steps = stream_steps(streams[0], ctx)
    others = [(s.name, _cycled(s, ctx, epoch * steps + start_batch)) for s in streams[1:]]
    for batch in primary:
        yield {PRIMARY: batch, **{name: next(it) for name, it in others}}
