"""Per-layer precision under CPU bf16 autocast, and which CPUs get bf16 by default.

oneDNN's bf16 backward of strided depthwise convs is a slow path (benchmarks/layer_precision.py):
effv2 runs exactly those convs in fp32 under CPU bf16 autocast. These tests pin which convs leave
autocast, that the numbers are the fp32 conv's, and that nothing changes outside autocast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effv2.bench import machine
from effv2.models import create_model
from effv2.models.blocks import (
    Conv2dSame,
    StridedDepthwiseConv2d,
    StridedDepthwiseConv2dSame,
    cpu_bf16_autocast,
    make_conv,
)
from effv2.models.fuse import fold_bn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("padding", ["symmetric", "tf_same"])
def test_only_strided_depthwise_convs_get_the_fp32_class(padding) -> None:
    dw2 = make_conv(8, 8, 3, 2, groups=8, padding=padding)
    assert isinstance(dw2, StridedDepthwiseConv2dSame if padding == "tf_same" else StridedDepthwiseConv2d)
    assert type(make_conv(8, 8, 3, 1, groups=8, padding=padding)) is nn.Conv2d  # stride 1: stays bf16
    full2 = make_conv(8, 16, 3, 2, padding=padding)
    assert type(full2) is (Conv2dSame if padding == "tf_same" else nn.Conv2d)  # dense strided: stays bf16


def test_strided_depthwise_runs_fp32_under_cpu_bf16_autocast() -> None:
    torch.manual_seed(0)
    conv = make_conv(16, 16, 3, 2, groups=16)
    x = torch.randn(4, 16, 12, 12, requires_grad=True)
    ref = nn.functional.conv2d(x, conv.weight, None, 2, 1, 1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16_autocast()
        y = conv(x.to(torch.bfloat16))
        dense = make_conv(16, 16, 3, 1)(x)  # a normal conv keeps autocast's bf16
    assert not cpu_bf16_autocast()
    assert y.dtype == torch.float32 and dense.dtype == torch.bfloat16
    # the input was rounded to bf16 by the caller; the conv itself adds no bf16 rounding
    exact = nn.functional.conv2d(x.detach().to(torch.bfloat16).float(), conv.weight, None, 2, 1, 1, 16)
    torch.testing.assert_close(y, exact, rtol=1e-6, atol=1e-6)
    assert (y - ref).abs().max() < 0.05  # and it is the fp32 conv up to that input rounding
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


def test_fp16_autocast_and_no_autocast_are_untouched() -> None:
    conv = make_conv(8, 8, 3, 2, groups=8)
    x = torch.randn(2, 8, 8, 8)
    plain = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    plain.weight.data.copy_(conv.weight.data)
    assert torch.equal(conv(x), plain(x))
    with torch.autocast("cpu", dtype=torch.float16):
        assert not cpu_bf16_autocast()


def test_model_under_bf16_autocast_trains_and_folds() -> None:
    torch.manual_seed(0)
    m = create_model("efficientnetv2_b0", num_classes=5).to(memory_format=torch.channels_last)
    n_dw = sum(isinstance(x, StridedDepthwiseConv2d) for x in m.modules())
    assert n_dw == 2  # b0: the first blocks of its two strided MBConv stages
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    folded = fold_bn(m.eval())
    assert sum(isinstance(x, StridedDepthwiseConv2d) for x in folded.modules()) == 2  # the class survives folding
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "flags,expect",
    [
        (["avx512f", "avx512_bf16", "amx_bf16"], "bf16"),  # Intel Sapphire Rapids
        (["avx512f", "avx512_bf16"], "bf16"),  # AMD Zen 4, Intel Cooper Lake
        (["avx2", "fma", "avx512f"], "none"),  # no native bf16: emulated, slower than fp32
    ],
)
def test_cpu_bf16_default_follows_the_native_bf16_flags(monkeypatch, flags, expect) -> None:
    monkeypatch.setattr(machine, "cpu_info", lambda: {"flags": flags})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert machine.fast_defaults("cpu", batch_size=32)["amp"] == expect
    assert machine.fast_defaults("cpu", batch_size=1)["amp"] == "none"  # single images stay fp32
