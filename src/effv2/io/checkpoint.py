"""Training checkpoints: one safetensors file, written atomically, never unpickled.

Layout of a checkpoint file (tensor names / metadata keys; every metadata value is a JSON string):

    model/<key>                      the model's state_dict, wrapper prefixes removed
    ema/<key>                        the EMA model's state_dict (optional), same normalisation
    wrapper/{model,ema}/<key>        a wrapper's own state, e.g. AveragedModel's ``n_averaged``
    optim/state/<param_index>/<name> optimizer state tensors (momentum buffers, exp_avg, step, ...)
    optim/param_groups/<g>/<key>     tensors inside param_groups (e.g. a tensor lr), rarely present
    rng/<name>                       torch CPU/CUDA generator states, numpy's MT19937 keys
    extra/<name>                     tensors the trainer adds
    metadata: format, format_version, state, recipe, optim_class, optim_state, optim_param_groups,
              optim_param_dtypes, rng, card, spec, num_classes, in_chans, effv2_version,
              torch_version, checksums

Why one file: a single atomic rename (effv2.io.atomic) makes the whole checkpoint appear at
once, so a kill at any moment leaves either the previous complete file or the new complete one.
Why no pickle: safetensors holds only tensors and strings; non-tensor values are JSON, with
tuples and non-string dict keys tagged so they come back exactly as they went in.
``checksums`` holds a CRC32 per tensor, so a file damaged after it was written is refused too.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UsageError
from .atomic import atomic_path
from .rng import capture_rng, restore_rng
from .weights import check_compatible

FORMAT = "effv2-checkpoint"
FORMAT_VERSION = 1
WHICH = ("last", "best")

__all__ = ["Checkpoint", "CheckpointVersionWarning", "CheckpointWriteError", "checkpoint_path",
           "find_checkpoint", "load_checkpoint", "previous_path", "save_checkpoint"]


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (full disk, no permission, ...). The previous one is intact."""


class CheckpointVersionWarning(UserWarning):
    """The checkpoint was written by another torch or effv2 version."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read. ``model_state`` / ``ema_state`` are kept only when no
    model / EMA was given to load them into (e.g. to evaluate or export a checkpoint)."""

    path: Path
    state: dict[str, Any]
    recipe: dict[str, Any] | None
    meta: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] | None = None
    ema_state: dict[str, torch.Tensor] | None = None


# -- paths ------------------------------------------------------------------------------------------
def checkpoint_path(run_dir: str | Path, which: str) -> Path:
    """``RUN_DIR/checkpoints/{last,best}.safetensors``."""
    if which not in WHICH:
        raise UsageError(f"checkpoint: expected one of {', '.join(WHICH)}, got {which!r}")
    return Path(run_dir) / "checkpoints" / f"{which}.safetensors"


def previous_path(path: str | Path) -> Path:
    """Where ``keep_previous`` keeps the checkpoint a save replaced: last.safetensors -> last.prev.safetensors."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def find_checkpoint(run_dir_or_file: str | Path, which: Literal["last", "best"] = "last") -> Path:
    """A checkpoint file as given, or ``RUN_DIR/checkpoints/<which>.safetensors`` of a run folder.

    Only the exact name is looked up, so temporary files a killed save left behind are never picked.
    """
    p = Path(run_dir_or_file)
    if p.is_file():
        return p
    if not p.exists():
        raise UsageError(f"{p}: no such run folder or checkpoint file")
    candidates = [checkpoint_path(p, which), p / f"{which}.safetensors"]  # a run folder, or its checkpoints/
    for c in candidates:
        if c.is_file():
            return c
    prev = [previous_path(c) for c in candidates if previous_path(c).is_file()]
    hint = f"; a previous one exists: {prev[0]}" if prev else ""
    raise UsageError(f"{p}: no {which!r} checkpoint (looked for {candidates[0]}){hint}")


# -- non-tensor values as tagged JSON ---------------------------------------------------------------
# JSON has no tuples, no non-string keys and no tensors. Tagged one-key objects carry them; a plain
# dict that could be mistaken for a tag is itself written in the tagged "__dict__" form.
_TAGS = ("__tuple__", "__dict__", "__tensor__")


def _encode(obj: Any, where: str, tensors: dict[str, torch.Tensor] | None) -> Any:
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
        return [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
            return {k: _encode(v, f"{where}/{k}", tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, f"{where}/<key>", None), _encode(v, f"{where}/{k}", tensors)]
                             for k, v in obj.items()]}
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":  # numpy scalar -> python number
        return obj.item()
    raise UsageError(f"checkpoint: {where} is of type {type(obj).__name__}, which cannot be stored "
                     f"without pickle; use JSON-able values (numbers, strings, lists, tuples, dicts)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1 and next(iter(obj)) in _TAGS:
            tag, val = next(iter(obj.items()))
            if tag == "__tuple__":
                return tuple(_decode(v, tensors, where) for v in val)
            if tag == "__dict__":
                return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in val}
            if val not in tensors:
                raise UsageError(f"{where}: not a complete checkpoint (tensor {val!r} is missing)")
            return tensors[val]
        return {k: _decode(v, tensors, where) for k, v in obj.items()}
    return obj


# -- wrapped models ---------------------------------------------------------------------------------
def _unwrap(m: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
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
                for name, c in m.named_children() if name != "module"):
            wrappers.append(m)
            m = inner
            continue
        return m, wrappers


def _wrapper_state(wrappers: list[nn.Module]) -> dict[str, torch.Tensor]:
    """A wrapper's own parameters and buffers (AveragedModel: ``n_averaged``)."""
    out: dict[str, torch.Tensor] = {}
    for w in wrappers:
        for k, v in w.state_dict().items():
            if "." not in k:
                out[k] = v
    return out


