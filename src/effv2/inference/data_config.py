"""One preprocessing definition: a frozen :class:`DataConfig` and the transforms built from it.

``effv2 eval`` on image files, ``effv2 predict`` (checkpoints, run folders, model folders, exported
models) and ``effv2.load(...).transform`` all decode a file with ``decode_rgb`` and resize it with
the transform of one DataConfig, then normalise with ``norm_stats``. For a model effv2 trained, the
config is the eval loader's rule (``file_eval_transform``: below 320 px the shorter side goes to
size / 0.875 and is centre-cropped, from 320 px up a direct resize; bilinear, anti-aliased), and
that very transform object is used. Converted torchvision / timm weights keep the preprocessing
their source published (recorded in the model card by ``effv2.models.convert``): mean, std,
interpolation and eval size, shorter side resized to size / crop_fraction, centre crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from ..errors import UsageError

CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class DataConfig:
    """How an image becomes the model's input.

    ``crop_mode`` "center": shorter side resized to ``floor(size / crop_fraction)``, then a centre
    crop of ``size`` (torchvision's ImageClassification, timm's default); "squash": both sides
    resized to ``floor(size / crop_fraction)`` (the aspect ratio is not kept), then a centre crop of
    ``size`` (timm's ``crop_mode="squash"``; with crop_fraction 1 a direct resize).
    ``mean`` / ``std`` are on the 0..1 scale, 1 or C values.
    """

    size: int
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if int(self.size) < 1:
            raise UsageError(f"data config: size must be >= 1, got {self.size}")
        if not 0 < self.crop_fraction <= 1:
            raise UsageError(f"data config: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"data config: interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise UsageError(f"data config: crop_mode {self.crop_mode!r}; valid: {', '.join(CROP_MODES)}")
        if not self.mean or len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise UsageError(f"data config: mean/std need equal lengths and std > 0, got {self.mean}, {self.std}")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def effv2_eval(cls, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> DataConfig:
        """What effv2's eval loader does to image files at ``size`` (``data.augment.file_eval_transform``)."""
        from ..data.augment import EVAL_CENTER_CROP_BELOW, eval_crop_fraction

        if size < EVAL_CENTER_CROP_BELOW:  # the official size / (size + 32) (augment.eval_crop_fraction)
            return cls(size, eval_crop_fraction(size), "bilinear", tuple(mean), tuple(std), "center")
        return cls(size, 1.0, "bilinear", tuple(mean), tuple(std), "squash")

    @classmethod
    def from_card(cls, card: Any, *, size: int | None = None, mean=None, std=None) -> DataConfig:
        """From a ModelCard: the source's published preprocessing for converted weights, else effv2's eval rule.

        ``size`` / ``mean`` / ``std`` override the card's (a run records the ones it trained with).
        """
        size = int(size or (card.eval_size if card is not None else 224))
        mean = tuple(mean or (card.mean if card is not None else (0.5,)))
        std = tuple(std or (card.std if card is not None else (0.5,)))
        if card is not None and "converted" in tuple(card.tags):
            # torchvision's ImageClassification and timm's default eval: shorter side, centre crop;
            # the EfficientNetV2 weights of both use crop_fraction 1 (resize_size == crop_size).
            return cls(size, 1.0, card.interpolation, mean, std, "center")
        return cls.effv2_eval(size, mean, std)

    def with_size(self, size: int) -> DataConfig:
        if int(size) == self.size:
            return self
        if self == DataConfig.effv2_eval(self.size, self.mean, self.std):
            return DataConfig.effv2_eval(int(size), self.mean, self.std)
        return DataConfig(int(size), self.crop_fraction, self.interpolation, self.mean, self.std, self.crop_mode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        keys = ("size", "crop_fraction", "interpolation", "mean", "std", "crop_mode")
        try:
            return cls(**{k: d[k] for k in keys if k in d})
        except TypeError as exc:
            raise UsageError(f"data config: malformed ({exc})") from None

    # -- transforms ---------------------------------------------------------------------------------
    def resize_transform(self) -> Any:
        """uint8 (C, H, W) of any size -> uint8 (C, size, size)."""
        from ..data.augment import file_eval_transform

        if self == DataConfig.effv2_eval(self.size, self.mean, self.std):
            return file_eval_transform(self.size)  # eval's own transform object, not a copy of it
        # torchvision's own tensor ops, the ones its weights' ImageClassification transform applies
        # (v2's uint8 bilinear kernel rounds differently, by one level on ~20% of the pixels)
        from torchvision import transforms as tv1

        mode = tv1.InterpolationMode(self.interpolation)
        resize = self.resize_size
        if self.crop_mode == "squash":
            if resize == self.size:
                return tv1.Compose([tv1.Resize((self.size, self.size), interpolation=mode, antialias=True)])
            return tv1.Compose(
                [tv1.Resize((resize, resize), interpolation=mode, antialias=True), tv1.CenterCrop(self.size)]
            )
        return tv1.Compose([tv1.Resize(resize, interpolation=mode, antialias=True), tv1.CenterCrop(self.size)])

    @property
    def resize_size(self) -> int:
        """``floor(size / crop_fraction)``, as timm computes it; the 1e-6 keeps a fraction written as
        crop / resize (torchvision's 224 / 232) from flooring to one pixel less."""
        return math.floor(self.size / self.crop_fraction + 1e-6)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) or (C, H, W) -> float, as the loaders do (``data.augment.norm_stats``)."""
        from ..data.augment import norm_stats

        batched = x.dim() == 4
        x4 = x if batched else x[None]
        scale, shift = norm_stats(self.mean, self.std, x4.shape[1], x4.device)
        out = x4.float().mul_(scale).sub_(shift)
        return out if batched else out[0]

    def from_uint8(self, img: torch.Tensor, in_chans: int = 3) -> torch.Tensor:
        """uint8 RGB (3, H, W) -> float (in_chans, size, size)."""
        x = self.resize_transform()(img)
        if in_chans == 1 and x.shape[0] == 3:
            x = v2.functional.rgb_to_grayscale(x)
        return self.normalize(x)

    def load_file(self, path: str | Path, in_chans: int = 3) -> torch.Tensor:
        """An image file -> float (in_chans, size, size), decoded exactly as the data loaders do."""
        from ..data.decode import BadImage, decode_rgb

        if not Path(path).is_file():
            raise UsageError(f"{path}: no such image file")
        try:
            img = decode_rgb(str(path))
        except BadImage as bad:
            raise UsageError(f"{path}: not a readable image ({bad.reason})") from None
        return self.from_uint8(img, in_chans)

    def pil_transform(self, in_chans: int = 3) -> PILTransform:
        return PILTransform(self, in_chans)


class PILTransform:
    """A PIL image -> float (C, size, size): the same RGB conversion, resize and normalisation as files get."""

    def __init__(self, config: DataConfig, in_chans: int = 3) -> None:
        self.config, self.in_chans = config, in_chans

    def __call__(self, img: Any) -> torch.Tensor:
        import numpy as np
        from PIL import ImageOps

        from ..data.decode import to_rgb_array

        img = ImageOps.exif_transpose(img) or img
        arr = to_rgb_array(img)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        return self.config.from_uint8(x, self.in_chans)

    def __repr__(self) -> str:
        return f"PILTransform({self.config}, in_chans={self.in_chans})"
