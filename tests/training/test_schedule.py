"""Progressive schedule (schedule.py): pinned values from the paper / official code, and equality with
reference implementations (np.linspace as the official code uses it, the code's size formula verbatim).
The lr schedule's tests are beside it in test_lr.py."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2.config import ProgressiveConfig, resolve_recipe
from effv2.models import get_card
from effv2.training.schedule import all_stages, stage_bounds, stage_of_epoch, stage_params

# Paper Table 6 (min -> max) and the official code (effnetv2_configs.py: randaug, mixup finals).
PAPER = {  # model: (size max, randaug max, mixup max, dropout max)
    "s": (300, 15, 0.0, 0.3),
    "m": (380, 20, 0.2, 0.4),
    "l": (380, 25, 0.4, 0.5),
}
CODE = {"s": (10, 0.0), "m": (15, 0.2), "l": (20, 0.5)}  # randaug final, mixup (= cutmix) final


def _stages(recipe_name: str, model: str):
    rec, _ = resolve_recipe(recipe_name, model=model, dataset="imagenet")
    card = get_card(model)
    return rec, all_stages(rec.progressive, train_size=card.train_size, dropout=card.dropout, drop_path=card.drop_path)


def _col(stages, attr):
    return [getattr(s, attr) for s in stages]


# --------------------------------------------------------------------------- paper variant
@pytest.mark.parametrize("v", ["s", "m", "l"])
def test_paper_recipes_follow_table_6(v):
    rec, stages = _stages(f"imagenet-{v}", f"efficientnetv2_{v}")
    size_max, ra_max, mix_max, drop_max = PAPER[v]
    assert rec.progressive.variant == "paper" and len(stages) == 4
    # reference: value_i = min + (max - min) * i / (M - 1) == np.linspace(min, max, M)
    assert _col(stages, "image_size") == [int(math.floor(x + 0.5)) for x in np.linspace(128, size_max, 4)]
    assert _col(stages, "randaug_magnitude") == pytest.approx(np.linspace(5, ra_max, 4), abs=1e-9)
    assert _col(stages, "mixup_alpha") == pytest.approx(np.linspace(0, mix_max, 4), abs=1e-9)
    assert _col(stages, "cutmix_alpha") == [0, 0, 0, 0]
    assert _col(stages, "dropout") == pytest.approx(np.linspace(0.1, drop_max, 4), abs=1e-9)
    assert _col(stages, "drop_path") == [0.2] * 4  # the model's stochastic depth, no schedule


def test_paper_values_pinned():
    _, s = _stages("imagenet-s", "efficientnetv2_s")
    assert _col(s, "image_size") == [128, 185, 243, 300]  # 185.33 -> 185, 242.67 -> 243
    assert _col(s, "randaug_magnitude") == [5.0, 8.3333333333, 11.6666666667, 15.0]
    assert _col(s, "dropout") == [0.1, 0.1666666667, 0.2333333333, 0.3]
    _, m = _stages("imagenet-m", "efficientnetv2_m")
    assert _col(m, "image_size") == [128, 212, 296, 380]
    assert _col(m, "randaug_magnitude") == [5.0, 10.0, 15.0, 20.0]
    assert _col(m, "mixup_alpha") == [0.0, 0.0666666667, 0.1333333333, 0.2]
    assert _col(m, "dropout") == [0.1, 0.2, 0.3, 0.4]
    _, lg = _stages("imagenet-l", "efficientnetv2_l")
    assert _col(lg, "image_size") == [128, 212, 296, 380]
    assert _col(lg, "mixup_alpha") == [0.0, 0.1333333333, 0.2666666667, 0.4]
    assert _col(lg, "dropout") == [0.1, 0.2333333333, 0.3666666667, 0.5]


# --------------------------------------------------------------------------- code variant
@pytest.mark.parametrize("v", ["s", "m", "l"])
def test_code_recipes_follow_released_code(v):
    model = f"efficientnetv2_{v}"
    card = get_card(model)
    rec, stages = _stages(f"imagenet-{v}-code", model)
    ra_final, mix_final = CODE[v]
    assert rec.progressive.variant == "code"
    # main_tf2.py verbatim: ratio = (stage + 1) / total; int(ibase + (train_size - ibase) * ratio)
    assert _col(stages, "image_size") == [int(128 + (card.train_size - 128) * float(i + 1) / 4.0) for i in range(4)]
    assert _col(stages, "randaug_magnitude") == pytest.approx(np.linspace(5, ra_final, 4), abs=1e-9)
    assert _col(stages, "mixup_alpha") == pytest.approx(np.linspace(0, mix_final, 4), abs=1e-9)
    assert _col(stages, "cutmix_alpha") == _col(stages, "mixup_alpha")
    assert _col(stages, "dropout") == [card.dropout] * 4  # the code never applies its dropout schedule


def test_code_values_pinned():
    _, s = _stages("imagenet-s-code", "efficientnetv2_s")
    assert _col(s, "image_size") == [171, 214, 257, 300]
    assert _col(s, "dropout") == [0.2] * 4
    _, m = _stages("imagenet-m-code", "efficientnetv2_m")
    assert _col(m, "image_size") == [192, 256, 320, 384]
    assert _col(m, "randaug_magnitude") == [5.0, 8.3333333333, 11.6666666667, 15.0]
    _, lg = _stages("imagenet-l-code", "efficientnetv2_l")
    assert _col(lg, "randaug_magnitude") == [5.0, 10.0, 15.0, 20.0]
    assert _col(lg, "mixup_alpha") == [0.0, 0.1666666667, 0.3333333333, 0.5]
    assert _col(lg, "dropout") == [0.4] * 4


def test_fmnist_cpu_stages():
    rec, _ = resolve_recipe(None, model="efficientnetv2_mini", dataset="fashion-mnist")
    stages = all_stages(rec.progressive, train_size=28, dropout=0.1, drop_path=0.05)
    assert _col(stages, "image_size") == [24, 28]
    assert _col(stages, "randaug_magnitude") == [0.0, 2.0]
    assert _col(stages, "mixup_alpha") == [0.0, 0.0]
    assert _col(stages, "dropout") == [0.05, 0.1]
    assert _col(stages, "drop_path") == [0.05] * 2


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("variant", ["paper", "code"])
def test_disabled_is_one_stage_at_max(variant):
    cfg = ProgressiveConfig(
        enabled=False,
        variant=variant,
        min_size=64,
        max_size=None,
        randaug_max=9,
        mixup_max=0.3,
        cutmix_max=0.1,
        dropout_max=None,
    )
    (sp,) = all_stages(cfg, train_size=200, dropout=0.25, drop_path=0.1)
    assert (sp.index, sp.n_stages, sp.image_size, sp.randaug_magnitude, sp.mixup_alpha, sp.cutmix_alpha) == (
        0,
        1,
        200,
        9,
        0.3,
        0.1,
    )
    assert sp.dropout == 0.25 and sp.drop_path == 0.1
    assert stage_of_epoch(7, 10, 1) == 0


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_single_stage_does_not_divide_by_zero(variant):
    cfg = ProgressiveConfig(n_stages=1, variant=variant, max_size=96, min_size=32, dropout_max=0.3)
    (sp,) = all_stages(cfg, train_size=0, dropout=0.0, drop_path=0.0)
    assert sp.image_size == 96 and sp.randaug_magnitude == 15 and sp.dropout == 0.3


def test_drop_path_schedule_only_when_min_set():
    cfg = ProgressiveConfig(n_stages=3, max_size=64, min_size=32, drop_path_min=0.0, drop_path_max=0.2)
    assert _col(all_stages(cfg, train_size=64, dropout=0.2, drop_path=0.5), "drop_path") == [0.0, 0.1, 0.2]
    cfg = replace(cfg, drop_path_min=None, drop_path_max=None)
    assert _col(all_stages(cfg, train_size=64, dropout=0.2, drop_path=0.5), "drop_path") == [0.5] * 3


def test_max_size_from_eval_and_bad_stage():
    cfg = ProgressiveConfig(enabled=False, max_size_from="eval")
    assert stage_params(0, cfg, train_size=300, dropout=0.2, drop_path=0.2, eval_size=384).image_size == 384
    with pytest.raises(ValueError, match="eval_size"):
        stage_params(0, cfg, train_size=300, dropout=0.2, drop_path=0.2)
    with pytest.raises(ValueError, match="stage"):
        stage_params(4, ProgressiveConfig(), train_size=300, dropout=0.2, drop_path=0.2)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 8), lo=st.integers(8, 200), extra=st.integers(0, 300), variant=st.sampled_from(["paper", "code"])
)
def test_sizes_grow_and_end_at_max(m, lo, extra, variant):
    cfg = ProgressiveConfig(n_stages=m, variant=variant, min_size=lo, max_size=lo + extra)
    sizes = _col(all_stages(cfg, train_size=0, dropout=0.2, drop_path=0.0), "image_size")
    assert sizes == sorted(sizes) and sizes[-1] == lo + extra and all(lo <= s <= lo + extra for s in sizes)
    if variant == "paper":
        assert sizes[0] == (lo if m > 1 else lo + extra)


# --------------------------------------------------------------------------- stage bounds
def test_stage_bounds_pinned():
    assert stage_bounds(10, 4) == [(0, 2), (2, 4), (4, 7), (7, 10)]  # later stages take the extra epochs
    assert [b - a for a, b in stage_bounds(350, 4)] == [87, 87, 88, 88]
    assert stage_bounds(2, 4) == [(0, 0), (0, 0), (0, 1), (1, 2)]  # too few epochs: the first stages are skipped
    assert stage_bounds(5, 1) == [(0, 5)]
    assert [stage_of_epoch(e, 10, 4) for e in range(12)] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert [stage_of_epoch(e, 12, 3) for e in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(ValueError):
        stage_bounds(0, 4)
    with pytest.raises(ValueError):
        stage_of_epoch(-1, 10, 4)


@settings(max_examples=100, deadline=None)
@given(epochs=st.integers(1, 400), m=st.integers(1, 10))
def test_stage_bounds_properties(epochs, m):
    bounds = stage_bounds(epochs, m)
    lengths = [b - a for a, b in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == epochs and sum(lengths) == epochs
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(m - 1))
    assert lengths == sorted(lengths) and max(lengths) - min(lengths) <= 1
    for e in range(epochs):
        i = stage_of_epoch(e, epochs, m)
        assert bounds[i][0] <= e < bounds[i][1]
