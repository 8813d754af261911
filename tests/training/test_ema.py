"""The EMA: TF's warm-up rule min(decay, (1 + n) / (10 + n)) over parameters and BN statistics,
integer buffers following the model, no gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effv2.models import create_model
from effv2.training.ema import ema_decay_at, make_ema

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ema_decay_at_pinned():
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.3, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.3, 2) == 0.25
    assert ema_decay_at(0.3, 3) == 0.3  # 4/13 > 0.3: capped
    assert ema_decay_at(0.3, 1000) == 0.3
    assert ema_decay_at(0.9999, 1000) == pytest.approx(1001 / 1010)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


def _set(model: nn.Module, c: float, tracked: int) -> None:
    """Every floating tensor i (parameters, then buffers, in order) is filled with c + 100 i."""
    with torch.no_grad():
        floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
        for i, t in enumerate(floats):
            t.fill_(c + 100 * i)
        model[1].num_batches_tracked.fill_(tracked)


# The model's values c_t at update t and, by hand, the EMA after update t with decay 0.3
# (update 1 copies; update t >= 2 uses n = t - 1 updates so far, decay min(0.3, t / (9 + t))):
#   t=1: 1                                   (copy)
#   t=2: 2/11 * 1 + 9/11 * 12 = 10           (decay 2/11)
#   t=3: 1/4 * 10 + 3/4 * (-4) = -0.5        (decay 3/12)
#   t=4: 0.3 * (-0.5) + 0.7 * 2 = 1.25       (decay min(0.3, 4/13) = 0.3)
VALUES = [1.0, 12.0, -4.0, 2.0]
EXPECTED = [1.0, 10.0, -0.5, 1.25]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ema_follows_the_warm_up_rule_on_parameters_and_bn_stats(k):
    model = _net()
    ema = make_ema(model, 0.3)
    for t in range(k):
        _set(model, VALUES[t], tracked=7 * (t + 1))
        ema.update_parameters(model)
    assert int(ema.n_averaged) == k

    inner = ema.module
    floats = [(n, t) for n, t in [*inner.named_parameters(), *inner.named_buffers()] if t.is_floating_point()]
    # weights, biases, BN affine and BN running_mean / running_var all follow the same average
    names = [n for n, _ in floats]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "1.running_mean",
        "1.running_var",
    ]
    for i, (name, t) in enumerate(floats):
        torch.testing.assert_close(t, torch.full_like(t, EXPECTED[k - 1] + 100 * i), rtol=1e-6, atol=1e-5, msg=name)
    # integer buffers are not averaged: they are the model's
    assert inner[1].num_batches_tracked.dtype == torch.int64
    assert int(inner[1].num_batches_tracked) == 7 * k


def test_ema_is_a_separate_copy_without_gradients():
    model = _net()
    ema = make_ema(model, 0.9)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the model keeps training
    ema.update_parameters(model)
    for p, q in zip(ema.module.parameters(), model.parameters()):
        assert p.data_ptr() != q.data_ptr() and torch.equal(p, q)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)
    assert not any(torch.equal(p, q) for p, q in zip(ema.module.parameters(), model.parameters()))


def test_ema_of_an_effv2_model_tracks_its_bn_statistics():
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", num_classes=10, in_chans=1)
    ema = make_ema(model, 0.5)
    assert all(not p.requires_grad for p in ema.parameters())
    ema.update_parameters(model)  # a copy
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 16, 16))  # moves BN running stats and num_batches_tracked
    ema.update_parameters(model)  # decay min(0.5, 2/11) = 2/11
    m, e = model.state_dict(), ema.module.state_dict()
    bn = [k for k in m if k.endswith("running_mean")]
    assert bn
    for k, v in m.items():
        if v.is_floating_point():
            torch.testing.assert_close(e[k], before[k] * (2 / 11) + v * (9 / 11), rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(e[k], v), k
    assert any(not torch.equal(before[k], m[k]) for k in bn)
    assert all(int(e[k]) == 1 for k in e if k.endswith("num_batches_tracked"))
