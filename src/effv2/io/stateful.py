"""What a checkpoint needs to store state without pickle: tagged JSON for non-tensor values, and
the plain model inside torch.compile / DDP / AveragedModel wrappers (so any wrapping loads into
any other)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UsageError

# -- non-tensor values as tagged JSON ---------------------------------------------------------------
# JSON has no tuples, no non-string keys and no tensors. Tagged one-key objects carry them; a plain
# dict that could be mistaken for a tag is itself written in the tagged "__dict__" form.
_TAGS = ("__tuple__", "__dict__", "__tensor__")


def encode(obj: Any, where: str, tensors: dict[str, torch.Tensor] | None) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise UsageError(f"checkpoint: {where} is a tensor; pass tensors through extra=")
        if where in tensors:
            raise UsageError(f"checkpoint: two values would be stored under the name {where!r}")
        tensors[where] = obj
        return {"__tensor__": where}
    if isinstance(obj, list):
        return [encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
            return {k: encode(v, f"{where}/{k}", tensors) for k, v in obj.items()}
        return {
            "__dict__": [
                [encode(k, f"{where}/<key>", None), encode(v, f"{where}/{k}", tensors)] for k, v in obj.items()
            ]
        }
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":  # numpy scalar -> python number
        return obj.item()
    raise UsageError(
        f"checkpoint: {where} is of type {type(obj).__name__}, which cannot be stored "
        f"without pickle; use JSON-able values (numbers, strings, lists, tuples, dicts)"
    )


def decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1 and next(iter(obj)) in _TAGS:
            tag, val = next(iter(obj.items()))
            if tag == "__tuple__":
                return tuple(decode(v, tensors, where) for v in val)
            if tag == "__dict__":
                return {decode(k, tensors, where): decode(v, tensors, where) for k, v in val}
            if val not in tensors:
                raise UsageError(f"{where}: not a complete checkpoint (tensor {val!r} is missing)")
            return tensors[val]
        return {k: decode(v, tensors, where) for k, v in obj.items()}
    return obj


# -- wrapped models ---------------------------------------------------------------------------------
def unwrap(m: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The plain model inside torch.compile / DDP / DataParallel / AveragedModel / EMA wrappers.

    Returns ``(inner, wrappers)``. A module counts as a wrapper when it has a ``module`` child and
    every other child is stateless (DDP, AveragedModel, timm-style EMA); torch.compile's wrapper
    has ``_orig_mod``. Keys are then those of ``inner``, so any wrapping loads into any other.
    """
    wrappers: list[nn.Module] = []
    while True:
        orig = getattr(m, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            wrappers.append(m)
            m = orig
            continue
        inner = getattr(m, "module", None)
        if isinstance(inner, nn.Module) and all(
            next(c.parameters(), None) is None and next(c.buffers(), None) is None
            for name, c in m.named_children()
            if name != "module"
        ):
            wrappers.append(m)
            m = inner
            continue
        return m, wrappers


def wrapper_state(wrappers: list[nn.Module]) -> dict[str, torch.Tensor]:
    """A wrapper's own parameters and buffers (AveragedModel: ``n_averaged``)."""
    out: dict[str, torch.Tensor] = {}
    for w in wrappers:
        for k, v in w.state_dict().items():
            if "." not in k:
                out[k] = v
    return out


def load_wrapper_state(wrappers: list[nn.Module], saved: dict[str, torch.Tensor]) -> None:
    for w in wrappers:
        own = {k: v for k, v in w.state_dict().items() if "." not in k}
        for k, v in own.items():
            if k in saved:
                v.copy_(saved[k])
            elif k == "n_averaged" and int(v) == 0:
                # Weights saved without AveragedModel: count them as one average, or the next
                # update_parameters() would overwrite them with a copy of the model.
                v.fill_(1)
