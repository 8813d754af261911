"""The model registry: every EfficientNetV2 variant as a :class:`ModelCard` (spec + sizes + dropout).

Stage tables copy ../shared/reference/efficientnetv2.md (paper Table 4 and effnetv2_configs.py).
B1-B3 are the B0 base with width/depth multipliers; S/M/L/XL are their own tables.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from .efficientnetv2 import EfficientNetV2
from .spec import ArchSpec, ModelCard, SpecError, Stage

F, M = "fused", "mbconv"


def _row(block: str, expand: int, repeats: int, out: int, stride: int, se: float | None = None) -> Stage:
    # Official V2 tables: Fused blocks never have SE, MBConv blocks always SE 0.25.
    return Stage(
        block=block,
        expand=expand,
        kernel=3,
        stride=stride,
        se=(0.25 if block == M else 0.0) if se is None else se,
        out=out,
        repeats=repeats,
    )


BASE_B = (  # EfficientNetV2-B0 base (effnetv2_configs.v2_base_block)
    _row(F, 1, 1, 16, 1),
    _row(F, 4, 2, 32, 2),
    _row(F, 4, 2, 48, 2),
    _row(M, 4, 3, 96, 2),
    _row(M, 6, 5, 112, 1),
    _row(M, 6, 8, 192, 2),
)
V2_S = (
    _row(F, 1, 2, 24, 1),
    _row(F, 4, 4, 48, 2),
    _row(F, 4, 4, 64, 2),
    _row(M, 4, 6, 128, 2),
    _row(M, 6, 9, 160, 1),
    _row(M, 6, 15, 256, 2),
)
V2_M = (
    _row(F, 1, 3, 24, 1),
    _row(F, 4, 5, 48, 2),
    _row(F, 4, 5, 80, 2),
    _row(M, 4, 7, 160, 2),
    _row(M, 6, 14, 176, 1),
    _row(M, 6, 18, 304, 2),
    _row(M, 6, 5, 512, 1),
)
V2_L = (
    _row(F, 1, 4, 32, 1),
    _row(F, 4, 7, 64, 2),
    _row(F, 4, 7, 96, 2),
    _row(M, 4, 10, 192, 2),
    _row(M, 6, 19, 224, 1),
    _row(M, 6, 25, 384, 2),
    _row(M, 6, 7, 640, 1),
)
V2_XL = (
    _row(F, 1, 4, 32, 1),
    _row(F, 4, 8, 64, 2),
    _row(F, 4, 8, 96, 2),
    _row(M, 4, 16, 192, 2),
    _row(M, 6, 24, 256, 1),
    _row(M, 6, 32, 512, 2),
    _row(M, 6, 8, 640, 1),
)
# Small-image variants (28-64 px), total stride 8 so a 28 px image ends at 4x4.
# "mini" is the Fashion-MNIST demo model: stem stride 2, three Fused stages, one MBConv stage. A
# stem-stride-1 version (16/32/48 fused + 96/112 MBConv, head 640) trained 1.8x slower per image on
# the 2-core CPU for no measured accuracy gain at equal wall time (README, "Models").
# "pico" is a toy for tests and smoke runs.
MINI = (
    _row(F, 1, 1, 24, 1),
    _row(F, 4, 2, 48, 2),
    _row(F, 4, 2, 96, 2),
    _row(M, 4, 2, 160, 1),
)
# "fmnist" is the architecture effv2's training-aware search found around mini on Fashion-MNIST: the
# accuracy pick (trial 84) of `python benchmarks/search_fmnist.py --search-time 60m` (benchmarks/RESULTS.md,
# "Training-aware search on Fashion-MNIST"): 0.24M parameters, a fifth of mini's MACs. The demo model
# since 2026-12-02, chosen on validation at the demo's 10-minute budget: a tie where bf16 is native
# (Zen 5, 2 seeds each: 93.55% vs mini's 93.46%), ahead where compute is fp32 (AVX2 stand-in: 92.92% vs
# 92.63%, one seed each), where a fifth of the MACs buys 2.5x mini's epochs.
FMNIST = (
    _row(M, 1, 2, 24, 1, se=0.0),
    _row(F, 1, 1, 48, 2, se=0.25),
    _row(F, 4, 1, 96, 2),
    _row(M, 1, 1, 160, 1, se=0.0),
)
PICO = (_row(F, 1, 1, 8, 1), _row(F, 4, 1, 16, 2), _row(M, 4, 1, 24, 2))

_REGISTRY: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    if card.name in _REGISTRY:
        raise ValueError(f"model {card.name!r} is already registered")
    _REGISTRY[card.name] = card
    return card


def _card(name: str, spec: ArchSpec, train: int, eval_: int, dropout: float, **kw: Any) -> None:
    register(ModelCard(name=name, spec=spec, train_size=train, eval_size=eval_, dropout=dropout, **kw))


_card("efficientnetv2_b0", ArchSpec(stages=BASE_B, stem=32), 192, 224, 0.2)
_card("efficientnetv2_b1", ArchSpec(stages=BASE_B, stem=32, depth_mult=1.1), 192, 240, 0.2)
_card("efficientnetv2_b2", ArchSpec(stages=BASE_B, stem=32, width_mult=1.1, depth_mult=1.2), 208, 260, 0.3)
_card("efficientnetv2_b3", ArchSpec(stages=BASE_B, stem=32, width_mult=1.2, depth_mult=1.4), 240, 300, 0.3)
_card("efficientnetv2_s", ArchSpec(stages=V2_S, stem=24), 300, 384, 0.2)
_card("efficientnetv2_m", ArchSpec(stages=V2_M, stem=24), 384, 480, 0.3)
_card("efficientnetv2_l", ArchSpec(stages=V2_L, stem=32), 384, 480, 0.4)
_card("efficientnetv2_xl", ArchSpec(stages=V2_XL, stem=32), 384, 512, 0.4)


def _fmnist_sized(name: str, stages: tuple[Stage, ...], notes: str, tags: tuple[str, ...]) -> None:
    """A small-image card as the Fashion-MNIST demo trains it: 28 px, grey mean/std 0.5, bilinear."""
    spec = ArchSpec(stages=stages, stem=24, head=640, stem_stride=2)
    _card(
        name,
        spec,
        28,
        28,
        0.1,
        drop_path=0.05,
        mean=(0.5,),
        std=(0.5,),
        interpolation="bilinear",
        notes=notes,
        tags=tags,
    )


_fmnist_sized(
    "efficientnetv2_mini",
    MINI,
    "small-image variant (28-64 px), the search's backbone; the demo model until 2026-12-02",
    ("small",),
)
_fmnist_sized(
    "efficientnetv2_fmnist",
    FMNIST,
    "found by effv2's training-aware search on Fashion-MNIST (accuracy pick, trial 84); the demo model",
    ("small", "found"),
)
_card(
    "efficientnetv2_pico",
    ArchSpec(stages=PICO, stem=8, head=64, stem_stride=1),
    32,
    32,
    0.0,
    drop_path=0.0,
    interpolation="bilinear",
    notes="toy model for tests and smoke runs",
    tags=("small", "toy"),
)

PAPER_MODELS = tuple(f"efficientnetv2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"))


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, in registration order, optionally filtered by a shell-style pattern."""
    names = list(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_card(name: str) -> ModelCard:
    """The card of a registered model, or of a spec file (``*.json``) saved by search or scale."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.endswith(".json"):
        path = Path(name)
        spec = ArchSpec.load(path)
        import json

        extra = json.loads(path.read_text())
        sizes = extra if isinstance(extra, dict) and "spec" in extra else {}
        return ModelCard(
            name=path.stem,
            spec=spec,
            train_size=int(sizes.get("train_size", 224)),
            eval_size=int(sizes.get("eval_size", sizes.get("train_size", 224))),
            dropout=float(sizes.get("dropout", 0.2)),
            drop_path=float(sizes.get("drop_path", 0.2)),
            mean=tuple(sizes.get("mean", (0.5, 0.5, 0.5))),
            std=tuple(sizes.get("std", (0.5, 0.5, 0.5))),
            interpolation=str(sizes.get("interpolation", "bicubic")),
        )
    close = [n for n in _REGISTRY if name.split("_")[-1] in n] if "_" in name else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SpecError(f"unknown model {name!r}{hint}; valid: {', '.join(_REGISTRY)} or a spec file *.json")


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> EfficientNetV2:
    """Build a registered model (or a saved spec file).

    ``overrides`` change the architecture's scalar fields (width_mult, depth_mult, stem_stride,
    bn_eps, bn_momentum, padding, stem, head) and its technique options: ``norm`` ("bn", or
    "dual_bn" for AdvProp) and ``act`` ("silu", "gelu", "softplus", "elu", "relu"). They are
    stored in the spec, so a checkpoint rebuilds the same variant. Unknown keys or values raise an
    error listing the valid ones. ``drop_rate`` / ``drop_path_rate`` default to the card's values.

    ``features_only=True`` builds a backbone whose forward returns the feature maps at
    ``out_indices`` (default: all) as a list, with ``model.feature_info`` giving channels and
    reduction per index, as timm does; for a paper model indices 1..4 are the stride-4/8/16/32 maps
    (see :class:`~effv2.models.efficientnetv2.FeatureInfo`). Its state_dict keys are the
    classifier's (``stem.*``, ``blocks.*``), so classifier weights load with ``strict=False``.
    """
    card = get_card(name)
    spec = card.spec.with_overrides(**overrides) if overrides else card.spec
    return EfficientNetV2(
        spec,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=card.dropout if drop_rate is None else drop_rate,
        drop_path_rate=card.drop_path if drop_path_rate is None else drop_path_rate,
        card=card,
        features_only=features_only,
        out_indices=out_indices,
    )
