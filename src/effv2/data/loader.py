"""Training and evaluation batches, deterministic by construction.

Training (``train_batches``):
- order: ``order.epoch_permutation(n, seed, epoch)``, the same on every rank; global batch b is
  the permutation's b-th block of batch_size * world_size, rank r takes its r-th block of
  batch_size. The tail that fills no global batch is dropped, so every rank gets
  ``steps_per_epoch(n, batch_size, world_size)`` batches. ``batch_size`` is per rank.
- randomness: in-memory sets draw batch b's crops, flips, RandAugment ops and MixUp/CutMix from
  seeds derived from (seed, epoch, b, rank); file sets draw each sample's crop/flip/RandAugment
  from a seed derived from (seed, epoch, position of the sample in the epoch order), in whichever
  worker decodes it, and cutout and MixUp/CutMix in the main process from (seed, epoch, b, rank). So the
  batches do not depend on num_workers, and ``start_batch=k`` yields exactly the batches k, k+1,
  ... of a full pass without computing the skipped ones.
- ``Batch.y`` is int64 (B,) hard labels when both mix alphas are 0, else float (B, num_classes)
  soft targets whose rows sum to 1 (for every batch of that call).

Evaluation (``eval_batches``): no shuffle, no randomness; rank r gets the contiguous shard
``order.eval_shard(n, r, world_size)``: shards are disjoint and cover every sample once, sizes
differ by at most 1 (no padding), so per-rank sums add up to exact totals.

Files that fail to decode (``Batch.bad``: a list of {"path", "reason"} dicts, to append to the
run's skipped.jsonl): in training the sample is replaced by the next index (i + 1, i + 2, ...
modulo n) that decodes, so the batch keeps its size; in evaluation the sample is left out, so a
batch can be smaller than batch_size (even empty) and ``Batch.index`` says which samples it holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UsageError
from .augment import (
    AUGMENTS,
    CROP_SCALE,
    CROPS,
    RANDAUG_IMPLS,
    ScaledRandAugment,
    cutout_noise,
    file_eval_transform,
    file_train_transform,
    mix_batch,
    norm_stats,
    pad_crop_flip,
    randaugment_chunks,
    random_resized_crop_flip,
    resize_batch,
    to_uint8,
)
from .autoaugment import autoaugment
from .decode import BadImage, decode_rgb
from .imagesets import FileImageSet, ImageSet, TensorImageSet
from .order import (
    derive_seed,
    epoch_permutation,
    eval_shard,
    generator,
    seeded_cpu_rng,
    steps_per_epoch,
    train_batch_positions,
)
from .randaugment import randaugment

__all__ = ["Batch", "eval_batches", "steps_per_epoch", "train_batches"]

# A training sample whose file fails is replaced by the next index; after this many failures in a
# row the data is too broken to train on and a UsageError stops the run instead of spinning.
MAX_CONSECUTIVE_BAD = 64


@dataclass
class Batch:
    x: torch.Tensor  # float32 (B, C, S, S), normalised, on the device
    y: torch.Tensor  # int64 (B,) hard labels, or float32 (B, num_classes) soft targets (mixup/cutmix on)
    bad: list[dict] = field(default_factory=list)  # {"path", "reason"}: files that failed to decode in this batch
    index: torch.Tensor | None = None  # int64 (B,) on CPU: the image set indices of the rows of x

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"batch shapes disagree: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")


# --------------------------------------------------------------------------- argument checks
def _check_common(
    imageset: ImageSet, batch_size: int, image_size: int, rank: int, world_size: int, num_workers: int
) -> None:
    if not isinstance(imageset, (TensorImageSet, FileImageSet)):
        raise TypeError(f"expected a TensorImageSet or FileImageSet, got {type(imageset).__name__}")
    if batch_size < 1 or image_size < 1 or num_workers < 0:
        raise UsageError(
            "batch_size and image_size must be >= 1 and num_workers >= 0, "
            f"got {batch_size}, {image_size}, {num_workers}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in 0..{world_size - 1}")


def _finish(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = x.float().mul_(scale).sub_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --------------------------------------------------------------------------- training
def train_batches(
    imageset: ImageSet,
    *,
    batch_size: int,
    image_size: int,
    randaug_magnitude: float,
    randaug_ops: int = 2,
    randaug_impl: str = "official",
    mixup_alpha: float,
    cutmix_alpha: float,
    num_classes: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    hflip: bool = True,
    crop: str = "auto",
    channels_last: bool = False,
    crop_scale: tuple[float, float] = CROP_SCALE,
    augment: str = "randaugment",
    cutout: float = 0.0,
) -> Iterator[Batch]:
    """The batches of one training epoch for this rank, from batch ``start_batch`` on (see module doc).

    Per image: the crop (``crop``; random_resized draws its area from ``crop_scale``), the flip, then
    the ``augment`` policy ("randaugment" at ``randaug_magnitude``, "autoaugment": the official policy
    v0, "none"), then with ``cutout`` > 0 one noise-filled square of side cutout x size (the official
    fine-tuning augmentation, ``augment.cutout_noise``), then MixUp/CutMix over the batch.
    """
    _check_common(imageset, batch_size, image_size, rank, world_size, num_workers)
    if crop not in CROPS:
        raise UsageError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if augment not in AUGMENTS:
        raise UsageError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1) or not 0 <= cutout <= 1:
        raise UsageError(f"crop_scale must be 0 < min <= max <= 1 and cutout in [0, 1], got {crop_scale}, {cutout}")
    if randaug_magnitude < 0 or randaug_ops < 0 or mixup_alpha < 0 or cutmix_alpha < 0 or num_classes < 1:
        raise UsageError(
            "randaug_magnitude, randaug_ops, mixup_alpha and cutmix_alpha must be >= 0 and num_classes >= 1"
        )
    steps = steps_per_epoch(len(imageset), batch_size, world_size)
    if steps == 0:
        raise UsageError(
            f"batch_size {batch_size} x {world_size} process(es) is more than the {len(imageset)} training images"
        )
    if not 0 <= start_batch <= steps:
        raise UsageError(f"start_batch {start_batch} is not in 0..{steps} (batches per epoch)")
    dev = torch.device(device)
    channels = imageset.images.shape[1] if isinstance(imageset, TensorImageSet) else 3
    scale, shift = norm_stats(mean, std, channels, dev)
    perm = epoch_permutation(len(imageset), seed, epoch)
    plan = _TrainPlan(perm, seed, epoch, start_batch, steps, batch_size, rank, world_size)
    if randaug_impl not in RANDAUG_IMPLS:
        raise UsageError(f"randaug_impl must be one of {', '.join(RANDAUG_IMPLS)}, got {randaug_impl!r}")
    use_ra = augment == "randaugment" and randaug_ops > 0 and randaug_magnitude > 0
    use_aa = augment == "autoaugment"
    tv_ra = ScaledRandAugment(randaug_ops, randaug_magnitude) if use_ra and randaug_impl == "torchvision" else None
    mix = {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "num_classes": num_classes}

    def mixed(x: torch.Tensor, y: torch.Tensor, b: int, uint8_ops: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # batch b's RandAugment and MixUp/CutMix, seeded from (seed, epoch, b, rank): one generator
        # for the official ops (per image choices), then the mixing; torchvision's RandAugment
        # draws from the global RNG in a scope seeded the same way
        ops_seed = derive_seed(seed, epoch, b, rank, "ops")
        gen = generator(ops_seed)
        if uint8_ops and use_ra:
            if tv_ra is not None:
                with seeded_cpu_rng(ops_seed):
                    x = randaugment_chunks(to_uint8(x), tv_ra)
            else:
                x = randaugment(to_uint8(x), randaug_ops, randaug_magnitude, gen)
        elif uint8_ops and use_aa:
            x = autoaugment(to_uint8(x), gen)
        x = x.float()
        if cutout > 0:  # its own generator: the RandAugment and mixing draws stay what they were
            x = cutout_noise(x, generator(derive_seed(seed, epoch, b, rank, "cutout")), cutout)
        if mixup_alpha > 0 or cutmix_alpha > 0:
            x, y = mix_batch(x, y, gen=gen, **mix)
        return x, y

    if isinstance(imageset, TensorImageSet):
        kind = "pad_crop" if crop == "auto" else crop

        def one(b: int, idx: torch.Tensor) -> Batch:
            x = imageset.images[idx.to(imageset.images.device)].to(dev, non_blocking=True)  # uint8 (B, C, H, W)
            y = imageset.labels[idx.to(imageset.labels.device)].to(dev, non_blocking=True)
            gen = generator(derive_seed(seed, epoch, b, rank, "crop"))
            if kind == "pad_crop":
                x = pad_crop_flip(x, gen, pad=x.shape[-1] // 8, hflip=hflip)
                x = x if x.shape[-2:] == (image_size, image_size) else resize_batch(x, image_size)
            elif kind == "random_resized":
                x = random_resized_crop_flip(x, gen, size=image_size, hflip=hflip, scale=crop_scale)
            else:
                x = pad_crop_flip(x, gen, pad=0, hflip=hflip)
                x = x if x.shape[-2:] == (image_size, image_size) else resize_batch(x, image_size)
            x, y = mixed(x, y, b, uint8_ops=True)
            return Batch(_finish(x, scale, shift, channels_last), y, [], idx)

        return (one(b, idx) for b, idx in plan.batches())

    transform = file_train_transform(
        image_size=image_size,
        crop=crop,
        hflip=hflip,
        randaug_ops=randaug_ops,
        randaug_magnitude=randaug_magnitude,
        randaug_impl=randaug_impl,
        crop_scale=crop_scale,
        augment=augment,
    )
    loader = _file_loader(imageset, transform, plan.sample_batches(), image_size, num_workers, dev, train=True)

    def file_batches() -> Iterator[Batch]:
        batches = iter(loader)
        for b in range(start_batch, steps):
            x, y, bad, index = next(batches)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            x, y = mixed(x, y, b, uint8_ops=False)  # RandAugment already ran per sample in the worker
            x = _finish(x, scale, shift, channels_last)
            yield Batch(x, y, bad, index)

    return file_batches()


@dataclass(frozen=True)
class _TrainPlan:
    perm: torch.Tensor
    seed: int
    epoch: int
    start: int
    steps: int
    batch_size: int
    rank: int
    world_size: int

    def positions(self, b: int) -> range:
        return train_batch_positions(b, batch_size=self.batch_size, rank=self.rank, world_size=self.world_size)

    def batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        for b in range(self.start, self.steps):
            pos = self.positions(b)
            yield b, self.perm[pos.start : pos.stop]

    def sample_batches(self) -> _SampleBatches:
        return _SampleBatches(self)


class _SampleBatches:
    """A batch_sampler: for each batch a list of (image index, per-sample seed), made lazily."""

    def __init__(self, plan: _TrainPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.steps - self.plan.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        p = self.plan
        for b, idx in p.batches():
            pos = p.positions(b)
            yield [(i, derive_seed(p.seed, p.epoch, q, "sample")) for i, q in zip(idx.tolist(), pos, strict=True)]


# --------------------------------------------------------------------------- file sets: dataset + loader
class _FileDataset(Dataset):
    """Items are (image index, seed or None).

    Returns (uint8 (3, S, S) or None, label, bad records, used index, fatal message or None). Every
    failure, at any stage (open, decode, transform), becomes a bad record with its reason; nothing
    raises in a worker. When a training sample and the MAX_CONSECUTIVE_BAD files after it all fail,
    the fatal message says so and the main process raises it (``_Loader``) as a one-line UsageError.
    """

    def __init__(self, imageset: FileImageSet, transform, replace_bad: bool) -> None:
        self.paths, self.labels = imageset.paths, imageset.labels
        self.transform, self.replace_bad = transform, replace_bad

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, j: int, seed: int | None) -> torch.Tensor:
        img = decode_rgb(self.paths[j])
        try:
            with seeded_cpu_rng(seed) if seed is not None else contextlib.nullcontext():
                return self.transform(img)
        except Exception as exc:  # e.g. an image too small for an op: skip it like a bad file
            raise BadImage(self.paths[j], f"cannot transform: {type(exc).__name__}: {exc}") from None

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor | None, int, list[dict], int, str | None]:
        i, seed = item
        n, bad = len(self.paths), []
        for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
            j = (i + attempt) % n
            try:
                return self._load(j, seed), self.labels[j], bad, j, None
            except BadImage as exc:
                bad.append(exc.as_record())
            except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, the file is skipped, not fatal
                bad.append({"path": self.paths[j], "reason": f"cannot decode: {type(exc).__name__}: {exc}"})
            if not self.replace_bad:
                return None, self.labels[i], bad, i, None
        fatal = f"{len(bad)} images in a row failed to decode from {self.paths[i]} on; first: {bad[0]['reason']}"
        return None, self.labels[i], bad, i, " ".join(fatal.split())


class _Collate:
    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, list[dict], torch.Tensor, str | None]:
        kept = [it for it in items if it[0] is not None]
        bad: list[dict] = []
        seen: set[str] = set()
        for rec in (rec for it in items for rec in it[2]):  # a file is reported once per batch
            if rec["path"] not in seen:
                seen.add(rec["path"])
                bad.append(rec)
        if kept:
            x = torch.stack([it[0] for it in kept])
        else:
            x = torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8)
        y = torch.tensor([it[1] for it in kept], dtype=torch.int64)
        fatal = next((it[4] for it in items if it[4] is not None), None)
        return x, y, bad, torch.tensor([it[3] for it in kept], dtype=torch.int64), fatal


class _Loader:
    """The DataLoader's batches as (x, y, bad, index); a fatal message from a worker is raised here,
    in the main process, as a one-line UsageError (a worker's exception would arrive as a traceback)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[dict], torch.Tensor]]:
        for x, y, bad, index, fatal in self.loader:
            if fatal is not None:
                raise UsageError(fatal)
            yield x, y, bad, index


def _file_loader(
    imageset: FileImageSet,
    transform,
    batch_sampler,
    image_size: int,
    num_workers: int,
    dev: torch.device,
    *,
    train: bool,
) -> _Loader:
    return _Loader(
        DataLoader(
            _FileDataset(imageset, transform, replace_bad=train),
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=_Collate(image_size),
            pin_memory=dev.type == "cuda",
            # the loader draws a base seed for its workers from this generator; a fixed private one
            # keeps it from consuming the trainer's global random state (we seed every sample ourselves)
            generator=torch.Generator().manual_seed(0),
        )
    )


# --------------------------------------------------------------------------- evaluation
def eval_batches(
    imageset: ImageSet,
    *,
    batch_size: int,
    image_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    channels_last: bool = False,
    file_transform=None,
) -> Iterator[Batch]:
    """This rank's shard of ``imageset`` in order, in batches of ``batch_size`` (the last may be smaller).

    In-memory sets are resized directly to ``image_size``; files get the shorter side resized to
    image_size / 0.875 and a centre crop below 320 px, a direct resize from 320 px up, or
    ``file_transform`` (uint8 (C, H, W) -> (C, image_size, image_size)) when given: a model's
    DataConfig (``effv2.inference.data_config``).
    """
    _check_common(imageset, batch_size, image_size, rank, world_size, num_workers)
    dev = torch.device(device)
    channels = imageset.images.shape[1] if isinstance(imageset, TensorImageSet) else 3
    scale, shift = norm_stats(mean, std, channels, dev)
    shard = eval_shard(len(imageset), rank, world_size)
    chunks = [range(s, min(s + batch_size, shard.stop)) for s in range(shard.start, shard.stop, batch_size)]

    if isinstance(imageset, TensorImageSet):

        def one(r: range) -> Batch:
            x = imageset.images[r.start : r.stop].to(dev, non_blocking=True)
            y = imageset.labels[r.start : r.stop].to(dev, non_blocking=True)
            return Batch(
                _finish(resize_batch(x, image_size), scale, shift, channels_last),
                y,
                [],
                torch.arange(r.start, r.stop),
            )

        return (one(r) for r in chunks)

    sampler = [[(i, None) for i in r] for r in chunks]
    transform = file_transform if file_transform is not None else file_eval_transform(image_size)
    loader = _file_loader(imageset, transform, sampler, image_size, num_workers, dev, train=False)

    def file_batches() -> Iterator[Batch]:
        batches = iter(loader)
        for _ in chunks:
            x, y, bad, index = next(batches)
            yield Batch(
                _finish(x.to(dev, non_blocking=True), scale, shift, channels_last),
                y.to(dev, non_blocking=True),
                bad,
                index,
            )

    return file_batches()
