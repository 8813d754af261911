"""Weights from torchvision and timm EfficientNetV2 models into effv2 models, with output parity.

The three implementations hold the same tensors under different names. Rather than a table of
renamings, weights are paired by position: the Conv2d / BatchNorm2d / Linear leaf modules of each
model, in registration order, which in all three is the data-flow order of the forward pass
(stem; per block expand, depthwise, SE reduce, SE expand, project; head conv; classifier). The
tests check that claim with forward hooks (:func:`forward_leaf_order`) on every implementation.
Every pair must agree on type and geometry (channels, kernel, stride, groups, bias), every tensor
of both models must be covered, and the first disagreement is reported by name.

What a conversion keeps from the source besides the tensors: the BatchNorm eps (timm's non-``tf_``
models use PyTorch's 1e-5, the others 1e-3), the padding (``tf_`` models use TF 'SAME'), the number
of classes and input channels (read from the classifier and stem), and the preprocessing the source
weights were trained with: mean, std, interpolation and eval size go into the model card, and the
whole eval preprocessing (:func:`source_data_config`: size, crop fraction, crop mode, interpolation,
mean, std, from timm's ``pretrained_cfg`` or torchvision's ``weights.transforms()``) is set as
``model.data_config``, which ``save_weights`` records in the file's metadata, so eval, predict,
export and fine-tuning preprocess as the source library does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UsageError
from ..inference.data_config import DataConfig
from ..io.weights import check_compatible
from .efficientnetv2 import EfficientNetV2
from .registry import get_card

Source = Literal["torchvision", "timm"]
SOURCES: tuple[str, ...] = ("torchvision", "timm")
LEAF_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class ConversionError(UsageError):
    """Weights that cannot be converted: unsupported source, missing dependency, mismatched layers."""


@dataclass(frozen=True, kw_only=True)
class SourceArch:
    """One supported source architecture and the effv2 model it converts to."""

    source: str  # "torchvision" or "timm"
    name: str  # the source's own name, e.g. "tf_efficientnetv2_b0", "efficientnet_v2_s"
    model: str  # effv2 registry name
    padding: str  # "symmetric" or "tf_same" (TF-ported checkpoints)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {', '.join(SOURCES)}")
        get_card(self.model)  # raises for an unregistered target


def _table() -> dict[tuple[str, str], SourceArch]:
    rows = [
        SourceArch(source="torchvision", name=f"efficientnet_v2_{v}", model=f"efficientnetv2_{v}", padding="symmetric")
        for v in ("s", "m", "l")
    ]
    rows += [
        SourceArch(source="timm", name=f"efficientnetv2_{v}", model=f"efficientnetv2_{v}", padding="symmetric")
        for v in ("s", "m", "l", "xl")
    ]
    rows += [
        SourceArch(source="timm", name=f"tf_efficientnetv2_{v}", model=f"efficientnetv2_{v}", padding="tf_same")
        for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")
    ]
    return {(r.source, r.name): r for r in rows}


SUPPORTED: dict[tuple[str, str], SourceArch] = _table()

# Where the stem conv and the classifier live in each source's state_dict (for num_classes / in_chans).
_STEM_KEY = {"torchvision": "features.0.0.weight", "timm": "conv_stem.weight"}
_HEAD_KEY = {"torchvision": "classifier.1.weight", "timm": "classifier.weight"}


def supported_names(source: str) -> list[str]:
    return [name for (src, name) in SUPPORTED if src == source]


def resolve_source(source: str, name: str) -> SourceArch:
    """The :class:`SourceArch` for ``(source, name)``; timm pretrained tags (``.in21k``) are ignored."""
    if source not in SOURCES:
        raise ConversionError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    base = name.split(".", 1)[0] if source == "timm" else name
    if (source, base) in SUPPORTED:
        return SUPPORTED[(source, base)]
    why = ""
    if "_rw_" in base:
        why = " (timm's efficientnetv2_rw_* are Ross Wightman's pre-release variants, a different architecture)"
    raise ConversionError(f"{source} model {name!r} is not supported{why}; valid: {', '.join(supported_names(source))}")


# -- pairing leaf modules ----------------------------------------------------------------------


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d / BatchNorm2d / Linear modules of ``model`` in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LEAF_TYPES)]


def forward_leaf_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the leaf modules in the order a forward pass on ``x`` calls them (eval mode).

    Used by the tests to prove that registration order (what :func:`leaf_pairs` walks) is the
    data-flow order in every implementation.
    """
    order: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=n: order.append(name)) for n, m in leaf_modules(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def layer_signature(m: nn.Module) -> tuple[Any, ...]:
    """What must agree between paired modules: the layer type and its geometry, never padding."""
    if isinstance(m, nn.Conv2d):
        return (
            "Conv2d",
            m.in_channels,
            m.out_channels,
            tuple(m.kernel_size),
            tuple(m.stride),
            tuple(m.dilation),
            m.groups,
            m.bias is not None,
        )
    if isinstance(m, nn.BatchNorm2d):
        return ("BatchNorm2d", m.num_features, m.affine, m.track_running_stats)
    if isinstance(m, nn.Linear):
        return ("Linear", m.in_features, m.out_features, m.bias is not None)
    raise TypeError(f"not a leaf module: {type(m).__name__}")


def _show(sig: tuple[Any, ...]) -> str:
    kind = sig[0]
    if kind == "Conv2d":
        _, cin, cout, k, s, d, g, b = sig
        dil = f", dilation {d[0]}" if d != (1, 1) else ""
        return f"Conv2d({cin}->{cout}, kernel {k[0]}x{k[1]}, stride {s[0]}{dil}, groups {g}, bias {b})"
    if kind == "BatchNorm2d":
        return f"BatchNorm2d({sig[1]})"
    return f"Linear({sig[1]}->{sig[2]}, bias {sig[3]})"


def leaf_pairs(src: nn.Module, dst: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """``(src_name, src_module, dst_name, dst_module)`` for every leaf, checked to agree."""
    a, b = leaf_modules(src), leaf_modules(dst)
    for (na, ma), (nb, mb) in zip(a, b):
        sa, sb = layer_signature(ma), layer_signature(mb)
        if sa != sb:
            raise ConversionError(f"architectures differ at source {na!r} {_show(sa)} vs target {nb!r} {_show(sb)}")
    if len(a) != len(b):
        longer, name = (a, "source") if len(a) > len(b) else (b, "target")
        extra = longer[min(len(a), len(b))][0]
        raise ConversionError(
            f"architectures differ: the source has {len(a)} conv/bn/linear layers, the target "
            f"{len(b)}; first unmatched {name} layer {extra!r}"
        )
    return [(na, ma, nb, mb) for (na, ma), (nb, mb) in zip(a, b)]


def map_state_dict(src: nn.Module, dst: nn.Module) -> dict[str, torch.Tensor]:
    """``src``'s tensors (parameters and buffers) under ``dst``'s state_dict names.

    Raises :class:`ConversionError` if a layer pair disagrees or if either model holds a tensor
    outside a Conv2d / BatchNorm2d / Linear module (it would silently be left behind).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for na, ma, nb, mb in leaf_pairs(src, dst):
        ta, tb = ma.state_dict(keep_vars=True), mb.state_dict(keep_vars=True)
        if set(ta) != set(tb):
            raise ConversionError(
                f"tensors differ at source {na!r} ({', '.join(sorted(ta))}) vs target {nb!r} ({', '.join(sorted(tb))})"
            )
        for key, tensor in ta.items():
            if tensor.shape != tb[key].shape:
                raise ConversionError(
                    f"shape differs at source '{na}.{key}' {tuple(tensor.shape)} vs target "
                    f"'{nb}.{key}' {tuple(tb[key].shape)}"
                )
            out[f"{nb}.{key}" if nb else key] = tensor.detach()
            used.add(f"{na}.{key}" if na else key)
    left_src = [k for k in src.state_dict() if k not in used]
    left_dst = [k for k in dst.state_dict() if k not in out]
    if left_src or left_dst:
        which, key = ("source", left_src[0]) if left_src else ("target", left_dst[0])
        raise ConversionError(
            f"{which} tensor {key!r} is not inside a Conv2d/BatchNorm2d/Linear layer; it would not be transferred"
        )
    return out


def transfer_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst`` in place (values copied, never shared).

    Works in either direction between effv2, timm (``efficientnetv2_*`` / ``tf_efficientnetv2_*``)
    and torchvision (``efficientnet_v2_*``) models of the same architecture; dtypes and devices of
    ``dst`` are kept. Padding and BN eps are not tensors: build ``dst`` with the source's.
    """
    mapped = map_state_dict(src, dst)
    if any(t.is_meta for t in dst.state_dict().values()):
        raise ValueError(
            "transfer_weights: dst has tensors on the meta device, which copying cannot fill; "
            "build it on a real device (convert() handles meta targets itself)"
        )
    dst.load_state_dict(mapped, strict=True)


# -- building the source from a state_dict ------------------------------------------------------


def infer_io(source: str, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(num_classes, in_chans)`` of a torchvision / timm state_dict, from classifier and stem shapes."""
    stem = _STEM_KEY[source]
    if stem not in state:
        first = ", ".join(list(state)[:3])
        raise ConversionError(f"not a {source} EfficientNetV2 state_dict: no key {stem!r} (first keys: {first})")
    in_chans = int(state[stem].shape[1])
    head = state.get(_HEAD_KEY[source])
    num_classes = int(head.shape[0]) if head is not None else 0
    if num_classes == 0 and source == "torchvision":
        raise ConversionError(f"torchvision state_dict has no classifier ({_HEAD_KEY[source]!r} missing)")
    return num_classes, in_chans


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConversionError(
            "timm is needed to convert timm weights and is not installed: "
            "pip install 'timm>=1.0,<1.1' (or pip install effv2[compare])"
        ) from None
    return timm


def _build_source(arch: SourceArch, name: str, num_classes: int, in_chans: int) -> nn.Module:
    """The source architecture with its own code, on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        if arch.source == "timm":
            return _import_timm().create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        import torchvision

        model = getattr(torchvision.models, arch.name)(weights=None, num_classes=num_classes)
        if in_chans != 3:  # torchvision hard-codes 3 input channels; swap the stem conv like timm does
            old = model.features[0][0]
            model.features[0][0] = nn.Conv2d(
                in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        return model


def load_source_model(source: str, name: str, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the source architecture ``name`` with torchvision / timm and load ``state`` into it.

    The model is built on the meta device and takes the given tensors (``assign=True``), so it shares
    memory with ``state``. Keys and shapes are checked first; the first mismatch is named.
    """
    arch = resolve_source(source, name)
    num_classes, in_chans = infer_io(source, state)
    model = _build_source(arch, name, num_classes, in_chans)
    check_compatible(model, dict(state), f"{name} state_dict")
    model.load_state_dict(state, strict=True, assign=True)
    _check_materialised(model, name)
    return model


def _check_materialised(model: nn.Module, name: str) -> None:
    for key, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ConversionError(f"{name}: tensor {key!r} was not set by the state_dict")


# -- conversion ---------------------------------------------------------------------------------


def _bn_eps(model: nn.Module) -> float:
    eps = {float(m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if len(eps) != 1:
        raise ConversionError(f"expected one BatchNorm eps across the source model, found {sorted(eps)}")
    return eps.pop()


def source_preprocessing(arch: SourceArch, module: nn.Module | None = None) -> dict[str, Any]:
    """Mean, std, interpolation and eval size the source's published weights expect (may be empty)."""
    if arch.source == "timm":
        cfg = getattr(module, "pretrained_cfg", None)
        if not cfg:
            cfg = _import_timm().get_pretrained_cfg(arch.name)
            cfg = cfg.to_dict() if cfg is not None else {}
        if not cfg:
            return {}
        size = cfg.get("test_input_size") or cfg.get("input_size")
        return {
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "interpolation": str(cfg.get("interpolation", "bicubic")),
            "eval_size": int(size[-1]),
        }
    import torchvision

    tf = torchvision.models.get_model_weights(arch.name).DEFAULT.transforms()
    return {
        "mean": tuple(tf.mean),
        "std": tuple(tf.std),
        "interpolation": tf.interpolation.value,
        "eval_size": int(tf.crop_size[0]),
    }


def source_data_config(arch: SourceArch, module: nn.Module | None = None, weights: Any = None) -> DataConfig | None:
    """The eval preprocessing the source library publishes for these weights, as a DataConfig.

    timm: the model's ``pretrained_cfg`` (else the architecture's default one) at its test size, as
    timm's ``resolve_data_config(use_test_size=True)`` reads it (``test_crop_pct`` when given, else
    ``crop_pct``; ``crop_mode``). torchvision: ``weights.transforms()`` of ``weights`` (default: the
    architecture's DEFAULT weights): crop size, crop / resize size, interpolation, mean, std.
    ``None`` when the source publishes nothing.
    """
    if arch.source == "timm":
        cfg = getattr(module, "pretrained_cfg", None)
        if not cfg:
            cfg = _import_timm().get_pretrained_cfg(arch.name)
            cfg = cfg.to_dict() if cfg is not None else {}
        if not cfg or "mean" not in cfg:
            return None
        size = int((cfg.get("test_input_size") or cfg["input_size"])[-1])
        crop = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
        mode = "squash" if cfg.get("crop_mode") == "squash" else "center"
        interp = str(cfg.get("interpolation", "bicubic"))
        interp = interp if interp in ("nearest", "bilinear", "bicubic") else "bicubic"
        return DataConfig(size, crop, interp, tuple(cfg["mean"]), tuple(cfg["std"]), mode)
    import torchvision

    w = weights if weights is not None else torchvision.models.get_model_weights(arch.name).DEFAULT
    tf = w.transforms()
    crop, resize = int(tf.crop_size[0]), int(tf.resize_size[0])
    return DataConfig(crop, crop / resize, tf.interpolation.value, tuple(tf.mean), tuple(tf.std), "center")


def _resolve_names(source: str, module: nn.Module | None, model: str | None, src_name: str | None) -> SourceArch:
    if source not in SOURCES:
        raise ConversionError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if src_name is None and module is not None:
        cfg = getattr(module, "pretrained_cfg", None) or {}
        src_name = cfg.get("architecture")
    if src_name is None and model is not None:
        if source == "timm":
            raise ConversionError(
                f"timm has two conversions for {model} (tf_ padded and symmetric): "
                f"pass src_name, one of {', '.join(supported_names('timm'))}"
            )
        src_name = next((a.name for a in SUPPORTED.values() if a.source == source and a.model == model), None)
        if src_name is None:
            raise ConversionError(
                f"no torchvision model converts to {model!r}; "
                f"valid: {', '.join(a.model for a in SUPPORTED.values() if a.source == source)}"
            )
    if src_name is None and module is not None and source == "torchvision":
        src_name = _match_torchvision(module)
    if src_name is None:
        raise ConversionError(f"name the source architecture (src_name), one of {', '.join(supported_names(source))}")
    arch = resolve_source(source, src_name)
    if model is not None and model != arch.model:
        raise ConversionError(f"{source} {src_name} converts to {arch.model}, not {model}")
    return arch


def _match_torchvision(module: nn.Module) -> str | None:
    """Name a torchvision EfficientNetV2 by its number of blocks (S 40, M 57, L 79)."""
    from torchvision.models.efficientnet import FusedMBConv, MBConv

    n = sum(isinstance(m, (MBConv, FusedMBConv)) for m in module.modules())
    for arch in SUPPORTED.values():
        if arch.source == "torchvision" and get_card(arch.model).spec.num_blocks == n:
            return arch.name
    return None


def convert(
    source: Source,
    state_dict_or_module: Mapping[str, torch.Tensor] | nn.Module,
    model: str | None = None,
    src_name: str | None = None,
) -> EfficientNetV2:
    """The effv2 model holding the weights of a torchvision or timm EfficientNetV2.

    ``state_dict_or_module`` is a source model or its state_dict. ``src_name`` is the source's
    architecture name (``efficientnet_v2_s``, ``tf_efficientnetv2_b0``, ...); it can be left out for
    a timm model (read from its config), a torchvision model (matched by depth), or when ``model``
    (the effv2 name) determines it. The result is an fp32 CPU model in train mode whose card records
    the padding, BN eps and preprocessing of the source, so ``save_weights`` can rebuild it.
    """
    module = state_dict_or_module if isinstance(state_dict_or_module, nn.Module) else None
    arch = _resolve_names(source, module, model, src_name)
    if module is None:
        if not isinstance(state_dict_or_module, Mapping):
            raise ConversionError(f"expected a state_dict or an nn.Module, got {type(state_dict_or_module).__name__}")
        module = load_source_model(source, src_name or arch.name, state_dict_or_module)
    return _convert_module(arch, module)


def _convert_module(arch: SourceArch, src: nn.Module) -> EfficientNetV2:
    convs = [m for _, m in leaf_modules(src) if isinstance(m, nn.Conv2d)]
    linears = [m for _, m in leaf_modules(src) if isinstance(m, nn.Linear)]
    if not convs:
        raise ConversionError(f"{arch.name}: the source model has no conv layers")
    in_chans = convs[0].in_channels
    num_classes = linears[-1].out_features if linears else 0
    card = get_card(arch.model)
    spec = card.spec.with_overrides(padding=arch.padding, bn_eps=_bn_eps(src))
    pre = source_preprocessing(arch, src) if in_chans == 3 else {}
    card = replace(
        card, spec=spec, notes=f"converted from {arch.source} {arch.name}", tags=(*card.tags, "converted"), **pre
    )
    with torch.device("meta"):  # no memory and no random init: every tensor is replaced below
        dst = EfficientNetV2(
            spec,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=card.dropout,
            drop_path_rate=card.drop_path,
            card=card,
        )
    # the source's whole eval preprocessing; save_weights records it (crop fraction and mode are
    # not card fields). 1-channel weights have no published RGB preprocessing.
    dst.data_config = source_data_config(arch, src) if in_chans == 3 else None
    mapped = map_state_dict(src, dst)
    own = dst.state_dict()
    # A fresh CPU tensor per entry, in the target's dtype: the result never shares memory with src.
    state = {k: torch.empty_like(own[k], device="cpu").copy_(v) for k, v in mapped.items()}
    dst.load_state_dict(state, strict=True, assign=True)
    _check_materialised(dst, arch.model)
    return dst


def max_logit_diff(
    a: nn.Module, b: nn.Module, *, image_size: int, batch: int = 2, seed: int = 0, in_chans: int | None = None
) -> float:
    """Max |a(x) - b(x)| over the logits, eval mode, on one seeded normal input batch (modes restored)."""
    in_chans = in_chans or getattr(b, "in_chans", None) or getattr(a, "in_chans", 3)
    x = torch.randn(batch, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    outs = []
    for m in (a, b):
        p = next(m.parameters())
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad():
                outs.append(m(x.to(p.device, p.dtype)).float().cpu())
        finally:
            m.train(was_training)
    return float((outs[0] - outs[1]).abs().max())