def _load_wrapper_state(wrappers: list[nn.Module], saved: dict[str, torch.Tensor]) -> None:
    for w in wrappers:
        own = {k: v for k, v in w.state_dict().items() if "." not in k}
        for k, v in own.items():
            if k in saved:
                v.copy_(saved[k])
            elif k == "n_averaged" and int(v) == 0:
                # Weights saved without AveragedModel: count them as one average, or the next
                # update_parameters() would overwrite them with a copy of the model.
                v.fill_(1)


# -- save -------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from .. import __version__

    return {"effv2_version": __version__, "torch_version": torch.__version__}


def _model_meta(inner: nn.Module) -> dict[str, Any]:
    card = getattr(inner, "card", None)
    if card is None:
        return {}
    return {"card": card.to_dict(), "spec": inner.spec.to_dict(), "num_classes": inner.num_classes,
            "in_chans": inner.in_chans}


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy())


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached, and no two tensors sharing memory (safetensors refuses that)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        span = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and span in seen:
            t = t.clone()
        seen.add(span)
        out[k] = t
    return out


def _os_reason(exc: BaseException) -> str:
    """'No space left on device' from an OSError or from safetensors' '... (os error 28)'."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    m = re.search(r"os error (\d+)", str(exc))
    return os.strerror(int(m.group(1))) if m else str(exc)


def _keep_previous(target: Path) -> None:
    """Make ``last.prev.safetensors`` a complete copy of the current ``last.safetensors``.

    A hard link (no data copied) put in place by an atomic rename, so at every moment both names
    hold a complete file; where links are not supported the file is copied (also atomically).
    """
    prev = previous_path(target)
    if prev.exists() and os.path.samefile(prev, target):
        return  # already linked (a failed save before this one); rename() between links is a no-op
    fd, tmp_name = tempfile.mkstemp(prefix=f".{prev.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        os.link(target, tmp_name)
        os.replace(tmp_name, prev)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        with atomic_path(prev) as tmp:
            shutil.copyfile(target, tmp)


def _remove_stale_temps(target: Path) -> None:
    """Temporary files of saves that were killed (never completed, never read)."""
    for name in (target.name, previous_path(target).name):
        for stale in target.parent.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: nn.Module | None = None, state: dict[str, Any], recipe: dict[str, Any] | None = None,
                    extra: dict[str, torch.Tensor] | None = None, rng: bool = True,
                    keep_previous: bool = True) -> None:
    """Write a training checkpoint to ``path`` atomically (see the module docstring for the layout).

    ``state`` and ``recipe`` must be JSON-able (tuples and non-string keys are kept exactly).
    ``keep_previous``: the file being replaced stays available as ``<stem>.prev.safetensors``.
    On a write failure raises :class:`CheckpointWriteError`; the previous checkpoint is intact
    and no temporary file is left. Call it on one process only (rank 0).
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target}: is a folder, expected a checkpoint file path")
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint: state must be a dict, got {type(state).__name__}")
    if recipe is not None and not isinstance(recipe, dict):
        raise UsageError(f"checkpoint: recipe must be a dict or None, got {type(recipe).__name__}")

    # Everything that can fail on bad input is done before any file is touched.
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **_versions()}
    inner, wrappers = _unwrap(model)
    meta.update(_model_meta(inner))
    sections = [("model", inner, wrappers)]
    if ema is not None:
        sections.append(("ema", *_unwrap(ema)))
    for name, module, wraps in sections:
        for k, v in module.state_dict().items():
            if not isinstance(v, torch.Tensor):
                raise UsageError(f"checkpoint: {name} state {k!r} is a {type(v).__name__}, not a tensor")
            tensors[f"{name}/{k}"] = v
        for k, v in _wrapper_state(wraps).items():
            tensors[f"wrapper/{name}/{k}"] = v
    if optimizer is not None:
        sd = optimizer.state_dict()
        meta["optim_class"] = type(optimizer).__name__
        meta["optim_state"] = _encode(sd["state"], "optim/state", tensors)
        meta["optim_param_groups"] = _encode(sd["param_groups"], "optim/param_groups", tensors)
        # state_dict numbers parameters in param_groups order; their dtypes tell load_checkpoint
        # whether the setup is unchanged (then state dtypes are kept exactly, see _keep_state_dtypes).
        meta["optim_param_dtypes"] = [str(p.dtype) for g in optimizer.param_groups for p in g["params"]]
    if rng:
        rng_json, rng_tensors = capture_rng()
        meta["rng"] = rng_json
        tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
    for k, v in (extra or {}).items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UsageError(f"checkpoint: extra must map names to tensors; {k!r} is a {type(v).__name__}")
        tensors[f"extra/{k}"] = v
    meta["state"] = _encode(state, "state", None)
    meta["recipe"] = None if recipe is None else _encode(recipe, "recipe", None)

    tensors = _prepare(tensors)
    meta["checksums"] = {k: _crc(t) for k, t in tensors.items()}
    str_meta = {k: json.dumps(v) for k, v in meta.items()}

    previous = "the previous checkpoint is intact" if target.exists() else "no checkpoint was written"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if keep_previous and target.is_file():
            _keep_previous(target)
        need = sum(t.nbytes for t in tensors.values()) + sum(len(k) + len(v) for k, v in str_meta.items())
        free = shutil.disk_usage(target.parent).free
        if free < need:
            raise CheckpointWriteError(
                f"could not write checkpoint {target}: {os.strerror(28)} (needs {need / 2**20:.1f} MiB, "
                f"{free / 2**20:.1f} MiB free); {previous}")
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=str_meta)
    except (OSError, SafetensorError) as exc:
        raise CheckpointWriteError(f"could not write checkpoint {target}: {_os_reason(exc)}; {previous}") from exc
    _remove_stale_temps(target)


