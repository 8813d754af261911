"""The building blocks: conv-BN-act, squeeze-excitation, MBConv and Fused-MBConv.

Module order inside each block follows the data flow (expand, depthwise, SE, project), which is
also the order torchvision and timm use; weight conversion relies on it.

Blocks take their norm and activation as factories (``norm_layer(channels)``, ``act_layer()``), so
technique variants (AdvProp's dual BN, smooth activations for adversarial training) are options of
one model, not forks: :func:`norm_factory` and :func:`act_factory` map the spec's names to them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from ..errors import UsageError
from ..runtime.replicas import local_generator

NormLayer = Callable[[int], nn.Module]  # channels -> norm module
ActLayer = Callable[[], nn.Module]


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


def make_conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    strided_dw = stride > 1 and groups > 1 and groups == in_ch == out_ch
    # For stride 1 and odd kernels TF 'SAME' is symmetric, so a plain conv is exact and faster.
    if padding == "tf_same" and stride > 1:
        cls = StridedDepthwiseConv2dSame if strided_dw else Conv2dSame
        return cls(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
    cls = StridedDepthwiseConv2d if strided_dw else nn.Conv2d
    return cls(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


# -- norm layers ------------------------------------------------------------------------------


class DualBatchNorm2d(nn.BatchNorm2d):
    """AdvProp's BN pair: main BN for clean images, ``aux`` BN for adversarial ones (``use_aux``).

    The main BN is this module itself, so its tensors keep a plain model's keys (``...bn.weight``)
    and the aux BN's sit beside them (``...bn.aux.weight``): plain weights load into the main path,
    and the main-BN model AdvProp deploys is the plain model (:func:`drop_aux_bn_state`).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.aux = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.use_aux = False  # run-time routing, not state: set with set_bn_mode / bn_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x) if self.use_aux else super().forward(x)


NORM_LAYERS: dict[str, type[nn.BatchNorm2d]] = {"bn": nn.BatchNorm2d, "dual_bn": DualBatchNorm2d}
BN_MODES = ("main", "aux")


def norm_factory(norm: str, eps: float, momentum: float) -> NormLayer:
    """``channels -> norm module`` for a spec's ``norm`` name ("bn" is exactly today's BatchNorm2d)."""
    if norm not in NORM_LAYERS:
        raise UsageError(f"norm: {norm!r} is not one of {', '.join(NORM_LAYERS)}")
    return partial(NORM_LAYERS[norm], eps=eps, momentum=momentum)


def _dual_bns(module: nn.Module) -> list[DualBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, DualBatchNorm2d)]


def set_bn_mode(module: nn.Module, mode: str) -> int:
    """Route every DualBatchNorm2d in ``module`` through its main or aux BN; returns how many.

    A module-level function so it also reaches models wrapped by DDP, EMA or torch.compile. "aux"
    on a model without dual BN raises: adversarial batches would silently update the main BN.
    """
    if mode not in BN_MODES:
        raise UsageError(f"bn mode: {mode!r} is not one of {', '.join(BN_MODES)}")
    bns = _dual_bns(module)
    if mode == "aux" and not bns:
        raise UsageError("bn mode 'aux': the model has no DualBatchNorm2d (build it with norm='dual_bn')")
    for m in bns:
        m.use_aux = mode == "aux"
    return len(bns)


@contextlib.contextmanager
def bn_mode(module: nn.Module, mode: str) -> Iterator[nn.Module]:
    """``with bn_mode(model, "aux"): loss = model(x_adv)`` -- restores each BN's previous mode."""
    previous = [(m, m.use_aux) for m in _dual_bns(module)]
    set_bn_mode(module, mode)
    try:
        yield module
    finally:
        for m, use_aux in previous:
            m.use_aux = use_aux


@torch.no_grad()
def init_aux_from_main(module: nn.Module) -> int:
    """Copy each main BN's parameters and running stats into its aux BN (AdvProp fine-tuning from
    plain weights starts both paths from the pretrained BN); returns how many."""
    bns = _dual_bns(module)
    for m in bns:
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            src, dst = getattr(m, name), getattr(m.aux, name)
            if src is not None and dst is not None:
                dst.copy_(src)
    return len(bns)


