"""Read third-party weight files (.pth / .pt / .bin / .safetensors) without running their code.

Pickle-based files are opened only with ``torch.load(..., weights_only=True)``: the restricted
unpickler accepts tensors, numbers, strings and plain containers and refuses anything else (a class,
a function, an ``os.system`` call hidden in ``__reduce__``). There is deliberately no fallback to
``weights_only=False``: a file that needs one is refused with a one-line :class:`UsageError`.

Checkpoints usually wrap the weights. :func:`unwrap_state_dict` takes the first of these keys that
holds a dict of tensors (EMA keys first when ``ema=True``):

    ``state_dict``, ``model``, ``model_state_dict``, ``module``, ``net``, ``weights``
    (EMA: ``state_dict_ema``, ``model_ema``, ``ema``)

and strips a ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (torch.compile) prefix shared by
every key.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .weights import load_weights

PICKLE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".tar")
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module", "net", "weights")
EMA_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "ema")
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _refusal_reason(message: str) -> str:
    """The one useful line of torch's multi-paragraph weights_only error."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"it references {found.group(1)}, which a plain weights file never does"
    found = re.search(r"Unsupported operand (\d+)", message)
    if found:
        return f"pickle opcode {found.group(1)} is not allowed: the file is corrupt or not written by torch.save"
    return "its pickle holds objects other than tensors and plain containers"


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(obj: Any, source: str = "checkpoint", *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict inside a loaded checkpoint (see the module docstring for the keys)."""
    state: Any = obj
    if not _is_tensor_dict(obj):
        if not isinstance(obj, Mapping):
            raise UsageError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
        keys = (*EMA_KEYS, *CONTAINER_KEYS) if ema else CONTAINER_KEYS
        state = next((obj[k] for k in keys if k in obj and _is_tensor_dict(obj[k])), None)
        if state is None:
            found = ", ".join(sorted(map(str, obj))[:8]) or "nothing"
            wanted = "EMA state_dict" if ema else "state_dict"
            raise UsageError(f"{source}: found no {wanted} (top-level keys: {found}; looked for {', '.join(keys)})")
    out = dict(state)
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def safe_torch_load(
    path: str | Path, map_location: str | torch.device = "cpu", *, ema: bool = False
) -> dict[str, torch.Tensor]:
    """Load the state_dict stored in ``path`` without executing code from the file.

    ``.safetensors`` goes through :func:`effv2.io.weights.load_weights`; anything else is read with
    ``torch.load(weights_only=True)`` and never with a fallback. A missing, unreadable or refused
    file raises :class:`UsageError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such weights file")
    if p.suffix == ".safetensors":
        state, _ = load_weights(p)
        return unwrap_state_dict(state, str(p))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(
            f"{p}: refused: not a plain weights file ({_refusal_reason(str(exc))}); it was not loaded"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, garbage bytes, wrong format: all one user error
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{p}: not a readable PyTorch weights file ({type(exc).__name__}: {detail})") from None
    return unwrap_state_dict(obj, str(p), ema=ema)