# -- load -------------------------------------------------------------------------------------------
def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata (JSON-decoded) and all tensors, checked against the recorded checksums."""
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    prev = previous_path(path)
    hint = f"; the previous checkpoint is {prev}" if prev.is_file() else ""
    try:
        with safe_open(str(path), framework="pt") as f:  # one open: metadata and tensors of one file
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UsageError(f"{path}: not a complete checkpoint ({exc}){hint}") from None
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            raise UsageError(f"{path}: metadata {k!r} is not JSON; not an effv2 checkpoint") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path}: not an effv2 training checkpoint (no format={FORMAT!r} in its metadata; "
                         f"a weights file loads with effv2.io.weights.load_into)")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise UsageError(f"{path}: checkpoint format version {meta.get('format_version')!r}; this effv2 "
                         f"reads up to {FORMAT_VERSION}")
    sums = meta.get("checksums")
    if not isinstance(sums, dict) or set(sums) != set(tensors):
        raise UsageError(f"{path}: not a complete checkpoint (tensor list does not match its checksums){hint}")
    for k, t in tensors.items():
        if _crc(t) != sums[k]:
            raise UsageError(f"{path}: not a complete checkpoint (checksum mismatch in {k!r}){hint}")
    return meta, tensors


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _public(version: Any) -> str:
    return str(version).split("+", 1)[0]  # 2.14.1+cu130 and 2.14.1 write the same format


def _check_versions(path: Path, meta: dict[str, Any], strict: bool) -> None:
    now = _versions()
    diffs = [f"{name} {meta.get(key)} (this is {now[key]})" for name, key in
             (("torch", "torch_version"), ("effv2", "effv2_version"))
             if _public(meta.get(key)) != _public(now[key])]
    if not diffs:
        return
    msg = f"{path}: written by {', '.join(diffs)}"
    if strict:
        raise UsageError(msg + "; refused (strict_versions)")
    warnings.warn(msg, CheckpointVersionWarning, stacklevel=3)


def _check_optimizer(path: Path, meta: dict[str, Any], sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    if meta.get("optim_class") != type(optimizer).__name__:
        raise UsageError(f"{path}: optimizer mismatch: file has {meta.get('optim_class')} state, "
                         f"the optimizer is {type(optimizer).__name__}")
    saved = [len(g["params"]) for g in sd["param_groups"]]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if saved != own:
        raise UsageError(f"{path}: optimizer mismatch: parameters per group {saved} in file, {own} in optimizer")


def _with_saved_dtypes(current: Any, saved: Any) -> Any:
    if isinstance(current, torch.Tensor) and isinstance(saved, torch.Tensor):
        return current if current.dtype == saved.dtype else saved.to(device=current.device)
    if isinstance(current, (list, tuple)) and isinstance(saved, (list, tuple)) and len(current) == len(saved):
        return type(current)(_with_saved_dtypes(c, s) for c, s in zip(current, saved))
    if isinstance(current, dict) and isinstance(saved, dict):
        return {k: _with_saved_dtypes(v, saved[k]) if k in saved else v for k, v in current.items()}
    return current


def _keep_state_dtypes(optimizer: torch.optim.Optimizer, sd: dict[str, Any], dtypes: list[str] | None) -> None:
    """Undo torch's cast of optimizer state to the parameter's dtype where the setup is unchanged.

    ``Optimizer.load_state_dict`` casts every floating parameter's state tensor (but 'step') to the
    parameter's dtype: an int64 counter, a bool mask, bf16 or fp64 state would come back as fp32.
    Where a parameter has the dtype it had at save time, its state gets the saved dtypes back
    (on the device torch chose); where the parameter's dtype changed, torch's cast stands.
    """
    saved_ids = [i for g in sd["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for n, (i, p) in enumerate(zip(saved_ids, params)):
        if dtypes is None or n >= len(dtypes) or dtypes[n] != str(p.dtype) or i not in sd["state"]:
            continue
        st = optimizer.state[p]
        for key, saved in sd["state"][i].items():
            if key in st:
                st[key] = _with_saved_dtypes(st[key], saved)


def load_checkpoint(path: str | Path, *, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None,
                    restore_rng_state: bool = True, strict_versions: bool = False) -> Checkpoint:
    """Read a checkpoint and load it into whatever is given. Never unpickles.

    Everything is checked (completeness, checksums, architecture, optimizer shape) before
    anything is changed, so a refused checkpoint leaves model, EMA, optimizer and RNGs untouched.
    A different torch or effv2 version warns (:class:`CheckpointVersionWarning`), or with
    ``strict_versions`` raises :class:`UsageError`.
    """
    p = Path(path)
    meta, tensors = _read(p)
    _check_versions(p, meta, strict_versions)
    src = str(p)
    try:
        state = _decode(meta.get("state", {}), {}, src)
        recipe = _decode(meta.get("recipe"), {}, src)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{p}: metadata 'state' or 'recipe' is malformed ({exc})") from None
    if not isinstance(state, dict) or not isinstance(recipe, (dict, type(None))):
        raise UsageError(f"{p}: metadata 'state' and 'recipe' must be JSON objects")

    targets: list[tuple[str, nn.Module]] = []
    model_state, ema_state = _section(tensors, "model"), _section(tensors, "ema")
    if model is not None:
        check_compatible(_unwrap(model)[0], model_state, src)
        targets.append(("model", model))
    if ema is not None:
        if not ema_state:
            raise UsageError(f"{p}: the checkpoint has no EMA weights (saved without ema=)")
        check_compatible(_unwrap(ema)[0], ema_state, f"{src} (ema)")
        targets.append(("ema", ema))
    optim_sd = None
    if optimizer is not None:
        if "optim_state" not in meta:
            raise UsageError(f"{p}: the checkpoint has no optimizer state (saved without optimizer=)")
        try:
            optim_sd = {"state": _decode(meta["optim_state"], tensors, src),
                        "param_groups": _decode(meta["optim_param_groups"], tensors, src)}
            _check_optimizer(p, meta, optim_sd, optimizer)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{p}: optimizer state is malformed ({type(exc).__name__}: {exc})") from None

    # Applied from the one that can still refuse (restore_rng validates first) to those that cannot.
    if restore_rng_state and "rng" in meta:
        restore_rng(meta["rng"], _section(tensors, "rng"))
    with torch.no_grad():
        for name, module in targets:
            inner, wrappers = _unwrap(module)
            inner.load_state_dict(model_state if name == "model" else ema_state)
            _load_wrapper_state(wrappers, _section(tensors, f"wrapper/{name}"))
    if optim_sd is not None:
        optimizer.load_state_dict(optim_sd)
        _keep_state_dtypes(optimizer, optim_sd, meta.get("optim_param_dtypes"))

    return Checkpoint(path=p, state=state, recipe=recipe, meta=meta, extra=_section(tensors, "extra"),
                      model_state=None if model is not None else model_state,
                      ema_state=None if ema is not None or not ema_state else ema_state)