def add_aux_bn_state(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict made loadable (strictly) into dual-BN ``model``: each missing aux tensor
    is a copy of its main BN's. Aux tensors already in ``state`` are kept."""
    out = dict(state)
    for prefix, m in model.named_modules():
        if not isinstance(m, DualBatchNorm2d):
            continue
        at = f"{prefix}." if prefix else ""
        for name in m.aux.state_dict():
            main, aux = f"{at}{name}", f"{at}aux.{name}"
            if aux not in out and main in out:
                out[aux] = out[main].clone()
    return out


def drop_aux_bn_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dual-BN state dict without its aux BNs: the plain (main-BN) model's state dict."""
    return {k: v for k, v in state.items() if k.split(".")[-2:-1] != ["aux"]}


# -- activations -------------------------------------------------------------------------------

# SiLU is the official choice; the others are the smooth activations of smooth adversarial
# training (SAT) plus ReLU as its non-smooth baseline. In-place where PyTorch has it, as before.
ACT_LAYERS: dict[str, ActLayer] = {
    "silu": partial(nn.SiLU, inplace=True),
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "elu": partial(nn.ELU, inplace=True),
    "relu": partial(nn.ReLU, inplace=True),
}


def act_factory(act: str) -> ActLayer:
    if act not in ACT_LAYERS:
        raise UsageError(f"act: {act!r} is not one of {', '.join(ACT_LAYERS)}")
    return ACT_LAYERS[act]


# -- blocks ------------------------------------------------------------------------------------


class ConvBNAct(nn.Module):
    """conv -> norm -> act (or no activation for projection convs)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        *,
        norm_layer: NormLayer,
        act_layer: ActLayer = ACT_LAYERS["silu"],
        padding: str,
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_ch, out_ch, kernel, stride, groups, padding=padding)
        self.bn = norm_layer(out_ch)
        self.act = act_layer() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """SE with the network's activation inside and a sigmoid gate; reduced width from the *block input*."""

    def __init__(self, channels: int, reduced: int, act_layer: ActLayer = ACT_LAYERS["silu"]) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = act_layer()  # no parameters: the state dict is unchanged
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


class DropPath(StochasticDepth):
    """torchvision's StochasticDepth ("row" mode) that draws from the calling thread's generator when
    it has one: a replica's shard (runtime/replicas.py); otherwise torchvision's own, unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = local_generator()
        if g is None or not self.training or self.p == 0.0:
            return super().forward(x)
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device)
        noise.bernoulli_(survival, generator=g)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise


class Dropout(nn.Dropout):
    """nn.Dropout that draws from the calling thread's generator when it has one (as :class:`DropPath`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = local_generator()
        if g is None or not self.training or self.p == 0.0:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=g)
        return x * (mask.div_(keep) if keep > 0.0 else mask)


class _Residual(nn.Module):
    """Shared residual logic: identity shortcut with stochastic depth when shapes allow it."""

    has_skip: bool

    def _init_skip(self, in_ch: int, out_ch: int, stride: int, drop_path: float) -> None:
        self.has_skip = stride == 1 and in_ch == out_ch
        # Always a StochasticDepth on residual blocks (p = 0 is a no-op) so progressive learning can raise it.
        self.drop_path = DropPath(drop_path, "row") if self.has_skip else nn.Identity()

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drop_path(y) + x if self.has_skip else y


def _se_width(in_ch: int, se: float) -> int:
    return max(1, int(in_ch * se))


class MBConv(_Residual):
    """1x1 expand (skipped when expand == 1) -> kxk depthwise -> SE -> 1x1 project (no act)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        expand: int,
        kernel: int,
        stride: int,
        se: float,
        drop_path: float,
        norm_layer: NormLayer,
        act_layer: ActLayer = ACT_LAYERS["silu"],
        padding: str,
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        bn = dict(norm_layer=norm_layer, act_layer=act_layer, padding=padding)
        self.expand = ConvBNAct(in_ch, mid, 1, **bn) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid, **bn)
        self.se = SqueezeExcite(mid, _se_width(in_ch, se), act_layer) if se > 0 else nn.Identity()
        self.project = ConvBNAct(mid, out_ch, 1, act=False, **bn)
        self._init_skip(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.se(self.dw(self.expand(x)))))


class FusedMBConv(_Residual):
    """kxk conv (in -> in*e) -> [SE] -> 1x1 project; with e == 1 a single kxk conv + BN + act."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        expand: int,
        kernel: int,
        stride: int,
        se: float,
        drop_path: float,
        norm_layer: NormLayer,
        act_layer: ActLayer = ACT_LAYERS["silu"],
        padding: str,
    ) -> None:
        super().__init__()
        bn = dict(norm_layer=norm_layer, act_layer=act_layer, padding=padding)
        if expand == 1:
            self.expand = ConvBNAct(in_ch, out_ch, kernel, stride, **bn)
            self.se = SqueezeExcite(out_ch, _se_width(in_ch, se), act_layer) if se > 0 else nn.Identity()
            self.project = nn.Identity()
        else:
            mid = in_ch * expand
            self.expand = ConvBNAct(in_ch, mid, kernel, stride, **bn)
            self.se = SqueezeExcite(mid, _se_width(in_ch, se), act_layer) if se > 0 else nn.Identity()
            self.project = ConvBNAct(mid, out_ch, 1, act=False, **bn)
        self._init_skip(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.se(self.expand(x))))


BLOCKS: dict[str, type[_Residual]] = {"mbconv": MBConv, "fused": FusedMBConv}
