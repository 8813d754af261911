"""Model weights as safetensors: no pickle, metadata recorded, architecture checked on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError
from .atomic import atomic_write


def _versions() -> dict[str, str]:
    from .. import __version__

    return {"effv2_version": __version__, "torch_version": torch.__version__}


def save_weights(
    model_or_state: nn.Module | dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None
) -> None:
    """Write a state_dict atomically as safetensors. Metadata values are stored as JSON strings.

    For an effv2 model the card (name, spec, sizes) is recorded, so the file alone rebuilds it.
    """
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
        card = getattr(model_or_state, "card", None)
        meta: dict[str, Any] = {}
        if card is not None:
            meta["card"] = card.to_dict()
            meta["spec"] = model_or_state.spec.to_dict()
            meta["num_classes"] = model_or_state.num_classes
            meta["in_chans"] = model_or_state.in_chans
        data_config = getattr(model_or_state, "data_config", None)  # converted weights: the source's preprocessing
        if data_config is not None:
            meta["data_config"] = data_config.to_dict()
    else:
        state, meta = model_or_state, {}
    meta.update(_versions())
    meta.update(metadata or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}  # safetensors: contiguous, CPU
    str_meta = {k: json.dumps(v) for k, v in meta.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=str_meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{path}: not a readable safetensors file ({exc})") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, metadata)``. Never unpickles anything."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such weights file")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{p}: not a readable safetensors file ({exc})") from None
    return state, read_metadata(p)


def check_compatible(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Refuse a state_dict of another architecture, naming the first differing key."""
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise UsageError(f"{source}: architecture mismatch: key {key!r} is missing")
        if tuple(own[key].shape) != tuple(state[key].shape):
            raise UsageError(
                f"{source}: architecture mismatch at {key!r}: "
                f"shape {tuple(state[key].shape)} in file, {tuple(own[key].shape)} in model"
            )
    for key in state:
        if key not in own:
            raise UsageError(f"{source}: architecture mismatch: unexpected key {key!r}")


def load_into(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a safetensors file into ``model`` after the architecture check; returns the metadata."""
    state, meta = load_weights(path)
    check_compatible(model, state, str(path))
    model.load_state_dict(state)
    return meta
