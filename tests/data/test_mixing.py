"""MixUp and CutMix as google/automl efficientnetv2/datasets.py draws them (mixup, cutmix_mask, mixing).

Lines of datasets.py at google/automl 6a54c87: cutmix_mask 191-219 (one box per example, drawn in
dataset_parser 324-326), cutmix 221-242, mixup 244-270 (Beta(a, a) per sample and max(w, 1 - w),
lines 261-262), mixing 272-301 (both on: first batch_size // 2 MixUp, the rest CutMix, 287-292).
"""

from __future__ import annotations

import math

import pytest
import torch

from effv2.data import TensorImageSet, train_batches
from effv2.data.augment import box_masks, cutmix_boxes, mix_batch, mixup_weights


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _folded_beta_mean(alpha):
    """E[max(L, 1 - L)] for L ~ Beta(a, a), in closed form: 1/2 + 4^-a / (a B(a, a)).

    (E|L - 1/2| = 2 int_{1/2}^1 (x - 1/2) (x (1 - x))^(a-1) dx / B(a, a); with u = x (1 - x) the
    integral is int_0^{1/4} u^(a-1) du / 2 = 4^-a / (2a).)
    """
    log_b = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)
    return 0.5 + math.exp(-alpha * math.log(4.0) - math.log(alpha) - log_b)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0])
def test_mixup_lambda_is_folded_beta(alpha):  # datasets.py mixup: Beta(a, a).sample, max(w, 1 - w)
    lam = mixup_weights(20_000, alpha, _gen())
    assert (lam >= 0.5).all() and (lam <= 1).all()
    # std of the mean over 20k draws is < 0.002; Beta(1, 1) folded is U(0.5, 1), mean 0.75
    assert float(lam.mean()) == pytest.approx(_folded_beta_mean(alpha), abs=0.005)
    # and its spread: max = 1/2 + D, D = |L - 1/2|, so E[max^2] = 1/4 + E[D] + Var(L), Var(L) = 1 / (4 (2a + 1))
    e_abs = _folded_beta_mean(alpha) - 0.5
    var = 0.25 + e_abs + 1 / (4 * (2 * alpha + 1)) - _folded_beta_mean(alpha) ** 2
    assert float(lam.double().var()) == pytest.approx(var, rel=0.05)
    assert len(lam.unique()) > 15_000  # one lambda per sample (alpha 0.2 piles many at 1.0 in float32)


def test_mixup_targets_and_images_use_each_samples_lambda():
    B, K = 64, 10
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 1, 4, 4).contiguous()
    y = torch.arange(B) % K
    xm, ym = mix_batch(x, y, mixup_alpha=0.4, cutmix_alpha=0, num_classes=K, gen=_gen(1))
    assert torch.allclose(ym.sum(1), torch.ones(B))
    lam = mixup_weights(B, 0.4, _gen(1))  # the same draw
    partner = torch.arange(B).flip(0)
    want = lam * torch.arange(B) + (1 - lam) * partner
    assert torch.allclose(xm[:, 0, 0, 0], want, atol=1e-4)
    own = ym[torch.arange(B), y]
    same = y == y[partner]
    assert torch.allclose(own[~same], lam[~same], atol=1e-6)
    assert len(lam.unique()) == B


def test_cutmix_boxes_differ_per_sample_and_weight_is_the_box_fraction():
    B, K, H, W = 64, 10, 32, 24
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    y = torch.arange(B) % K
    xm, ym = mix_batch(x, y, mixup_alpha=0, cutmix_alpha=1.0, num_classes=K, gen=_gen(2))
    boxes = cutmix_boxes(B, H, W, 1.0, _gen(2))
    assert len({tuple(b) for b in boxes.tolist()}) > B // 2
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= W) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= H)).all()
    partner = torch.arange(B).flip(0).float()
    pasted = xm[:, 0] == partner.view(B, 1, 1)  # B even: no sample is its own mirror
    frac = pasted.flatten(1).float().mean(1)
    assert torch.equal(box_masks(boxes, H, W)[:, 0], pasted)
    assert torch.allclose(ym.sum(1), torch.ones(B))
    # weight of the partner's label = pasted pixel fraction (rows whose partner has another label)
    diff = y != y.flip(0)
    assert torch.allclose(ym[torch.arange(B), y.flip(0)][diff], frac[diff], atol=1e-6)
    assert len(frac.unique()) > B // 2


def test_cutmix_box_area_follows_one_minus_beta():  # datasets.py cutmix_mask: ratio sqrt(1 - area)
    boxes = cutmix_boxes(20_000, 224, 224, 1.0, _gen(3))
    frac = box_masks(boxes[:2000], 224, 224).flatten(1).float().mean(1)
    # centre uniform, side sqrt(1 - U) * 224, clipped: mean pasted fraction well inside (0, 0.5)
    assert 0.2 < float(frac.mean()) < 0.45
    w = boxes[:, 2] - boxes[:, 0]
    assert (w >= 0).all() and (w <= 224).all()


def test_both_on_first_half_mixup_second_half_cutmix():  # datasets.py mixing: bs = batch_size // 2
    B, K = 32, 10
    x = torch.rand(B, 3, 16, 16, generator=_gen(4)) * 255
    y = torch.arange(B) % K
    xm, ym = mix_batch(x, y, mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=K, gen=_gen(5))
    assert torch.allclose(ym.sum(1), torch.ones(B))
    h = B // 2
    # the cutmix half keeps every pixel of either itself or its mirror within the half
    second, mirror = x[h:], x[h:].flip(0)
    assert ((xm[h:] == second) | (xm[h:] == mirror)).all()
    # the mixup half: every own weight >= 0.5 (mixup pairs i with h - 1 - i within the half)
    own = ym[torch.arange(h), y[:h]]
    assert (own >= 0.5 - 1e-6).all()
    # deterministic for the generator
    xm2, ym2 = mix_batch(x, y, mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=K, gen=_gen(5))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)


def test_loader_soft_targets_sum_to_one_and_are_seeded():
    g = _gen(0)
    ds = TensorImageSet(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (64,), generator=g))  # fmt: skip
    kw = dict(batch_size=32, image_size=28, randaug_magnitude=5, mixup_alpha=0.2, cutmix_alpha=1.0,
              num_classes=10, seed=1, epoch=0)  # fmt: skip
    a, b = list(train_batches(ds, **kw)), list(train_batches(ds, **kw))
    for p, q in zip(a, b, strict=True):
        assert torch.allclose(p.y.sum(1), torch.ones(32)) and torch.equal(p.y, q.y) and torch.equal(p.x, q.x)


def test_folded_uniform_mean_is_three_quarters():
    assert float(mixup_weights(20_000, 1.0, _gen(9)).mean()) == pytest.approx(0.75, abs=0.005)
