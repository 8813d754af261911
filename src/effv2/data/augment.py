"""Augmentations: whole-batch tensor ops for in-memory sets, torchvision v2 pipelines for files.

Every function that draws random numbers takes a ``torch.Generator`` or runs inside
``order.seeded_cpu_rng``: callers derive its seed from (seed, epoch, batch, rank), so the result
is a pure function of those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

from .autoaugment import OfficialAutoAugment
from .randaugment import OfficialRandAugment

# torchvision's RandAugment (randaug_impl="torchvision") draws one op for a whole tensor batch, so
# in-memory batches are augmented in chunks of this many samples: a batch of 256 gets 32
# independent op draws. Smaller chunks cost more calls per batch; randaugment_chunks makes one call
# per distinct draw, not per chunk (benchmarks/randaug_speed.py). The official impl draws an op per image.
RANDAUG_CHUNK = 8

# RandAugment's fill for pixels moved in from outside the image: the official code's 128.
RANDAUG_FILL = 128

CROPS = ("auto", "pad_crop", "random_resized", "none")
AUGMENTS = ("randaugment", "autoaugment", "none")  # the recipe's ``augment``: the per-image policy

# random_resized crop area range: torchvision's / EfficientNetV1's default (preprocess_legacy.py:96 @6a54c87),
# and the official V2 ImageNet training crop (preprocessing.py:32-37 @6a54c87: area_range=(0.05, 1.0))
CROP_SCALE = (0.08, 1.0)
OFFICIAL_CROP_SCALE = (0.05, 1.0)


# --------------------------------------------------------------------------- RandAugment
class _Magnitude:
    """One op's magnitude at ``m`` on the official 0-10 scale, as the 1-element tensor RandAugment indexes.

    A picklable callable (not a lambda) so the transform can go to spawned loader workers.
    """

    # ops whose value has a hard limit once extrapolated past 10
    _FACTOR_OPS = ("Brightness", "Color", "Contrast", "Sharpness")  # factor 1 +- v must stay > 0

    def __init__(self, name: str, m: float) -> None:
        self.name, self.m = name, m
        self._cache: dict[tuple[int, int], torch.Tensor | None] = {}  # (height, width) -> value

    def __call__(self, num_bins: int, height: int, width: int) -> torch.Tensor | None:
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = self._value(height, width)
        return self._cache[key]

    def _value(self, height: int, width: int) -> torch.Tensor | None:
        base_fn = v2.RandAugment._AUGMENTATION_SPACE[self.name][0]  # looked up, not stored: lambdas do not pickle
        values = base_fn(11, height, width)  # torchvision's range at m = 0, 1, ..., 10
        if values is None:
            return None
        v0, v10 = float(values[0]), float(values[10])
        v = v0 + (v10 - v0) * self.m / 10.0
        if self.name in self._FACTOR_OPS:
            v = min(v, 0.99)
        elif self.name == "Solarize":
            v = min(max(v, 0.0), 1.0)
        elif self.name == "Posterize":
            return torch.tensor([int(min(max(round(v), 1), 8))])
        return torch.tensor([v])


class ScaledRandAugment(v2.RandAugment):
    """torchvision's RandAugment with the magnitude on the official code's scale.

    ``magnitude`` is a float where 10 is torchvision's largest value for each op (its magnitude
    30 of 31 bins: rotate 30 degrees, shear 0.3, ...) and larger values extrapolate linearly,
    as the official code does (the paper's schedules reach 15-25). Where an op has a hard limit
    the value is clamped: enhance factors 1 +- 0.99, solarize threshold 0-255, posterize >= 1 bit.
    Torchvision's bin index cannot go past its bin count, hence this subclass; the ops themselves
    are torchvision's.
    """

    def __init__(self, num_ops: int, magnitude: float, fill: int = RANDAUG_FILL) -> None:
        if num_ops < 0 or magnitude < 0:
            raise ValueError(f"num_ops and magnitude must be >= 0, got {num_ops}, {magnitude}")
        super().__init__(num_ops=num_ops, magnitude=0, num_magnitude_bins=1, fill=fill)
        # instance attribute shadows the class table; index 0 of each 1-element tensor is used
        self._AUGMENTATION_SPACE = {
            name: (_Magnitude(name, float(magnitude)), signed)
            for name, (_, signed) in v2.RandAugment._AUGMENTATION_SPACE.items()
        }
        self.scaled_magnitude = float(magnitude)


# randaugment_chunks groups chunks into one call only while a chunk is at most this many bytes: grouping
# saves per-call overhead, which is what small images pay for (256x1x28x28 in chunks of 8: 1.5x the img/s),
# and costs cache locality (an op over all the chunks before the next op) and copies, which is what
# large ones pay for (32x3x224x224: 0.85x); benchmarks/randaug_speed.py, 2 threads, 2-core Zen 3 EPYC
RANDAUG_GROUP_MAX_BYTES = 1 << 18


def randaugment_chunks(
    x: torch.Tensor,
    ra: ScaledRandAugment,
    chunk: int = RANDAUG_CHUNK,
    *,
    group_max_bytes: int = RANDAUG_GROUP_MAX_BYTES,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W), an independent op draw per chunk of samples.

    Equal, bit for bit and in what it leaves in the global RNG, to ``torch.cat([ra(p) for p in
    x.split(chunk)])``, but with fewer calls: the ops are drawn first, in the order torchvision's
    ``RandAugment.forward`` draws them (chunk by chunk, layer by layer), then each layer applies every
    distinct (op, signed magnitude) once, to all the chunks that drew it, concatenated. A batch of 256
    in chunks of 8 makes 32 draws per layer from 14 ops (23 op-sign pairs): about 16 calls instead of
    32 (17 distinct pairs expected, Identity not called). Every op is per image (affine warps, per-image histograms and
    ranges), which is what makes applying one to a concatenation the same as to each chunk. Chunks
    larger than ``group_max_bytes`` get one call each (grouping does not pay for large images).
    """
    parts = list(x.split(chunk))
    if parts and parts[0].numel() * parts[0].element_size() > group_max_bytes:
        return torch.cat([ra(part) for part in parts])
    height, width = x.shape[-2:]
    draws: list[list[tuple[str, float]]] = []
    for _ in parts:  # torchvision's draws, in its order (RandAugment.forward, torchvision 0.29)
        ops = []
        for _ in range(ra.num_ops):
            name, (magnitudes_fn, signed) = ra._get_random_item(ra._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(ra.num_magnitude_bins, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[ra.magnitude])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            ops.append((name, magnitude))
        draws.append(ops)
    for layer in range(ra.num_ops):
        groups: dict[tuple[str, float], list[int]] = {}
        for i, ops in enumerate(draws):
            groups.setdefault(ops[layer], []).append(i)
        for (name, magnitude), members in groups.items():
            if name == "Identity":
                continue
            out = ra._apply_image_or_video_transform(
                parts[members[0]] if len(members) == 1 else torch.cat([parts[i] for i in members]),
                name,
                magnitude,
                interpolation=ra.interpolation,
                fill=ra._fill,
            )
            for i, piece in zip(members, out.split([len(parts[i]) for i in members]), strict=True):
                parts[i] = piece
    return torch.cat(parts)


RANDAUG_IMPLS = ("official", "torchvision")


def make_randaugment(impl: str, num_ops: int, magnitude: float) -> OfficialRandAugment | ScaledRandAugment:
    """The per-sample RandAugment transform: the official code's (randaugment.py) or torchvision's scaled one."""
    if impl == "official":
        return OfficialRandAugment(num_ops, magnitude)
    if impl == "torchvision":
        return ScaledRandAugment(num_ops, magnitude)
    raise ValueError(f"randaug_impl must be one of {', '.join(RANDAUG_IMPLS)}, got {impl!r}")


# --------------------------------------------------------------------------- batch crops and resizes
def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index into 0..n-1 by reflection (the 'reflect' padding mode: -1 -> 1, n -> n-2)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def pad_crop_flip(x: torch.Tensor, gen: torch.Generator, *, pad: int, hflip: bool) -> torch.Tensor:
    """Reflect-pad by ``pad``, random-crop back to (H, W), random horizontal flip; any dtype.

    Done as two gathers with per-sample index rows, without materialising the padded batch.
    """
    B, C, H, W = x.shape
    shift_y = torch.randint(-pad, pad + 1, (B,), generator=gen) if pad else torch.zeros(B, dtype=torch.int64)
    shift_x = torch.randint(-pad, pad + 1, (B,), generator=gen) if pad else torch.zeros(B, dtype=torch.int64)
    rows = _reflect(shift_y[:, None] + torch.arange(H), H)  # (B, H)
    cols = _reflect(shift_x[:, None] + torch.arange(W), W)  # (B, W)
    if hflip:
        flip = torch.rand(B, generator=gen) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    x = x.gather(2, rows[:, None, :, None].expand(B, C, H, W))
    return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def random_resized_boxes(
    B: int,
    H: int,
    W: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> torch.Tensor:
    """float (B, 4) crop boxes x1, y1, x2, y2 drawn as torchvision's RandomResizedCrop does, vectorised.

    Up to ``tries`` candidate (area, aspect) draws per sample, the first that fits is used,
    else the whole image clamped to the ratio range (torchvision's fallback).
    """
    area = H * W
    target = area * torch.empty(B, tries).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(B, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((B,), -1))
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, round(W / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(H * ratio[1]), H
    else:
        fw, fh = W, H
    pick = first.clamp(min=0)[:, None]
    cw = torch.where(first >= 0, w.gather(1, pick)[:, 0], torch.full((B,), float(fw)))
    ch = torch.where(first >= 0, h.gather(1, pick)[:, 0], torch.full((B,), float(fh)))
    u = torch.rand(B, 2, generator=gen)
    top = torch.where(first >= 0, (u[:, 0] * (H - ch + 1)).floor(), ((H - ch) / 2).round())
    left = torch.where(first >= 0, (u[:, 1] * (W - cw + 1)).floor(), ((W - cw) / 2).round())
    return torch.stack([left, top, left + cw, top + ch], dim=1)


def random_resized_crop_flip(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    size: int,
    hflip: bool,
    scale: tuple[float, float] = CROP_SCALE,
) -> torch.Tensor:
    """(B, C, H, W) -> float (B, C, size, size): per-sample RandomResizedCrop (+ flip) in one op.

    roi_align with aligned=True samples the box exactly, bilinearly, averaging ceil(box / size)
    points per output pixel, so a downscale is anti-aliased.
    """
    B, C, H, W = x.shape
    boxes = random_resized_boxes(B, H, W, gen, scale=tuple(scale))
    flip = torch.rand(B, generator=gen) < 0.5 if hflip else None
    rois = torch.cat([torch.arange(B, dtype=torch.float32)[:, None], boxes], dim=1).to(x.device)
    out = roi_align(x.float(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if flip is not None:
        out = torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)
    return out


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> float (B, C, size, size), bilinear, anti-aliased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x.float()
    shrink = size < x.shape[-2] or size < x.shape[-1]
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.uint8 else x.round().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- MixUp / CutMix
# As google/automl efficientnetv2/datasets.py draws them (``mixup``, ``cutmix_mask``, ``cutmix``,
# ``mixing``): each sample mixes with its mirror in its part of the batch (``image[::-1]``);
# MixUp draws one lambda ~ Beta(alpha, alpha) per sample and keeps max(lambda, 1 - lambda) for
# the sample itself; CutMix draws one box per sample (centre uniform, area ~ Beta(alpha, alpha),
# side ratio sqrt(1 - area), clipped to the image) and pastes the partner's pixels into it. The
# partner's label weight is that sample's pasted pixel fraction (the official code uses the mean
# fraction over the batch half; per sample is what CutMix means and keeps each row exact).
def _beta(n: int, alpha: float, gen: torch.Generator | None) -> torch.Tensor:
    """float64 (n,) Beta(alpha, alpha) draws, a pure function of ``gen``'s state (numpy's sampler)."""
    import numpy as np

    seed = int(torch.randint(0, 2**62, (), generator=gen))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n))


def mixup_weights(n: int, alpha: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """float32 (n,): each sample's own weight, max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha)."""
    lam = _beta(n, alpha, gen)
    return torch.maximum(lam, 1.0 - lam).float()


def cutmix_boxes(n: int, h: int, w: int, alpha: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """int64 (n, 4) boxes x1, y1, x2, y2 (x2, y2 exclusive), one per sample, as ``cutmix_mask`` draws them."""
    r_x = torch.randint(0, w, (n,), generator=gen)
    r_y = torch.randint(0, h, (n,), generator=gen)
    ratio = torch.sqrt(1.0 - _beta(n, alpha, gen)).float()
    r_w = (ratio * w).to(torch.int64)  # tf.cast truncates
    r_h = (ratio * h).to(torch.int64)
    x1 = (r_x - r_w // 2).clamp(0, w)
    y1 = (r_y - r_h // 2).clamp(0, h)
    x2 = (r_x + r_w // 2).clamp(0, w)
    y2 = (r_y + r_h // 2).clamp(0, h)
    return torch.stack([x1, y1, x2, y2], 1)


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool (n, 1, h, w): True inside each sample's box."""
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_r = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])
    in_c = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def mixup(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float (n, C, H, W), float (n, K) soft targets, (n,) own weights -> mixed with the mirrored batch."""
    lam = lam.to(x.device)
    w = lam.view(-1, 1, 1, 1).to(x.dtype)
    x = x * w + x.flip(0) * (1.0 - w)
    lw = lam.view(-1, 1).to(y.dtype)
    return x, y * lw + y.flip(0) * (1.0 - lw)


def cutmix(x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the mirrored sample's pixels into each box; its label weight is the box's pixel fraction."""
    H, W = x.shape[-2:]
    mask = box_masks(boxes, H, W).to(x.device)
    frac = mask.flatten(1).float().mean(1).to(y.dtype).view(-1, 1)
    x = torch.where(mask, x.flip(0), x)
    return x, y * (1.0 - frac) + y.flip(0) * frac


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    num_classes: int,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float (B, C, H, W), int64 (B,) -> mixed images, float (B, num_classes) soft targets (rows sum to 1).

    With both alphas > 0 the first B // 2 samples get MixUp and the rest CutMix, each part mixing
    within itself, as the official ``mixing`` does.
    """
    if not (mixup_alpha > 0 or cutmix_alpha > 0):
        return x, y
    B, _, H, W = x.shape
    x = x.float()
    soft = F.one_hot(y, num_classes).float()
    if mixup_alpha > 0 and cutmix_alpha > 0:
        half = B // 2
        lam = mixup_weights(half, mixup_alpha, gen)
        boxes = cutmix_boxes(B - half, H, W, cutmix_alpha, gen)
        x1, y1 = mixup(x[:half], soft[:half], lam)
        x2, y2 = cutmix(x[half:], soft[half:], boxes)
        return torch.cat([x1, x2]), torch.cat([y1, y2])
    if mixup_alpha > 0:
        return mixup(x, soft, mixup_weights(B, mixup_alpha, gen))
    return cutmix(x, soft, cutmix_boxes(B, H, W, cutmix_alpha, gen))


# --------------------------------------------------------------------------- fine-tuning cutout
# The official fine-tuning augmentation (augname 'ft', preprocessing.py:73-107 @6a54c87): resize to
# (size, size), random flip, then ``autoaugment.cutout(image, pad_size=image_size // 4, replace=noise)``
# (preprocessing.py:102-106): a square of side 2 * pad_size = half the image, its centre uniform over
# the image (so it is clipped at the borders, autoaugment.py:145-163), filled with
# ``tf.random.uniform(image.shape, 0, 1)`` in the normalised [-1, 1] space, i.e. pixels
# 127.5 + 127.5 u, u ~ U[0, 1) per pixel and channel (what those values are before the (x/255 - 0.5) / 0.5
# normalisation, preprocessing.py:82-83).
def cutout_pad(image_size: int, fraction: float) -> int:
    """The official ``pad_size`` for a square of side ``fraction`` x size: fraction 0.5 -> size // 4."""
    return int(fraction * image_size) // 2


def cutout_noise(x: torch.Tensor, gen: torch.Generator, fraction: float) -> torch.Tensor:
    """float (B, C, H, W) on the 0..255 scale -> the same with one noise-filled square per image (see above)."""
    B, C, H, W = x.shape
    pad = cutout_pad(min(H, W), fraction)
    if pad <= 0 or B == 0:
        return x
    cy = torch.randint(0, H, (B,), generator=gen)[:, None]
    cx = torch.randint(0, W, (B,), generator=gen)[:, None]
    rows = (torch.arange(H)[None] >= cy - pad) & (torch.arange(H)[None] < cy + pad)  # (B, H)
    cols = (torch.arange(W)[None] >= cx - pad) & (torch.arange(W)[None] < cx + pad)  # (B, W)
    box = (rows[:, :, None] & cols[:, None, :])[:, None].to(x.device)  # (B, 1, H, W)
    noise = torch.rand(B, C, H, W, generator=gen).mul_(127.5).add_(127.5).to(x.device, x.dtype)
    return torch.where(box, noise, x.float() if not x.is_floating_point() else x)


# --------------------------------------------------------------------------- normalisation
def norm_stats(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of shape (1, C|1, 1, 1) so that normalise(x) = x * scale - shift for x in 0..255."""
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or any(s <= 0 for s in std):
        raise ValueError(f"mean/std need 1 or {channels} values and std > 0, got {tuple(mean)}, {tuple(std)}")
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * s), m / s


# --------------------------------------------------------------------------- per-sample file pipelines
def file_train_transform(
    *,
    image_size: int,
    crop: str,
    hflip: bool,
    randaug_ops: int,
    randaug_magnitude: float,
    randaug_impl: str = "official",
    crop_scale: tuple[float, float] = CROP_SCALE,
    augment: str = "randaugment",
) -> v2.Compose:
    """uint8 (3, H, W) of any size -> uint8 (3, S, S), torchvision v2 per sample.

    Crop (random_resized: area in ``crop_scale``, aspect 3/4..4/3), flip, then the ``augment`` policy.
    """
    steps: list[v2.Transform] = []
    if crop in ("auto", "random_resized"):
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True))
    elif crop == "pad_crop":
        steps += [
            v2.Resize((image_size, image_size), antialias=True),
            v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"),
        ]
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment == "autoaugment":
        steps.append(OfficialAutoAugment())
    elif augment == "randaugment" and randaug_ops > 0 and randaug_magnitude > 0:
        steps.append(make_randaugment(randaug_impl, randaug_ops, randaug_magnitude))
    return v2.Compose(steps)


# Eval resize, the official rule (preprocessing.py:58-70 @6a54c87): below 320 px a centre crop of
# size / (size + 32) of the shorter side (``ratio = image_size / (image_size + 32)  # for imagenet.``,
# line 64), resized to size; from 320 px up no crop, a direct resize to (size, size) (line 60). Done
# here as the shorter side resized to size + 32, then a centre crop of size: the same region, with
# torchvision's ops. Below 224 px (no official config evaluates there) the fraction stays at 0.875,
# the 224 px value: the formula, meant for ImageNet sizes, would keep only half of a 32 px image.
EVAL_CENTER_CROP_BELOW = 320
EVAL_CROP_MARGIN = 32
EVAL_CROP_MIN_FRACTION = 0.875  # = 224 / (224 + 32)


def eval_crop_fraction(image_size: int) -> float:
    """The fraction of the shorter side the eval crop keeps: size / (size + 32) from 224 to 319 px,
    1 from 320 px up, 0.875 below 224 px."""
    if image_size >= EVAL_CENTER_CROP_BELOW:
        return 1.0
    return max(image_size / (image_size + EVAL_CROP_MARGIN), EVAL_CROP_MIN_FRACTION)


def eval_resize_size(image_size: int) -> int:
    """The shorter side before the centre crop (below 320 px): size + 32, or int(size / 0.875) below 224 px."""
    if image_size / (image_size + EVAL_CROP_MARGIN) >= EVAL_CROP_MIN_FRACTION:
        return image_size + EVAL_CROP_MARGIN
    return int(image_size / EVAL_CROP_MIN_FRACTION)


def file_eval_transform(image_size: int) -> v2.Compose:
    if image_size < EVAL_CENTER_CROP_BELOW:
        return v2.Compose([v2.Resize(eval_resize_size(image_size), antialias=True), v2.CenterCrop(image_size)])
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])
