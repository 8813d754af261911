"""Rebuild a trained model from a run folder, a model folder or a .safetensors file, for eval,
predict and export (``effv2.inference`` builds ``effv2.load`` and the exports on it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UsageError
from ..inference.data_config import DataConfig
from ..io.stateful import decode
from ..io.weights import check_compatible, read_metadata
from ..models import ArchSpec, EfficientNetV2, ModelCard
from ..runtime import Runtime
from .build import channel_stats


@dataclass
class LoadedModel:
    model: EfficientNetV2
    classes: list[str]
    eval_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    path: Path
    used: str  # "ema" or "model"
    data_config: DataConfig = field(default=None)  # type: ignore[assignment]  # filled from the fields above
    meta: dict[str, Any] = field(default_factory=dict, repr=False)  # the file's metadata

    def __post_init__(self) -> None:
        if self.data_config is None:
            self.data_config = DataConfig.from_card(self.model.card, size=self.eval_size, mean=self.mean, std=self.std)


MODEL_FOLDER_FILES = ("config.json", "model.safetensors")


def is_model_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and all((p / n).is_file() for n in MODEL_FOLDER_FILES)


def resolve_weights_file(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else last), a model folder its model.safetensors;
    a file is taken as is."""
    p = Path(path)
    if is_model_folder(p):
        return p / "model.safetensors"
    if p.is_dir():
        for name in ("best", "last"):
            f = p / "checkpoints" / f"{name}.safetensors"
            if f.is_file():
                return f
        raise UsageError(
            f"{p}: no checkpoints/best.safetensors or last.safetensors in this run folder "
            "(nor config.json + model.safetensors of a model folder)"
        )
    if not p.is_file():
        raise UsageError(f"{p}: no such checkpoint file or run folder")
    return p


def _fit(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """One value (broadcast) or one per channel as given; any other count fitted like training does."""
    return values if len(values) in (1, channels) else channel_stats(values, channels)


def load_for_inference(path: str | Path, prefer_ema: bool = True) -> LoadedModel:
    """Build the model recorded in the file's metadata and load its weights (EMA when present)."""
    f = resolve_weights_file(path)
    meta = read_metadata(f)
    spec_d = meta.get("spec") or (meta.get("card") or {}).get("spec")
    if not spec_d:
        raise UsageError(f"{f}: no architecture recorded in this file (not written by effv2?)")
    # a checkpoint's state is tagged JSON (tuples such as mean=(0.5,) come back as tuples)
    state_meta: dict[str, Any] = decode(meta.get("state") or {}, {}, str(f))
    if not isinstance(state_meta, dict):
        state_meta = {}
    try:
        tensors = load_file(str(f))
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{f}: not a readable safetensors file ({exc})") from None
    prefixes = [p for p in (("ema/", "model/") if prefer_ema else ("model/",)) if any(k.startswith(p) for k in tensors)]
    if prefixes:
        prefix = prefixes[0]
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        state = {
            (k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items() if k != "n_averaged"
        }
        used = prefix.rstrip("/")
    else:
        state, used = tensors, "model"
    num_classes = int(state_meta.get("num_classes", meta.get("num_classes", 1000)))
    in_chans = int(state_meta.get("in_chans", meta.get("in_chans", 3)))
    card_d = meta.get("card")
    card = ModelCard.from_dict(card_d) if card_d else None
    model = EfficientNetV2(ArchSpec.from_dict(spec_d), num_classes=num_classes, in_chans=in_chans, card=card)
    if meta.get("folded"):  # `effv2 export --format safetensors`: BN already folded into the convs
        from ..models.fuse import fold_bn

        model = fold_bn(model, inplace=True)
    check_compatible(model, state, str(f))
    model.load_state_dict(state)
    model.eval()
    classes = list(state_meta.get("classes") or meta.get("classes") or [str(i) for i in range(num_classes)])
    eval_size = int(state_meta.get("eval_size") or meta.get("eval_size") or (card.eval_size if card else 224))
    # a card's RGB statistics on a model built for grayscale (save_weights of create_model(in_chans=1)):
    # fitted to the model's channels as training fits them (build.channel_stats)
    mean = _fit(tuple(state_meta.get("mean") or (card.mean if card else (0.5,))), in_chans)
    std = _fit(tuple(state_meta.get("std") or (card.std if card else (0.5,))), in_chans)
    dc = DataConfig.from_dict(meta["data_config"]) if isinstance(meta.get("data_config"), dict) else None
    if dc is not None:
        eval_size, mean, std = dc.size, dc.mean, dc.std
    return LoadedModel(
        model=model,
        classes=classes,
        eval_size=eval_size,
        mean=mean,
        std=std,
        path=f,
        used=str(meta.get("weights", used)),
        data_config=dc,
        meta=meta,
    )


def fast_inference_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """The measured fast inference path: BN folded into the convs (when the fast defaults for the
    runtime's device say so), on the runtime's device and memory format. Run it under
    ``runtime.autocast()``."""
    from ..bench.machine import fast_defaults
    from ..models.fuse import fold_bn

    if fast_defaults(runtime.device)["fold_bn_infer"]:
        model = fold_bn(model)
    return runtime.place(model.eval())


def preprocess_image(path: str | Path, loaded: LoadedModel) -> torch.Tensor:
    """One image file -> (C, S, S) float tensor, decoded, resized and normalised as the eval loader does
    (``DataConfig.load_file``)."""
    return loaded.data_config.load_file(path, loaded.model.in_chans)
