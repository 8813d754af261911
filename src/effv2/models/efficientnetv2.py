"""One generic builder: an :class:`ArchSpec` in, an EfficientNetV2 network out."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from . import blocks as _blocks
from .blocks import BLOCKS, ActLayer, ConvBNAct, Dropout, NormLayer, act_factory, norm_factory
from .spec import ArchSpec, ModelCard


class EfficientNetV2(nn.Module):
    """stem -> stages of (Fused-)MBConv blocks -> 1x1 head conv -> pool -> dropout -> linear.

    Uniform API (as timm): ``forward_features`` returns the head's feature map (B, head, H/32, W/32),
    ``forward_head(x, pre_logits=False)`` pools and classifies, ``reset_classifier(n)`` swaps the head.

    Norm and activation come from ``spec.norm`` / ``spec.act`` (what a checkpoint records and
    rebuilds); ``norm_layer`` / ``act_layer`` callables replace them for experiments the spec
    cannot name.
    """

    def __init__(
        self,
        spec: ArchSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
        card: ModelCard | None = None,
        *,
        norm_layer: NormLayer | None = None,
        act_layer: ActLayer | None = None,
        features_only: bool = False,
        out_indices: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes: expected >= 0, got {num_classes}")
        if in_chans < 1:
            raise ValueError(f"in_chans: expected >= 1, got {in_chans}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate: expected a value in [0, 1), got {drop_rate}")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f"drop_path_rate: expected a value in [0, 1), got {drop_path_rate}")
        self.spec = spec
        self.card = card
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_path_rate = drop_path_rate
        bn = dict(
            norm_layer=norm_layer or norm_factory(spec.norm, spec.bn_eps, spec.bn_momentum),
            act_layer=act_layer or act_factory(spec.act),
            padding=spec.padding,
        )

        self.stem = ConvBNAct(in_chans, spec.stem_channels, 3, spec.stem_stride, **bn)
        rows = spec.scaled_stages()
        total = sum(r.repeats for r in rows)
        in_ch, idx, stages = spec.stem_channels, 0, []
        for row in rows:
            blocks = []
            for j in range(row.repeats):
                # Stochastic depth grows linearly with block index: rate * idx / total (official).
                blocks.append(
                    BLOCKS[row.block](
                        in_ch,
                        row.out,
                        expand=row.expand,
                        kernel=row.kernel,
                        stride=row.stride if j == 0 else 1,
                        se=row.se,
                        drop_path=drop_path_rate * idx / total,
                        **bn,
                    )
                )
                in_ch, idx = row.out, idx + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = spec.head_channels
        self.head = ConvBNAct(in_ch, self.num_features, 1, **bn)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(_feature_points(spec, rows))
        self.features_only = bool(features_only)
        self.out_indices: tuple[int, ...] = ()
        if features_only:
            self._to_features(out_indices)
        elif out_indices is not None:
            raise ValueError("out_indices: only with features_only=True")
        self._init_weights()

    def _to_features(self, out_indices: tuple[int, ...] | None) -> None:
        """Keep stem and the stages up to the deepest requested feature point; drop head and classifier."""
        n = len(self.feature_info)
        idx = tuple(range(n)) if out_indices is None else tuple(int(i) for i in out_indices)
        idx = tuple(i + n if i < 0 else i for i in idx)  # timm accepts negative indices
        if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(f"out_indices: expected distinct indices in 0..{n - 1} (or negative), got {out_indices}")
        self.out_indices = idx
        self.feature_info = FeatureInfo([self.feature_info[i] for i in idx])
        self._feature_stages = tuple(self.feature_info.stage_indices())
        self.blocks = nn.Sequential(*list(self.blocks)[: max(self._feature_stages) + 1])
        self.head = self.pool = self.dropout = self.classifier = nn.Identity()
        self.num_classes = 0

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan-out init of the official code: N(0, sqrt(2 / fan_out)), groups accounted for.
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_classifier()

    def _init_classifier(self) -> None:
        if isinstance(self.classifier, nn.Linear):
            bound = 1.0 / math.sqrt(self.classifier.out_features)
            nn.init.uniform_(self.classifier.weight, -bound, bound)
            nn.init.zeros_(self.classifier.bias)

    @property
    def drop_rate(self) -> float:
        return self.dropout.p

    def set_drop_rate(self, p: float) -> None:
        """Dropout before the classifier; progressive learning changes it from stage to stage."""
        self.dropout.p = float(p)

    def set_drop_path_rate(self, rate: float) -> None:
        """Re-spread stochastic depth linearly over the blocks with a new final rate."""
        blocks = [b for stage in self.blocks for b in stage]
        for idx, b in enumerate(blocks):
            if b.has_skip:
                b.drop_path.p = rate * idx / len(blocks)
        self.drop_path_rate = rate

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_classifier()

    def set_bn_mode(self, mode: str) -> None:
        """Route every DualBatchNorm2d through its "main" (clean) or "aux" (adversarial) BN."""
        _blocks.set_bn_mode(self, mode)

    def bn_mode(self, mode: str) -> contextlib.AbstractContextManager[EfficientNetV2]:
        """``with model.bn_mode("aux"): model(x_adv)``; the previous mode comes back afterwards."""
        return _blocks.bn_mode(self, mode)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, F, h, w)
        if self.features_only:
            raise RuntimeError("forward_features: a features_only model returns its feature maps from forward()")
        return self.head(self.blocks(self.stem(x)))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps at ``out_indices`` (features_only) or at every feature point, as a list."""
        stages = self._feature_stages if self.features_only else tuple(self.feature_info.stage_indices())
        out, x = [], self.stem(x)
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in stages:
                out.append(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)  # (B, F)
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))


class FeatureInfo(list):
    """timm-style feature info: one dict per feature point (``num_chs``, ``reduction``, ``module``, ``stage``).

    A feature point is the output of the last stage at each distinct reduction (total stride), in
    depth order: a paper model (stem stride 2) has 5, at reductions 2, 4, 8, 16, 32, so index 1..4 are
    the stride-4/8/16/32 maps, as in timm's EfficientNet. The last point is the input of the 1x1 head
    conv: ``model.forward_features(x) == model.head(features[-1])``.
    """

    def channels(self, idx: int | None = None) -> list[int] | int:
        return [d["num_chs"] for d in self] if idx is None else self[idx]["num_chs"]

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return [d["reduction"] for d in self] if idx is None else self[idx]["reduction"]

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return [d["module"] for d in self] if idx is None else self[idx]["module"]

    def stage_indices(self) -> list[int]:
        return [d["stage"] for d in self]


def _feature_points(spec: ArchSpec, rows: list) -> list[dict]:
    red, points = spec.stem_stride, {}
    for i, row in enumerate(rows):
        red *= row.stride
        points[red] = {"num_chs": row.out, "reduction": red, "module": f"blocks.{i}", "stage": i}  # last one wins
    return list(points.values())
