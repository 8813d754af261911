"""The building blocks: conv-BN-act, squeeze-excitation, MBConv and Fused-MBConv.

Module order inside each block follows the data flow (expand, depthwise, SE, project), which is
also the order torchvision and timm use; weight conversion relies on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth


def tf_same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding for one spatial dim: (before, after). Asymmetric when stride 2."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding, computed from the input size at run time.

    Needed to reproduce checkpoints trained in TF (timm's ``tf_`` models): for stride 2 TF pads
    more at the bottom/right than at the top/left, which symmetric padding cannot express.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        ph = tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if any(ph + pw):
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def cpu_bf16_autocast() -> bool:
    """True inside ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class _Fp32UnderCpuBf16:
    """Mixin for depthwise convs with stride > 1: under CPU bf16 autocast they run in fp32.

    oneDNN's bf16 backward for strided depthwise convolutions is a slow path: on a 2-core AMD EPYC
    (AVX512-BF16), batch 32, channels-last, forward + backward of efficientnetv2_b0's two strided
    depthwise convs take 42 ms and 67 ms in bf16 against 2.1 ms and 2.9 ms in fp32, about a sixth
    of the whole training step; the forward costs the same in both (benchmarks/layer_precision.py).
    Every other conv in the network is 1.4-2x faster in bf16, so only these leave autocast. The
    output is fp32; the next conv casts it back to bf16 under autocast. CUDA and fp32 runs are
    unaffected.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and cpu_bf16_autocast():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


class StridedDepthwiseConv2d(_Fp32UnderCpuBf16, nn.Conv2d):
    """Depthwise conv with stride > 1 and symmetric padding (fp32 under CPU bf16 autocast)."""


class StridedDepthwiseConv2dSame(_Fp32UnderCpuBf16, Conv2dSame):
    """Depthwise conv with stride > 1 and TF 'SAME' padding (fp32 under CPU bf16 autocast)."""


def make_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
              bias: bool = False, padding: str = "symmetric") -> nn.Conv2d:
    strided_dw = stride > 1 and groups > 1 and groups == in_ch == out_ch
    # For stride 1 and odd kernels TF 'SAME' is symmetric, so a plain conv is exact and faster.
    if padding == "tf_same" and stride > 1:
        cls = StridedDepthwiseConv2dSame if strided_dw else Conv2dSame
        return cls(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
    cls = StridedDepthwiseConv2d if strided_dw else nn.Conv2d
    return cls(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class ConvBNAct(nn.Module):
    """conv -> BN -> SiLU (or no activation for projection convs)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, *, bn_eps: float, bn_momentum: float, padding: str) -> None:
        super().__init__()
        self.conv = make_conv(in_ch, out_ch, kernel, stride, groups, padding=padding)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """SE with SiLU inside and a sigmoid gate; the reduced width comes from the *block input*."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.expand(F.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


class _Residual(nn.Module):
    """Shared residual logic: identity shortcut with stochastic depth when shapes allow it."""

    has_skip: bool

    def _init_skip(self, in_ch: int, out_ch: int, stride: int, drop_path: float) -> None:
        self.has_skip = stride == 1 and in_ch == out_ch
        # Always a StochasticDepth on residual blocks (p = 0 is a no-op) so progressive learning can raise it.
        self.drop_path = StochasticDepth(drop_path, "row") if self.has_skip else nn.Identity()

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drop_path(y) + x if self.has_skip else y


def _se_width(in_ch: int, se: float) -> int:
    return max(1, int(in_ch * se))


class MBConv(_Residual):
    """1x1 expand (skipped when expand == 1) -> kxk depthwise -> SE -> 1x1 project (no act)."""

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, kernel: int, stride: int, se: float,
                 drop_path: float, bn_eps: float, bn_momentum: float, padding: str) -> None:
        super().__init__()
        mid = in_ch * expand
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        self.expand = ConvBNAct(in_ch, mid, 1, **bn) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid, **bn)
        self.se = SqueezeExcite(mid, _se_width(in_ch, se)) if se > 0 else nn.Identity()
        self.project = ConvBNAct(mid, out_ch, 1, act=False, **bn)
        self._init_skip(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.se(self.dw(self.expand(x)))))


class FusedMBConv(_Residual):
    """kxk conv (in -> in*e) -> [SE] -> 1x1 project; with e == 1 a single kxk conv + BN + SiLU."""

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, kernel: int, stride: int, se: float,
                 drop_path: float, bn_eps: float, bn_momentum: float, padding: str) -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        if expand == 1:
            self.expand = ConvBNAct(in_ch, out_ch, kernel, stride, **bn)
            self.se = SqueezeExcite(out_ch, _se_width(in_ch, se)) if se > 0 else nn.Identity()
            self.project = nn.Identity()
        else:
            mid = in_ch * expand
            self.expand = ConvBNAct(in_ch, mid, kernel, stride, **bn)
            self.se = SqueezeExcite(mid, _se_width(in_ch, se)) if se > 0 else nn.Identity()
            self.project = ConvBNAct(mid, out_ch, 1, act=False, **bn)
        self._init_skip(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.se(self.expand(x))))


BLOCKS: dict[str, type[_Residual]] = {"mbconv": MBConv, "fused": FusedMBConv}
