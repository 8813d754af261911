"""RandAugment as google/automl efficientnetv2/autoaugment.py defines it (randaug_impl="official").

Line numbers below refer to efficientnetv2/autoaugment.py at google/automl commit 6a54c87 (2025-03-01).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from effv2.data import TensorImageSet, train_batches
from effv2.data.augment import ScaledRandAugment, file_train_transform, make_randaugment
from effv2.data.order import seeded_cpu_rng
from effv2.data.randaugment import (
    FILL,
    OPS,
    SIGNED,
    OfficialRandAugment,
    apply_op,
    draw_choices,
    level_to_arg,
    randaugment,
    rotate,
    shear_x,
)


def _img(shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _smooth_rgb(h=24, w=20, seed=0):
    """A photo-like RGB image (smooth gradients plus noise), so the enhance ops are not all clipping."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([60 + 120 * xx, 40 + 150 * yy, 200 - 120 * xx * yy])
    return (base + 25 * torch.rand(3, h, w, generator=g)).round().clamp(0, 255).to(torch.uint8)


def _pil(x):  # uint8 (3, H, W) -> PIL RGB
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _from_pil(im):
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


# ------------------------------------------------------------------ the pool and the level table
def test_pool_is_the_16_ops_of_distort_image_with_randaugment():
    # autoaugment.py lines 683-686 (available_ops), no Identity
    assert OPS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
        "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
    )  # fmt: skip
    # the ops _randomly_negate_tensor (lines 464-468) is applied to: lines 471-474, 490-501
    assert SIGNED == {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


# Ported from level_to_arg (lines 504-524) with _MAX_LEVEL = 10 (line 30), the rotate / enhance /
# shear / translate helpers (lines 471-501) and distort_image_with_randaugment's
# hparams.Config(cutout_const=40, translate_const=100) (line 682). Values before the random sign.
LEVELS = {
    #              m=5    m=10   m=15   m=20
    "AutoContrast": (None, None, None, None),
    "Equalize": (None, None, None, None),
    "Invert": (None, None, None, None),
    "Rotate": (15.0, 30.0, 45.0, 60.0),  # (level/10)*30 degrees, line 472
    "Posterize": (2, 4, 6, 8),  # int((level/10)*4) bits, line 510
    "Solarize": (128, 256, 384, 512),  # int((level/10)*256) threshold, line 511
    "SolarizeAdd": (55, 110, 165, 220),  # int((level/10)*110) addend, line 512
    "Color": (1.0, 1.9, 2.8, 3.7),  # (level/10)*1.8+0.1, lines 486-487
    "Contrast": (1.0, 1.9, 2.8, 3.7),
    "Brightness": (1.0, 1.9, 2.8, 3.7),
    "Sharpness": (1.0, 1.9, 2.8, 3.7),
    "ShearX": (0.15, 0.3, 0.45, 0.6),  # (level/10)*0.3, line 491
    "ShearY": (0.15, 0.3, 0.45, 0.6),
    "TranslateX": (50.0, 100.0, 150.0, 200.0),  # (level/10)*translate_const pixels, line 498
    "TranslateY": (50.0, 100.0, 150.0, 200.0),
    "Cutout": (20, 40, 60, 80),  # int((level/10)*cutout_const) half-size, line 519
}


@pytest.mark.parametrize("name", OPS)
def test_level_to_arg_matches_the_official_table(name):
    for m, want in zip((5, 10, 15, 20), LEVELS[name], strict=True):
        got = level_to_arg(name, m)
        if want is None:
            assert got is None
        elif isinstance(want, int):
            assert got == want and isinstance(got, int), (name, m)
        else:
            assert got == pytest.approx(want), (name, m)


# ------------------------------------------------------------------ each op's effect
def test_invert():  # lines 392-395
    x = _img((2, 3, 8, 8))
    assert torch.equal(apply_op("Invert", x, 10), 255 - x)


@pytest.mark.parametrize("m, bits", [(5, 2), (10, 4), (15, 6), (20, 8), (1, 1)])
def test_posterize_keeps_the_top_bits(m, bits):  # lines 219-222; int(0.4)=0 bits: TF clamps the shift to 7
    x = _img((2, 1, 8, 8))
    keep = (0xFF << (8 - bits)) & 0xFF
    assert torch.equal(apply_op("Posterize", x, m), x & keep)


def test_solarize_inverts_above_the_threshold():  # lines 173-177
    x = _img((2, 3, 8, 8))
    assert torch.equal(apply_op("Solarize", x, 5), torch.where(x < 128, x, 255 - x))
    t = level_to_arg("Solarize", 3)  # 76
    assert torch.equal(apply_op("Solarize", x, 3), torch.where(x < t, x, 255 - x))
    assert torch.equal(apply_op("Solarize", x, 10), x)  # threshold 256: nothing is >= it


def test_solarize_add():  # lines 180-187: + addend below 128, clipped
    x = _img((2, 3, 8, 8))
    want = torch.where(x < 128, (x.int() + 55).clamp(max=255).to(torch.uint8), x)
    assert torch.equal(apply_op("SolarizeAdd", x, 5), want)


@pytest.mark.parametrize("m, size", [(1, 32), (5, 120)])
@pytest.mark.parametrize("name", ["TranslateX", "TranslateY"])
def test_translate_shifts_by_the_pinned_pixels_with_fill_128(name, m, size):  # lines 250-259, unwrap 406-441
    x = _img((2, 3, size, size))
    px = int(level_to_arg(name, m))  # 10 and 50 pixels, whatever the image size
    out = apply_op(name, x, m, sign=torch.tensor([1.0, -1.0]))
    d = 3 if name == "TranslateX" else 2
    n = size - px
    # sign +1: output(x) = input(x + px), the content moves left / up; -1 the other way
    assert torch.equal(out[0].narrow(d - 1, 0, n), x[0].narrow(d - 1, px, n))
    assert (out[0].narrow(d - 1, n, px) == FILL).all()
    assert torch.equal(out[1].narrow(d - 1, px, n), x[1].narrow(d - 1, 0, n))
    assert (out[1].narrow(d - 1, 0, px) == FILL).all()
    # the official 50 pixels at m=5 move a 32 px image out entirely
    assert (apply_op(name, _img((2, 3, 32, 32)), 5) == FILL).all()


def test_cutout_fills_a_square_of_the_pinned_size():  # lines 122-170
    x = _img((2, 3, 32, 32))
    pad = level_to_arg("Cutout", 1)  # 4: a 2*pad = 8 px square
    out = apply_op("Cutout", x, 1, cy=torch.tensor([10, 1]), cx=torch.tensor([12, 30]))
    for i, (rows, cols) in enumerate([(slice(6, 14), slice(8, 16)), (slice(0, 5), slice(26, 32))]):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[rows, cols] = True
        assert (out[i][:, mask] == FILL).all()
        assert torch.equal(out[i][:, ~mask], x[i][:, ~mask])
    assert int(mask.sum()) == 5 * 6 and pad == 4
    # m=5: half-size 20, a 40 x 40 square when it lies inside the image
    x = _img((1, 1, 64, 64))
    out = apply_op("Cutout", x, 5, cy=torch.tensor([30]), cx=torch.tensor([25]))
    want = x.clone()
    want[..., 10:50, 5:45] = FILL
    assert torch.equal(out, want)


def test_rotate_about_the_centre_nearest_fill_128():  # lines 225-247 (tfa.image.rotate)
    x = _img((2, 3, 9, 9))
    assert torch.equal(rotate(x, torch.tensor([90.0, -90.0]))[0], torch.rot90(x[0], 1, (-2, -1)))
    assert torch.equal(rotate(x, torch.tensor([90.0, -90.0]))[1], torch.rot90(x[1], -1, (-2, -1)))
    out = rotate(x, torch.tensor([45.0, 45.0]))
    assert torch.equal(out[:, :, 4, 4], x[:, :, 4, 4]) and (out[:, :, 0, 0] == FILL).all()  # corners leave


def test_shear_x_is_the_official_projective_transform():  # lines 262-270: [1, level, 0, 0, 1, 0]
    x = _img((1, 1, 6, 8))
    out = shear_x(x, torch.tensor([0.5]))
    for yy in range(6):
        for xx in range(8):
            src = xx + 0.5 * yy
            sx = int(np.floor(src + 0.5))
            want = int(x[0, 0, yy, sx]) if sx <= 7 else FILL
            assert int(out[0, 0, yy, xx]) == want


def test_equalize_and_autocontrast_match_pil():  # lines 284-389: "Implements ... from PIL"
    x = _smooth_rgb()
    assert torch.equal(apply_op("Equalize", x[None], 10)[0], _from_pil(ImageOps.equalize(_pil(x))))
    ac = apply_op("AutoContrast", x[None], 10)[0].int()
    assert (ac - _from_pil(ImageOps.autocontrast(_pil(x))).int()).abs().max() <= 1


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
@pytest.mark.parametrize("m", [3, 5, 10, 15])
def test_enhance_ops_match_pil_imageenhance(name, m):  # lines 190-216, 323-349; blend 79-119
    x = _smooth_rgb(seed=m)
    factor = level_to_arg(name, m)
    want = _from_pil(getattr(ImageEnhance, name)(_pil(x)).enhance(factor)).int()
    got = apply_op(name, x[None], m)[0].int()
    assert (got - want).abs().max() <= 2, (name, m, factor)


def test_single_channel_images():
    x = _img((3, 1, 28, 28))
    assert torch.equal(apply_op("Color", x, 15), x)  # grey is its own greyscale
    for name in OPS:
        out = apply_op(name, x, 15, sign=torch.tensor([1.0, -1.0, 1.0]), cy=torch.tensor([3, 4, 5]),
                       cx=torch.tensor([6, 7, 8]))  # fmt: skip
        assert out.shape == x.shape and out.dtype == torch.uint8


# ------------------------------------------------------------------ one op per image, seeded
@pytest.mark.parametrize("shape", [(256, 1, 28, 28), (48, 3, 96, 96)])  # index_copy_ / per-row write-back
def test_one_op_choice_per_image_grouped_like_one_by_one(shape):
    n, _, h, w = shape
    x = _img(shape, seed=1)
    out = randaugment(x, 1, 9.0, torch.Generator().manual_seed(7))
    ch = draw_choices(n, h, w, 1, torch.Generator().manual_seed(7))
    ops = ch["op"][0]
    assert len(ops.unique()) >= 10  # 48-256 draws of 16 ops: all but certainly >= 10 distinct
    for i in range(n):
        want = apply_op(OPS[int(ops[i])], x[i : i + 1], 9.0, ch["sign"][0][i : i + 1], ch["cy"][0][i : i + 1],
                        ch["cx"][0][i : i + 1])  # fmt: skip
        assert torch.equal(out[i : i + 1], want), (i, OPS[int(ops[i])])


def test_randaugment_is_deterministic_for_a_seed():
    x = _img((64, 3, 16, 16))
    a = randaugment(x, 2, 15.0, torch.Generator().manual_seed(3))
    b = randaugment(x, 2, 15.0, torch.Generator().manual_seed(3))
    c = randaugment(x, 2, 15.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(randaugment(x, 0, 15.0, torch.Generator()), x)


def test_file_pipeline_gets_the_same_ops_per_sample():
    t = file_train_transform(image_size=16, crop="none", hflip=False, randaug_ops=2, randaug_magnitude=12.0)
    assert isinstance(t.transforms[-1], OfficialRandAugment)
    x = _img((3, 16, 16))
    with seeded_cpu_rng(5):
        a = t(x)
    with seeded_cpu_rng(5):
        b = randaugment(x[None], 2, 12.0)[0]
    assert torch.equal(a, b)
    tv = file_train_transform(
        image_size=16, crop="none", hflip=False, randaug_ops=2, randaug_magnitude=12.0, randaug_impl="torchvision"
    )
    assert isinstance(tv.transforms[-1], ScaledRandAugment)
    with pytest.raises(ValueError):
        make_randaugment("timm", 2, 10)


def test_loader_impls_differ_and_both_are_deterministic():
    g = torch.Generator().manual_seed(0)
    ds = TensorImageSet(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (64,), generator=g))  # fmt: skip
    kw = dict(batch_size=32, image_size=28, randaug_magnitude=10, mixup_alpha=0, cutmix_alpha=0,
              num_classes=10, seed=1, epoch=0)  # fmt: skip
    off = [b.x for b in train_batches(ds, **kw)]
    off2 = [b.x for b in train_batches(ds, **kw, randaug_impl="official")]
    tv = [b.x for b in train_batches(ds, **kw, randaug_impl="torchvision")]
    assert all(torch.equal(a, b) for a, b in zip(off, off2, strict=True))
    assert not torch.equal(off[0], tv[0])
