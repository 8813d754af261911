"""Crops as the official code has them: training crop area, the eval centre crop, the fine-tuning cutout.

Official facts (google/automl efficientnetv2/ @6a54c87): training crop area_range=(0.05, 1.0)
(preprocessing.py:32-37); eval ``ratio = image_size / (image_size + 32)`` of the shorter side below
320 px, no crop from 320 px up (preprocessing.py:58-70); fine-tuning ('ft'): resize, flip, cutout
with pad_size = image_size // 4 and uniform-noise fill (preprocessing.py:73-107).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from effv2.config import resolve_recipe
from effv2.data.augment import (
    cutout_noise,
    cutout_pad,
    eval_crop_fraction,
    file_eval_transform,
    file_train_transform,
    random_resized_boxes,
)
from effv2.data.imagesets import TensorImageSet
from effv2.data.loader import train_batches
from effv2.inference.data_config import DataConfig


# --------------------------------------------------------------------------- training crop area
def test_random_resized_area_bounds_follow_crop_scale():
    gen = torch.Generator().manual_seed(0)
    H = W = 1000
    for lo in (0.05, 0.08):
        boxes = random_resized_boxes(20_000, H, W, gen, scale=(lo, 1.0))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (H * W)
        # rounding w and h to pixels moves the area by < 0.5% of a 5% crop
        assert area.min() >= lo * 0.99 and area.max() <= 1.0
        assert area.min() < lo + 0.005  # the lower bound is reached: 0.05 really means 0.05
    assert random_resized_boxes(10, H, W, gen, scale=(0.05, 1.0))[:, 2:].le(1000).all()


def test_crop_scale_reaches_both_pipelines():
    t = file_train_transform(
        image_size=64, crop="random_resized", hflip=False, randaug_ops=0, randaug_magnitude=0, crop_scale=(0.05, 1.0)
    )
    rrc = [s for s in t.transforms if isinstance(s, v2.RandomResizedCrop)]
    assert len(rrc) == 1 and tuple(rrc[0].scale) == (0.05, 1.0)
    # in memory: area exactly 1 on a square image fits no 3/4..4/3 aspect but 1, so every sample
    # falls back to the whole image, and an aligned roi_align at the same size is the identity
    imgs = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    ds = TensorImageSet(imgs, torch.arange(8) % 2)
    kw = dict(batch_size=8, image_size=16, randaug_magnitude=0, mixup_alpha=0, cutmix_alpha=0, num_classes=2)
    kw |= dict(seed=1, epoch=0, crop="random_resized", hflip=False, mean=(0.0,), std=(1 / 255,))
    whole = next(iter(train_batches(ds, crop_scale=(1.0, 1.0), **kw)))
    perm = whole.index
    assert torch.allclose(whole.x, imgs[perm].float(), atol=1e-3)
    jitter = next(iter(train_batches(ds, crop_scale=(0.05, 1.0), **kw)))
    assert not torch.allclose(jitter.x, imgs[perm].float(), atol=1.0)


def test_recipes_set_the_official_crop_areas():
    for name, scale in (("imagenet", (0.05, 1.0)), ("imagenet-s", (0.05, 1.0)), ("imagenet21k", (0.05, 1.0))):
        rec, _ = resolve_recipe(name, model="efficientnetv2_s", dataset="imagenet")
        assert rec.crop == "random_resized" and rec.crop_scale == scale, name
    # B0-B3 run the EfficientNetV1 preprocessing: area (0.08, 1) (preprocess_legacy.py:96)
    rec, _ = resolve_recipe("imagenet-b0", model="efficientnetv2_b0", dataset="imagenet")
    assert rec.crop_scale == (0.08, 1.0)


# --------------------------------------------------------------------------- eval centre crop
EVAL_FRACTION = {224: 224 / 256, 240: 240 / 272, 260: 260 / 292, 300: 300 / 332, 384: 1.0, 480: 1.0}


def test_eval_crop_below_224_keeps_the_224_fraction():
    # no official config evaluates below 224 px; the ImageNet formula would keep half of a 32 px image
    for size in (28, 32, 64, 128, 192, 223):
        assert eval_crop_fraction(size) == 0.875
        steps = file_eval_transform(size).transforms
        assert steps[0].size == [int(size / 0.875)] and list(steps[1].size) == [size, size]  # as before
    assert eval_crop_fraction(225) == 225 / 257 and eval_crop_fraction(319) == 319 / 351


@pytest.mark.parametrize("size", sorted(EVAL_FRACTION))
def test_eval_crop_fraction_is_size_over_size_plus_32_below_320(size):
    assert eval_crop_fraction(size) == EVAL_FRACTION[size]
    dc = DataConfig.effv2_eval(size)
    assert dc.crop_fraction == EVAL_FRACTION[size]
    assert dc.crop_mode == ("center" if size < 320 else "squash")
    steps = file_eval_transform(size).transforms
    if size < 320:  # shorter side -> size + 32, centre crop: the kept fraction is size / (size + 32)
        assert [type(s) for s in steps] == [v2.Resize, v2.CenterCrop]
        assert steps[0].size == [size + 32] and list(steps[1].size) == [size, size]
    else:  # no crop: both sides to size
        assert [type(s) for s in steps] == [v2.Resize] and list(steps[0].size) == [size, size]
    # B1-B3 changed: the old fixed 0.875 is right only for 224
    assert (EVAL_FRACTION[size] == 0.875) == (size == 224)


def _official_eval(img: torch.Tensor, size: int) -> torch.Tensor:
    """preprocessing.py:58-70 transcribed: crop int(ratio * min(h, w)) at ((h - c) // 2, (w - c) // 2), resize."""
    h, w = img.shape[-2:]
    if size < 320:
        c = int(size / (size + 32) * min(h, w))
        img = img[..., (h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c]
    return v2.functional.resize(img, [size, size], antialias=True)


@pytest.mark.parametrize("size", [240, 260, 300, 384])
def test_eval_transform_matches_the_official_crop_then_resize(size):
    # a smooth image (an upsampled random field): crop-then-resize and resize-then-crop agree up to the
    # official int() of the crop side (a fraction of a source pixel); the old fixed 0.875 does not
    g = torch.Generator().manual_seed(size)
    small = torch.rand(3, 12, 18, generator=g) * 255
    img = v2.functional.resize(small, [420, 630], antialias=True).round().clamp(0, 255).to(torch.uint8)
    ours = file_eval_transform(size)(img).float()
    ref = _official_eval(img, size).float()
    assert ours.shape == ref.shape == (3, size, size)
    err = (ours - ref).abs().mean().item()
    assert err < 1.6
    if size < 320:
        old = v2.Compose([v2.Resize(int(size / 0.875), antialias=True), v2.CenterCrop(size)])(img).float()
        assert (old - ref).abs().mean().item() > 2.5 * err  # measured: 240 4x, 260 2.6x, 300 5x
    else:
        assert err == 0.0  # the same direct resize


# --------------------------------------------------------------------------- fine-tuning: resize, flip, cutout
@pytest.mark.parametrize("size", [30, 224, 226, 384, 480])
def test_cutout_pad_is_the_official_size_over_4(size):
    assert cutout_pad(size, 0.5) == size // 4


def _boxes(changed: torch.Tensor) -> list[tuple[int, int]]:
    """(rows, cols) extent of the changed pixels of each image; asserts they form one rectangle."""
    out = []
    for m in changed:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(m.sum()) == h * w  # a filled axis-aligned rectangle
        out.append((h, w))
    return out


def test_cutout_noise_is_one_square_of_half_the_image_filled_with_official_noise():
    x = torch.zeros(300, 3, 64, 64)
    out = cutout_noise(x, torch.Generator().manual_seed(0), 0.5)
    changed = (out != 0).all(1)  # noise > 127 on every channel
    sides = _boxes(changed)
    assert max(h for h, _ in sides) == 32 == max(w for _, w in sides)  # 2 * pad_size = half of 64
    assert all(h <= 32 and w <= 32 for h, w in sides)
    assert sum(h == 32 and w == 32 for h, w in sides) > 50  # centres inside: the full square
    noise = out[changed[:, None].expand_as(out)]
    assert noise.min() >= 127.5 and noise.max() < 255.0  # uniform [0, 1) in the [-1, 1] space
    assert abs(noise.mean().item() - 191.25) < 1.0


def test_finetune_recipe_is_resize_flip_cutout_and_train_batches_apply_it():
    rec, _ = resolve_recipe("finetune-cifar10", model="efficientnetv2_s", dataset="cifar10")
    assert (rec.crop, rec.hflip, rec.cutout, rec.augment) == ("none", True, 0.5, "none")
    imgs = torch.randint(0, 128, (16, 3, 32, 32), dtype=torch.uint8)  # below the noise range
    ds = TensorImageSet(imgs, torch.arange(16) % 4)
    kw = dict(batch_size=16, image_size=48, randaug_magnitude=0, mixup_alpha=0, cutmix_alpha=0, num_classes=4)
    kw |= dict(seed=2, epoch=0, crop="none", hflip=False, mean=(0.0,), std=(1 / 255,))
    plain = next(iter(train_batches(ds, **kw)))
    cut = next(iter(train_batches(ds, cutout=0.5, **kw)))
    assert torch.equal(plain.index, cut.index)
    changed = (cut.x != plain.x).any(1)
    sides = _boxes(changed)
    assert all(h <= 24 and w <= 24 for h, w in sides) and (24, 24) in sides  # half of 48
    assert (cut.x[changed[:, None].expand_as(cut.x)] >= 127.5).all()
