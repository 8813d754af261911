"""Inference-time BatchNorm folding: conv -> BN (eval) becomes one conv with a bias.

In eval mode BN is an affine map per channel, y = (x - mean) / sqrt(var + eps) * gamma + beta,
so it can be folded into the preceding conv's weight and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). The BN module is replaced by what it did after
normalising: nothing for plain ``nn.BatchNorm2d``, the activation for timm's ``BatchNormAct2d``.

Pairs are found inside each parent module as *consecutive children* (a Conv2d immediately followed
by a BatchNorm2d of the same width). That is how effv2's ``ConvBNAct``, torchvision's
``Conv2dNormActivation`` (an ``nn.Sequential``) and timm's EfficientNet blocks (``conv_pw, bn1,
conv_dw, bn2, ...``) are written, and in all of them children are registered in data-flow order.
The tests check outputs are unchanged (within 1e-5, fp32) for effv2 with both paddings, timm and
torchvision models.

A folded model is for inference only: it has no BN left to train or to update. A dual-BN model
(AdvProp) folds its main BNs, the ones it is evaluated with; its aux BNs are dropped, and a model
switched to aux mode is refused rather than silently folded with the other statistics.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import UsageError
from .blocks import DualBatchNorm2d


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What takes the BN's place after folding, or None when the BN type is not understood."""
    if type(bn) in (nn.BatchNorm2d, DualBatchNorm2d):  # a DualBatchNorm2d's own tensors are its main BN
        return nn.Identity()
    # timm's BatchNormAct2d: BN, then drop (Identity in practice), then act, in one module.
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act"):
        drop = getattr(bn, "drop", None)
        return nn.Sequential(drop, bn.act) if isinstance(drop, nn.Module) else bn.act
    return None


def _fold_children(parent: nn.Module) -> int:
    folded = 0
    names = list(parent._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = parent._modules[first], parent._modules[second]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        if conv.out_channels != bn.num_features or not bn.track_running_stats or bn.running_mean is None:
            continue
        replacement = _bn_replacement(bn)
        if replacement is None:
            continue
        # fuse_conv_bn_eval deep-copies the conv, so subclasses (TF-'same' Conv2dSame) keep their forward.
        parent._modules[first] = fuse_conv_bn_eval(conv, bn)
        parent._modules[second] = replacement
        folded += 1
    return folded


def fold_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` (a deep copy unless ``inplace``) in eval mode with every conv -> BN pair folded.

    The count of folded pairs is stored on the result as ``model.folded_bn`` (int).
    """
    if any(isinstance(m, DualBatchNorm2d) and m.use_aux for m in model.modules()):
        raise UsageError(
            "fold_bn: the model is in aux BN mode; fold_bn folds the main BNs, so switch "
            "back first (model.set_bn_mode('main'))"
        )
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    folded = 0
    for module in list(model.modules()):
        folded += _fold_children(module)
    model.folded_bn = folded  # type: ignore[assignment]
    return model


def count_bn(model: nn.Module) -> int:
    """BatchNorm2d modules left in ``model`` (0 after folding an effv2 model)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
