"""The learning-rate schedule (lr.py): pinned values from the official code and equality with torch's
CosineAnnealingLR/StepLR and timm's scheduler."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from effv2.config import Recipe, resolve_recipe
from effv2.training.lr import LRSchedule, lr_at, warmup_steps


def _imagenet(**kw) -> Recipe:
    rec, _ = resolve_recipe("imagenet-s", model="efficientnetv2_s", dataset="imagenet")
    return replace(rec, **kw)


def test_exponential_staircase_0_97_every_2_4_epochs():
    rec = _imagenet()
    peak = rec.scaled_lr
    assert peak == pytest.approx(0.256)
    spe = 10  # decay every 24 steps, warmup 50 steps
    assert warmup_steps(spe, rec) == 50
    lrs = [lr_at(s, steps_per_epoch=spe, recipe=rec, base_lr=peak) for s in range(3500)]
    assert lrs[0] == 0.0 and lrs[25] == pytest.approx(peak / 2) and lrs[49] == pytest.approx(peak * 49 / 50)
    # the decay clock starts at step 0 (official WarmupLearningRateSchedule): step 50 is 2 decays in
    assert lrs[50] == pytest.approx(peak * 0.97**2) and lrs[71] == pytest.approx(peak * 0.97**2)
    assert lrs[72] == pytest.approx(peak * 0.97**3) and lrs[3499] == pytest.approx(peak * 0.97**145)
    # reference: TF staircase == torch StepLR(step_size=24, gamma=0.97) after the warmup
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=24, gamma=0.97)
    ref = []
    for _ in range(3500):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[50:] == pytest.approx(ref[50:], rel=1e-9)


def test_exponential_fractional_decay_steps_hit_exact_boundaries():
    rec = _imagenet(warmup_epochs=0.0)
    spe = 3  # decay_steps = 3 * 2.4 = 7.199999999999999 in floating point
    assert lr_at(72, steps_per_epoch=spe, recipe=rec, base_lr=1.0) == pytest.approx(0.97**10)
    assert lr_at(71, steps_per_epoch=spe, recipe=rec, base_lr=1.0) == pytest.approx(0.97**9)
    floored = _imagenet(warmup_epochs=0.0, min_lr=0.008)  # floor at half the per-256 lr
    assert lr_at(10_000, steps_per_epoch=spe, recipe=floored, base_lr=1.0) == pytest.approx(0.5)


def test_cosine_matches_torch_and_timm():
    rec = Recipe(epochs=10, lr=0.4, lr_schedule="cosine", warmup_epochs=2, warmup_lr=0.04, min_lr=0.004)
    spe, peak = 7, 0.4 * 128 / 256
    w, total = 14, 70
    lrs = [lr_at(s, steps_per_epoch=spe, recipe=rec, base_lr=peak) for s in range(total + 1)]
    # endpoints and the linear warmup (warmup_lr / min_lr scale with the batch like lr)
    assert lrs[0] == pytest.approx(0.02) and lrs[w] == pytest.approx(peak) and lrs[total] == pytest.approx(0.002)
    steps = np.diff(lrs[: w + 1])
    assert steps == pytest.approx(np.full(w, (peak - 0.02) / w))
    # reference 1: torch CosineAnnealingLR over the steps after the warmup
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - w, eta_min=0.002)
    ref = []
    for _ in range(total - w + 1):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[w:] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # reference 2: timm's CosineLRScheduler with a warmup prefix, step-based
    timm_sched = pytest.importorskip("timm.scheduler")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    t = timm_sched.CosineLRScheduler(
        opt, t_initial=total - w, lr_min=0.002, warmup_t=w, warmup_lr_init=0.02, warmup_prefix=True, t_in_epochs=False
    )
    assert lrs == pytest.approx([t._get_lr(s)[0] for s in range(total + 1)], rel=1e-9)


def test_constant_and_step():
    const = Recipe(epochs=5, lr=0.1, lr_schedule="constant", warmup_epochs=1)
    assert [lr_at(s, steps_per_epoch=4, recipe=const, base_lr=0.1) for s in range(8)] == pytest.approx(
        [0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1]
    )
    step = Recipe(epochs=90, lr=0.1, lr_schedule="step", decay_rate=0.1, decay_epochs=30)
    got = [lr_at(e * 10, steps_per_epoch=10, recipe=step, base_lr=0.1) for e in (0, 29, 30, 59, 60, 89)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_at(299, steps_per_epoch=10, recipe=step, base_lr=0.1) == pytest.approx(0.1)  # epoch 29, last step


def test_lr_scales_with_base_lr():
    rec = Recipe(epochs=4, lr=0.1, warmup_epochs=1, warmup_lr=0.01, min_lr=0.02)
    a = [lr_at(s, steps_per_epoch=5, recipe=rec, base_lr=0.1) for s in range(21)]
    b = [lr_at(s, steps_per_epoch=5, recipe=rec, base_lr=0.4) for s in range(21)]
    assert b == pytest.approx([4 * x for x in a])
    assert a[0] == pytest.approx(0.01) and a[-1] == pytest.approx(0.02)


def test_schedule_built_once_is_the_pure_function():
    """The trainer builds one LRSchedule from its own keys; every step equals lr_at's value."""
    for kind in ("cosine", "exponential", "step", "constant"):
        rec = replace(_imagenet(), lr_schedule=kind, warmup_epochs=1.5, min_lr=1e-4, epochs=6)
        sched = LRSchedule.from_recipe(rec, steps_per_epoch=7, base_lr=rec.scaled_lr)
        assert sched.warmup_steps == 10 and sched.total_steps == 42
        for step in range(0, 50):
            assert sched(step) == lr_at(step, steps_per_epoch=7, recipe=rec, base_lr=rec.scaled_lr)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LRSchedule.from_recipe(_imagenet(), steps_per_epoch=0, base_lr=0.1)
