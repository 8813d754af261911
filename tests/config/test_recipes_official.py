"""The official recipes: B0-B3, ImageNet-21k and 21k -> 1k, the crop/augment/cutout/sync_bn keys, citations."""

from __future__ import annotations

import json
import re

import pytest

from effv2.config import Recipe, resolve_recipe, shipped_recipes
from effv2.config.layers import RECIPES_DIR
from effv2.errors import UsageError
from effv2.training.schedule import all_stages

PAPER_MODELS = ("efficientnetv2_b0", "efficientnetv2_s", "efficientnetv2_l")


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_every_recipe_loads_and_validates(model):
    for name in shipped_recipes():
        rec, _ = resolve_recipe(name, model=model, dataset="imagenet")
        assert isinstance(rec, Recipe) and rec.follows, name


def test_every_recipe_that_follows_the_official_code_cites_its_lines():
    for path in sorted(RECIPES_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        follows = raw.get("follows", "")
        if "official code" in follows:
            assert "@6a54c87" in follows, path.name
            assert re.search(r"\w+\.py:\d+(-\d+)?", follows), path.name
    for ds in ("cifar10", "cifar100", "flowers102", "stanford-cars"):
        raw = json.loads((RECIPES_DIR / f"finetune-{ds}.json").read_text())
        assert "paper section 5.3" in raw["follows"] and "5.2" not in raw["follows"]  # transfer learning section


# effnetv2_configs.py:203-210 @6a54c87: (train size, eval size, dropout); 'effnetv1_autoaug'
B = {"b0": (192, 224, 0.2), "b1": (192, 240, 0.2), "b2": (208, 260, 0.3), "b3": (240, 300, 0.3)}


@pytest.mark.parametrize("b", sorted(B))
def test_b0_b3_recipes(b):
    train, eval_, dropout = B[b]
    rec, prov = resolve_recipe(f"imagenet-{b}", model=f"efficientnetv2_{b}", dataset="imagenet")
    assert list(prov)[:4] == ["defaults", "model", "recipe:imagenet", f"recipe:imagenet-{b}"]
    assert (rec.augment, rec.crop, rec.crop_scale, rec.eval_size) == (
        "autoaugment",
        "random_resized",
        (0.08, 1.0),
        eval_,
    )
    assert (rec.epochs, rec.batch_size, rec.optimizer, rec.lr, rec.ema_decay) == (
        350,
        4096,
        "rmsprop_tf",
        0.016,
        0.9999,
    )
    p = rec.progressive
    assert (p.variant, p.n_stages, p.min_size, p.max_size) == ("code", 4, 128, train)
    stages = all_stages(p, train_size=train, dropout=dropout, drop_path=0.2)
    # main.py:468-474: int(128 + (train - 128) * (i + 1) / 4)
    assert [s.image_size for s in stages] == [int(128 + (train - 128) * (i + 1) / 4) for i in range(4)]
    assert {s.dropout for s in stages} == {dropout} and {s.mixup_alpha for s in stages} == {0.0}
    assert {s.randaug_magnitude for s in stages} == {0.0}  # AutoAugment has no magnitude schedule


def test_b0_stage_sizes_pinned():
    rec, _ = resolve_recipe("imagenet-b0", model="efficientnetv2_b0", dataset="imagenet")
    assert [s.image_size for s in all_stages(rec.progressive, train_size=192, dropout=0.2, drop_path=0.2)] == [
        144,
        160,
        176,
        192,
    ]


def test_imagenet21k_pretraining_recipe():
    # datasets.py:666-695 @6a54c87 + hparams.py:245-262; paper section 5.2
    rec, _ = resolve_recipe("imagenet21k", model="efficientnetv2_s", dataset="imagenet21k")
    assert (rec.epochs, rec.batch_size, rec.lr, rec.warmup_epochs, rec.lr_schedule) == (60, 4096, 0.008, 1, "cosine")
    assert rec.scaled_lr == pytest.approx(0.128)
    assert (rec.label_smoothing, rec.optimizer, rec.ema_decay, rec.weight_decay) == (0.0, "rmsprop_tf", 0.9999, 1e-5)
    assert (rec.augment, rec.crop_scale, rec.eval_size) == ("none", (0.05, 1.0), 224)
    p = rec.progressive
    assert not p.enabled and p.max_size == 224
    assert (p.mixup_max, p.cutmix_max, p.dropout_max, p.drop_path_max) == (0, 0, 0, 0)


def test_imagenet21k_to_1k_finetuning_recipe():
    # datasets.py:698-727 @6a54c87 (ImagenetFt); paper section 5.2: 15 epochs on ILSVRC2012
    rec, _ = resolve_recipe("imagenet21k-ft1k", model="efficientnetv2_m", dataset="imagenet")
    assert (rec.epochs, rec.batch_size, rec.lr, rec.lr_schedule, rec.warmup_epochs) == (15, 512, 0.0005, "constant", 1)
    assert rec.scaled_lr == pytest.approx(0.001)
    assert (rec.ema_decay, rec.weight_decay, rec.label_smoothing, rec.sync_bn) == (0.9996, 1e-5, 0.1, "auto")
    assert (rec.crop, rec.hflip, rec.cutout, rec.augment) == ("none", True, 0.5, "none")
    p = rec.progressive
    assert not p.enabled and p.max_size == rec.eval_size == 480 and p.drop_path_max == 0.2 and p.dropout_max == 0
    assert 15 * (1_281_167 // 512) >= 10_000  # min_steps 10000 is met by the epochs


def test_sync_bn_is_auto_in_the_imagenet_recipes_and_off_elsewhere():
    for name in shipped_recipes():
        rec, _ = resolve_recipe(name, model="efficientnetv2_s", dataset="imagenet")
        want = "auto" if name.startswith("imagenet") else False
        assert rec.sync_bn == want, name


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"crop_scale": [0.5, 0.2]}, "crop_scale: must be [min, max] with 0 < min <= max <= 1"),
        ({"crop_scale": [0, 1]}, "crop_scale"),
        ({"cutout": 1.5}, "cutout: must be in [0, 1]"),
        ({"augment": "autoaug"}, "augment"),
        ({"sync_bn": "yes"}, "sync_bn"),
    ],
)
def test_new_keys_are_validated(bad, words):
    with pytest.raises(UsageError) as err:
        Recipe(**bad)
    assert words in str(err.value) and "\n" not in str(err.value)
