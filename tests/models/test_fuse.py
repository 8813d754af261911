"""BN folding (effv2.models.fuse): outputs unchanged in fp32, every conv -> BN pair folded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effv2.models import create_model
from effv2.models.fuse import count_bn, fold_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong fold cannot hide behind 0/1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def _effv2(name: str, **kw):
    return lambda: create_model(name, **kw)


def _timm(name: str):
    def build():
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False)

    return build


def _torchvision(name: str):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


CASES = {
    "pico": (_effv2("efficientnetv2_pico"), 3, 32),
    "mini-1ch": (_effv2("efficientnetv2_mini", in_chans=1, num_classes=10), 1, 28),
    "b0": (_effv2("efficientnetv2_b0"), 3, 64),
    "b0-tf_same": (_effv2("efficientnetv2_b0", padding="tf_same"), 3, 65),  # odd size: asymmetric pads
    "timm-tf_b0": (_timm("tf_efficientnetv2_b0"), 3, 64),
    "torchvision-s": (_torchvision("efficientnet_v2_s"), 3, 64),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_fold_bn_keeps_outputs(case: str) -> None:
    build, in_chans, size = CASES[case]
    torch.manual_seed(0)
    model = _randomize_bn(build())
    n_bn = count_bn(model)
    x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(1))
    expected = model(x)
    folded = fold_bn(model)
    assert folded.folded_bn == n_bn  # every BN in these models follows a conv
    assert count_bn(folded) == 0
    assert count_bn(model) == n_bn  # the original is untouched
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)


def test_fold_bn_inplace_and_eval() -> None:
    model = create_model("efficientnetv2_pico").train()
    out = fold_bn(model, inplace=True)
    assert out is model and not model.training and count_bn(model) == 0
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)  # folded convs gained a bias; SE convs had one


def test_fold_bn_leaves_unpaired_modules() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(6))
    folded = fold_bn(seq)
    assert folded.folded_bn == 0  # BN not right after a conv, or of another width: not folded
    assert count_bn(folded) == 2


@torch.no_grad()
def test_folded_model_runs_channels_last_bf16() -> None:
    model = fold_bn(_randomize_bn(create_model("efficientnetv2_pico", num_classes=7)))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (2, 7)
