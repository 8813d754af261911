"""The data-fitted layer: pinned outputs of the rule for a few (images, side) cases, and its place
among the recipe layers (every recipe key and --set still wins)."""

from __future__ import annotations

import pytest
from PIL import Image

from effv2.config import resolve_recipe
from effv2.config.fitted import (
    DataFacts,
    fit_batch_size,
    fit_epochs,
    fit_randaugment,
    fit_sizes,
    fitted_layer,
    measure_facts,
)
from effv2.data.folders import median_short_side
from effv2.data.sources import load_source

B0 = {"train_size": 192, "eval_size": 224, "stride": 32}
MINI = {"train_size": 28, "eval_size": 28, "stride": 8}


@pytest.mark.parametrize(
    ("images", "batch"),
    [(1, 1), (10, 8), (100, 16), (270, 16), (1350, 32), (2700, 64), (5120, 128), (50_000, 128)],
)
def test_batch_size_is_a_power_of_two_with_enough_steps(images, batch):
    assert fit_batch_size(images) == batch


@pytest.mark.parametrize(
    ("images", "batch", "floor", "epochs"),
    [
        (1350, 32, 10, 24),  # 42 steps an epoch: 24 epochs = 1,008 steps (today: 10 x 10 = 100)
        (270, 16, 10, 63),
        (50_000, 128, 10, 10),  # 3,900 steps already: the floor stays
        (10, 8, 10, 200),  # 1 step an epoch: capped at MAX_EPOCHS
    ],
)
def test_epochs_reach_the_minimum_steps(images, batch, floor, epochs):
    assert fit_epochs(images, batch, floor) == epochs


@pytest.mark.parametrize(
    ("side", "card", "sizes"),
    [
        (28, B0, {"min_size": 32, "max_size": 32, "eval_size": 32}),  # the stride is the floor
        (28, MINI, None),  # already the model's size
        (20, MINI, {"min_size": 16, "max_size": 24, "eval_size": 24}),
        (100, B0, {"min_size": 80, "max_size": 104, "eval_size": 104}),
        (150, B0, {"min_size": 112, "max_size": 152, "eval_size": 152}),
        (500, B0, None),  # large images: the model's own sizes
    ],
)
def test_sizes_follow_the_native_resolution(side, card, sizes):
    assert fit_sizes(side, **card) == sizes


@pytest.mark.parametrize(
    ("size", "out"),
    [
        (28, {"randaug_min": 0.7, "randaug_max": 2.0, "randaug_impl": "torchvision"}),
        (104, {"randaug_min": 1.7, "randaug_max": 5.2, "randaug_impl": "torchvision"}),
        (192, {"randaug_min": 3.2, "randaug_max": 9.6, "randaug_impl": "torchvision"}),
        (300, {"randaug_min": 5.0, "randaug_max": 15.0}),  # the paper's 5 -> 15, its official ops
    ],
)
def test_randaugment_scales_with_size(size, out):
    assert fit_randaugment(size) == out


def test_whole_layer_for_a_small_folder_on_b0():
    facts = DataFacts(images=1350, classes=10, median_side=28, sampled=256)
    assert fitted_layer(facts, **B0, lower={}, upper={}) == {
        "batch_size": 32,
        "epochs": 24,
        "progressive.max_size": 32,
        "progressive.min_size": 32,
        "eval_size": 32,
        "progressive.randaug_max": 2.0,
        "progressive.randaug_min": 0.7,
        "randaug_impl": "torchvision",
    }


def test_keys_set_above_are_left_alone_and_used():
    facts = DataFacts(images=1350, classes=10, median_side=28, sampled=256)
    upper = {"batch_size": 64, "progressive.max_size": 64, "progressive.randaug_max": 1.0, "randaug_impl": "official"}
    assert fitted_layer(facts, **B0, lower={}, upper=upper) == {
        "epochs": 48,  # 21 steps an epoch at the given batch 64
        "progressive.min_size": 48,  # 3/4 of the given max_size
        "eval_size": 32,
        "progressive.randaug_min": 1.0,  # 3.2 / 3 = 1.1 for 64 px, capped at the given max
    }
    # a recipe that leaves max_size null on purpose (to the "filled" layer) keeps it null
    out = fitted_layer(facts, **B0, lower={}, upper={"progressive.max_size": None})
    assert "progressive.max_size" not in out and out["progressive.min_size"] == 32
    assert out["progressive.randaug_max"] == 9.6  # for the model's 192 px that "filled" gives
    # a given length or a time budget: the layer does not touch the epochs
    for key in ("epochs", "max_steps", "time_budget"):
        assert "epochs" not in fitted_layer(facts, **B0, lower={}, upper={key: 5})


def test_resolved_recipe_records_the_layer_and_every_override_wins():
    facts = DataFacts(images=1350, classes=10, median_side=28, sampled=256)
    rec, prov = resolve_recipe(None, model="efficientnetv2_b0", dataset="/data/folder", fitted=facts)
    assert list(prov) == ["defaults", "model", "data-fitted", "recipe:base"]
    assert prov["data-fitted"]["facts"] == {"images": 1350, "classes": 10, "median_side": 28, "sampled": 256}
    assert "1350 training images" in prov["data-fitted"]["source"]
    assert (rec.batch_size, rec.epochs, rec.eval_size) == (32, 24, 32)
    assert (rec.progressive.min_size, rec.progressive.max_size, rec.randaug_impl) == (32, 32, "torchvision")
    assert "filled" not in prov  # max_size came from the fitted layer

    rec, prov = resolve_recipe(
        None,
        model="efficientnetv2_b0",
        dataset="/data/folder",
        fitted=facts,
        overrides=["epochs=3", "batch_size=8", "eval_size=64"],
    )
    assert (rec.epochs, rec.batch_size, rec.eval_size) == (3, 8, 64)
    assert not {"epochs", "batch_size", "eval_size"} & set(prov["data-fitted"]["set"])

    # a named recipe's keys win too (finetune sets batch 512, 15 epochs, no RandAugment)
    rec, _ = resolve_recipe("finetune", model="efficientnetv2_b0", dataset="/data/folder", fitted=facts)
    assert (rec.batch_size, rec.epochs, rec.augment, rec.eval_size) == (512, 15, "none", 32)


def test_without_facts_nothing_changes():
    a, pa = resolve_recipe(None, model="efficientnetv2_b0", dataset="/data/folder")
    assert "data-fitted" not in pa
    assert (a.batch_size, a.epochs, a.progressive.max_size, a.eval_size) == (128, 10, 192, 224)


def test_median_side_reads_headers_of_a_sample(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(40, 30), (20, 50), (64, 64), (33, 31), (10, 100)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (w, h)).save(p)
        paths.append(str(p))
    assert median_short_side(paths) == (30, 5)  # shorter sides 30, 20, 64, 31, 10
    assert median_short_side(paths, limit=2) == (30, 2)  # images 0 and 2: 30, 64; the lower median


def test_facts_of_a_folder(tmp_path):
    for c, n in (("a", 12), ("b", 8)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.new("RGB", (36, 24 + i % 3)).save(tmp_path / c / f"{i}.png")
    bundle = load_source(str(tmp_path), val_fraction=0.25)
    facts = measure_facts(bundle)
    assert facts == DataFacts(images=15, classes=2, median_side=25, sampled=15)
