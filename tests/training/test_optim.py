"""Optimizers: the weight-decay rule, what build_optimizer builds, and RMSpropTF == timm's RMSpropTF."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from effv2.config import Recipe
from effv2.models import create_model
from effv2.training.optim import RMSpropTF, build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("efficientnetv2_pico", num_classes=10, in_chans=1)


def test_weight_decay_only_on_conv_and_linear_weights():
    model = _model()
    decay, no_decay = param_groups(model, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    ids_decay = {id(p) for p in decay["params"]}
    ids_no = {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_no and len(ids_decay | ids_no) == len(list(model.parameters()))
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert id(mod.weight) in ids_decay, name
            if mod.bias is not None:
                assert id(mod.bias) in ids_no, name  # e.g. SE convs and the classifier bias
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            assert id(mod.weight) in ids_no and id(mod.bias) in ids_no, name
    frozen = _model()
    frozen.requires_grad_(False)
    assert [len(g["params"]) for g in param_groups(frozen, 0.1)] == [0, 0]


@pytest.mark.parametrize(
    "opt, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("rmsprop_tf", RMSpropTF)]
)
def test_build_optimizer(opt, cls):
    rec = Recipe(
        optimizer=opt,
        lr=0.2,
        batch_size=512,
        weight_decay=3e-5,
        momentum=0.8,
        nesterov=opt == "sgd",
        betas=(0.8, 0.95),
        rmsprop_decay=0.85,
    )
    o = build_optimizer(_model(), rec)
    assert type(o) is cls and len(o.param_groups) == 2
    g0, g1 = o.param_groups
    assert g0["lr"] == g1["lr"] == pytest.approx(0.4)  # lr per 256 images * 512 / 256
    assert (g0["weight_decay"], g1["weight_decay"]) == (3e-5, 0.0)
    if opt == "sgd":
        assert g0["momentum"] == 0.8 and g0["nesterov"] is True
    elif opt == "adamw":
        assert g0["betas"] == (0.8, 0.95) and g0["eps"] == 1e-8
    else:
        assert (g0["alpha"], g0["eps"], g0["momentum"]) == (0.85, 1e-3, 0.8)
    assert build_optimizer(_model(), rec, lr=0.01).param_groups[0]["lr"] == 0.01


def test_one_rmsprop_tf_step_by_hand():
    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    w.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    # ms = 1 + 0.1 * (0.25 - 1) = 0.925 (it starts at ONE); buf = lr * g / sqrt(ms + eps); w -= buf
    assert w.item() == pytest.approx(1 - 0.1 * 0.5 / math.sqrt(0.925 + 1e-3), abs=1e-15)
    assert w.item() == pytest.approx(0.9480405541, abs=1e-10)
    # torch's RMSprop (ms from zero, eps outside, lr outside momentum) takes a 6x larger first step
    v = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    torch_opt = torch.optim.RMSprop([v], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    v.grad = torch.tensor([0.5], dtype=torch.float64)
    torch_opt.step()
    assert 1 - v.item() == pytest.approx(0.1 * 0.5 / (math.sqrt(0.025) + 1e-3))


def _trajectory(make_opt, steps: int = 20) -> list[list[torch.Tensor]]:
    model = _model()
    opt = make_opt(model)
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(8, 1, 16, 16, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("wd, momentum", [(0.0, 0.9), (1e-2, 0.9), (1e-2, 0.0)])
def test_rmsprop_tf_equals_timm(wd, momentum):
    timm_optim = pytest.importorskip("timm.optim")
    lr, kw = 0.01, dict(alpha=0.9, eps=1e-3, momentum=momentum)

    def ref(model):  # timm defaults: lr_in_momentum=True, decoupled_decay=False (L2 on the gradient)
        return timm_optim.RMSpropTF(param_groups(model, wd), lr=lr, **kw)

    expected = _trajectory(ref)
    for foreach in (False, True):
        got = _trajectory(lambda model, fe=foreach: RMSpropTF(param_groups(model, wd), lr=lr, foreach=fe, **kw))
        for step, (a, b) in enumerate(zip(got, expected)):
            diff = max((x - y).abs().max().item() for x, y in zip(a, b))
            assert diff <= 1e-6, (foreach, step, diff)
    # weight decay changed the trajectory, so the comparison above did exercise it
    if wd:
        plain = _trajectory(lambda model: RMSpropTF(param_groups(model, 0.0), lr=lr, **kw))
        assert max((x - y).abs().max().item() for x, y in zip(plain[-1], expected[-1])) > 1e-5


def test_rmsprop_tf_state_dict_resumes_exactly():
    model = _model()
    opt = RMSpropTF(param_groups(model, 1e-5), lr=0.01)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))

    def step(m, o):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()

    step(model, opt)
    twin = copy.deepcopy(model)
    twin_opt = RMSpropTF(param_groups(twin, 1e-5), lr=0.01)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    step(model, opt)
    step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert opt.state_dict()["state"][0]["step"].item() == 2
