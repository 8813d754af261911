"""Rebuild a trained model from a run folder or a .safetensors file, for eval, predict and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UsageError
from ..io.weights import check_compatible, read_metadata
from ..models import ArchSpec, EfficientNetV2, ModelCard
from ..runtime import Runtime


@dataclass
class LoadedModel:
    model: EfficientNetV2
    classes: list[str]
    eval_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    path: Path
    used: str  # "ema" or "model"


def resolve_weights_file(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else last); a file is taken as is."""
    p = Path(path)
    if p.is_dir():
        for name in ("best", "last"):
            f = p / "checkpoints" / f"{name}.safetensors"
            if f.is_file():
                return f
        raise UsageError(f"{p}: no checkpoints/best.safetensors or last.safetensors in this run folder")
    if not p.is_file():
        raise UsageError(f"{p}: no such checkpoint file or run folder")
    return p


def load_for_inference(path: str | Path, prefer_ema: bool = True) -> LoadedModel:
    """Build the model recorded in the file's metadata and load its weights (EMA when present)."""
    f = resolve_weights_file(path)
    meta = read_metadata(f)
    spec_d = meta.get("spec") or (meta.get("card") or {}).get("spec")
    if not spec_d:
        raise UsageError(f"{f}: no architecture recorded in this file (not written by effv2?)")
    state_meta: dict[str, Any] = meta.get("state") or {}
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
    check_compatible(model, state, str(f))
    model.load_state_dict(state)
    model.eval()
    classes = list(state_meta.get("classes") or meta.get("classes") or [str(i) for i in range(num_classes)])
    eval_size = int(state_meta.get("eval_size") or meta.get("eval_size") or (card.eval_size if card else 224))
    mean = tuple(state_meta.get("mean") or (card.mean if card else (0.5,)))
    std = tuple(state_meta.get("std") or (card.std if card else (0.5,)))
    return LoadedModel(model=model, classes=classes, eval_size=eval_size, mean=mean, std=std, path=f, used=used)


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
    """One image file -> (C, S, S) float tensor normalised like the training data."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if loaded.model.in_chans == 1 else "RGB")
            im = im.resize((loaded.eval_size, loaded.eval_size), Image.Resampling.BILINEAR)
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    c = loaded.model.in_chans
    x = x.view(loaded.eval_size, loaded.eval_size, c).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean) / std
