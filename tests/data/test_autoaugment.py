"""AutoAugment policy v0 as google/automl efficientnetv2/autoaugment.py @6a54c87 defines it (the B0-B3 policy)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import torch

from effv2.data import randaugment as ra
from effv2.data.augment import file_train_transform
from effv2.data.autoaugment import POLICY_V0, OfficialAutoAugment, autoaugment, level_to_arg
from effv2.data.imagesets import TensorImageSet
from effv2.data.loader import train_batches

# autoaugment.py:39-63 @6a54c87 (policy_v0), copied from the file as it stands
OFFICIAL_V0 = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
    [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
    [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
    [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
    [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
    [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
    [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
    [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
    [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
    [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
    [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
    [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
    [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]

MIRROR = Path("/work/.mirror/google+automl/repo")


def test_policy_v0_is_the_official_table():
    assert [list(sub) for sub in POLICY_V0] == OFFICIAL_V0
    assert len(POLICY_V0) == 25 and all(len(sub) == 2 for sub in POLICY_V0)
    assert {op for sub in POLICY_V0 for op, _, _ in sub} <= set(ra.OPS)


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no local google/automl mirror")
def test_policy_v0_against_the_official_file_when_a_mirror_is_at_hand():
    src = subprocess.run(
        ["git", "--git-dir", str(MIRROR), "show", "6a54c87:efficientnetv2/autoaugment.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "policy_v0")
    table = ast.literal_eval(next(n for n in fn.body if isinstance(n, ast.Assign)).value)
    assert [list(sub) for sub in POLICY_V0] == [list(sub) for sub in table]
    assert "hparams.Config(cutout_const=100, translate_const=250)" in src  # autoaugment.py:658


# level_to_arg (autoaugment.py:504-524) with cutout_const=100, translate_const=250 (line 658)
LEVELS = [
    ("TranslateY", 9, 225.0),
    ("TranslateX", 4, 100.0),
    ("Cutout", 10, 100),
    ("Rotate", 8, 24.0),
    ("ShearY", 4, 0.12),
    ("ShearX", 9, 0.27),
    ("Solarize", 3, 76),
    ("Solarize", 10, 256),
    ("SolarizeAdd", 3, 33),
    ("Posterize", 6, 2),
    ("Posterize", 2, 0),
    ("Color", 9, 1.72),
    ("Color", 0, 0.1),
    ("Equalize", 8, None),
]


@pytest.mark.parametrize("name,level,want", LEVELS)
def test_level_to_arg_uses_autoaugment_constants(name, level, want):
    got = level_to_arg(name, level)
    assert got == pytest.approx(want) if want is not None else got is None
    assert type(got) is type(want)


def _img(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_a_sure_sub_policy_is_its_ops_in_order():
    x = _img()
    out = autoaugment(x, torch.Generator().manual_seed(1), policy=((("Invert", 1.0, 0), ("Equalize", 1.0, 5)),))
    assert torch.equal(out, ra.equalize(ra.invert(x)))
    never = ((("Invert", 0.0, 0), ("Solarize", 0.0, 5)),)
    assert torch.equal(autoaugment(x, torch.Generator().manual_seed(1), policy=never), x)


def test_translate_moves_by_the_autoaugment_pixels_with_a_random_sign():
    x = _img(n=40, size=256)
    out = autoaugment(x, torch.Generator().manual_seed(3), policy=((("TranslateY", 1.0, 9),),))
    plus, minus = ra.translate_y(x, torch.full((40,), 225.0)), ra.translate_y(x, torch.full((40,), -225.0))
    is_plus = (out == plus).flatten(1).all(1)
    is_minus = (out == minus).flatten(1).all(1)
    assert (is_plus | is_minus).all() and is_plus.any() and is_minus.any()
    assert (out[:, :, 31:225] == ra.FILL).all()  # 225 of 256 rows moved in from outside either way: fill 128


def test_one_sub_policy_per_image_and_each_op_with_its_probability():
    n = 6000
    x = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
    # sub-policy 0: invert w.p. 0.5; sub-policy 1: never -> P(inverted) = 0.5 * 0.5
    pol = ((("Invert", 0.5, 0), ("Invert", 0.0, 0)), (("Invert", 0.0, 0), ("Invert", 0.0, 0)))
    out = autoaugment(x, torch.Generator().manual_seed(0), policy=pol)
    frac = (out == 255).float().mean().item()
    assert abs(frac - 0.25) < 0.02  # 4 sigma of Binomial(6000, 0.25)
    # both slots: invert twice w.p. 0.6 * 0.6 -> back to 0; once w.p. 2 * 0.6 * 0.4
    twice = ((("Invert", 0.6, 0), ("Invert", 0.6, 0)),)
    frac = (autoaugment(x, torch.Generator().manual_seed(1), policy=twice) == 255).float().mean().item()
    assert abs(frac - 0.48) < 0.03


def test_batches_are_reproducible_and_per_sample_transform_matches_the_batch_op():
    x = _img(n=32, size=48)
    a = autoaugment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, autoaugment(x, torch.Generator().manual_seed(5)))
    assert (a != x).flatten(1).any(1).float().mean() > 0.5  # most images changed by v0
    torch.manual_seed(9)
    one = OfficialAutoAugment()(x[0])
    assert one.shape == x[0].shape and one.dtype == torch.uint8
    torch.manual_seed(9)
    assert torch.equal(one, autoaugment(x[:1], None)[0])  # the file path draws from the global RNG the same way


def test_augment_key_selects_the_policy_in_both_pipelines():
    steps = file_train_transform(
        image_size=32, crop="none", hflip=False, randaug_ops=2, randaug_magnitude=9, augment="autoaugment"
    ).transforms
    assert [type(s).__name__ for s in steps] == ["Resize", "OfficialAutoAugment"]
    steps = file_train_transform(
        image_size=32, crop="none", hflip=False, randaug_ops=2, randaug_magnitude=9, augment="none"
    ).transforms
    assert [type(s).__name__ for s in steps] == ["Resize"]
    ds = TensorImageSet(_img(n=16, size=32)[:, :1].clone(), torch.arange(16) % 2)
    kw = dict(batch_size=16, image_size=32, randaug_magnitude=9, mixup_alpha=0, cutmix_alpha=0, num_classes=2)
    kw |= dict(seed=4, epoch=0, crop="none", hflip=False)
    none = next(iter(train_batches(ds, augment="none", **kw))).x
    aa = next(iter(train_batches(ds, augment="autoaugment", **kw))).x
    assert torch.equal(aa, next(iter(train_batches(ds, augment="autoaugment", **kw))).x)
    assert not torch.equal(aa, none)
    ref = ds.images[next(iter(train_batches(ds, augment="none", **kw))).index]
    assert torch.allclose(none, ref.float() / 127.5 - 1.0, atol=1e-5)  # "none": no RandAugment at magnitude 9
