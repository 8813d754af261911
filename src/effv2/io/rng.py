"""Capture and restore every global random number generator a training run draws from.

A resumed run must draw the same numbers an uninterrupted run would have drawn (dropout masks,
stochastic depth, augmentation, sampler shuffles), so all four generators are saved:

- Python ``random`` (augmentation code often uses it): MT19937, 624 words + position + cached gauss;
- NumPy's global ``np.random`` (legacy ``RandomState``): MT19937 keys + position + cached gaussian;
- torch's CPU generator (``torch.get_rng_state()``, a uint8 tensor);
- torch's CUDA generator of every device, but only when CUDA is already initialised in this
  process: a CPU-only run never touches CUDA, so capturing it would be both useless and costly.

Nothing here pickles: the state comes back as ``(json_part, tensors)`` — plain JSON-able values and
named tensors — which a checkpoint stores as safetensors metadata and tensors.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

from ..errors import UsageError

_FORMAT = 1


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state of every global generator as ``(json_part, tensors)``; see the module docstring."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    json_part: dict[str, Any] = {
        "format": _FORMAT,
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {
            "kind": np_kind,
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "cuda_devices": 0,
    }
    tensors: dict[str, torch.Tensor] = {
        # uint32 keys widened to int64: exact, and every safetensors reader understands int64.
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        json_part["cuda_devices"] = len(states)
        for i, s in enumerate(states):
            tensors[f"cuda/{i}"] = s
    return json_part, tensors


def restore_rng(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put back the state :func:`capture_rng` returned. Bad input raises :class:`UsageError`.

    CUDA: device i gets the saved state of device i. With fewer devices now than at capture time
    (or no CUDA), the extra states are skipped with a warning: the run continues, not bit-exactly.
    """
    try:
        py = json_part["python"]
        py_state = (
            int(py["version"]),
            tuple(int(x) for x in py["internal"]),
            None if py["gauss_next"] is None else float(py["gauss_next"]),
        )
        npj = json_part["numpy"]
        keys = tensors["numpy_keys"]
        if keys.shape != (624,):
            raise ValueError(f"numpy_keys has shape {tuple(keys.shape)}, expected (624,)")
        np_state = (
            str(npj["kind"]),
            keys.numpy().astype(np.uint32),
            int(npj["pos"]),
            int(npj["has_gauss"]),
            float(npj["cached_gaussian"]),
        )
        cpu = tensors["torch_cpu"]
        n_cuda = int(json_part.get("cuda_devices", 0))
        cuda = [tensors[f"cuda/{i}"] for i in range(n_cuda)]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"RNG state: incomplete or malformed ({type(exc).__name__}: {exc})") from None
    # Validate everything before changing anything, so a bad state leaves all generators as they were.
    try:
        random.Random().setstate(py_state)
        np.random.RandomState().set_state(np_state)
        torch.Generator().set_state(cpu)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"RNG state: rejected by the generator ({exc})") from None
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < len(cuda):
            warnings.warn(
                f"RNG state has {len(cuda)} CUDA generator(s), this process sees {have}; "
                f"restoring {have}, the run will not repeat bit-exactly",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[:have]):
            torch.cuda.set_rng_state(s, i)
