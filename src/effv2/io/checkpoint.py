"""Training checkpoints: one safetensors file, written atomically, never unpickled.

Layout of a checkpoint file (tensor names / metadata keys; every metadata value is a JSON string):

A checkpoint holds named *parts*, each an object with ``state_dict()`` / ``load_state_dict()``:
``save_checkpoint(path, {"model": model, "ema": ema, "optim": optimizer, "scaler": scaler,
"task": task}, state=...)``. How a part is stored follows from what it is, so a new part (a
teacher, a technique's own tensors) needs no new argument and no new code here:

    <part>/<key>                     an nn.Module's state_dict, wrapper prefixes removed ("model", "ema", "task")
    wrapper/<part>/<key>             a wrapper's own state, e.g. AveragedModel's ``n_averaged``
    <part>/state/<param_index>/<name> an optimizer's state tensors (momentum buffers, exp_avg, step, ...)
    <part>/param_groups/<g>/<key>    tensors inside an optimizer's param_groups (e.g. a tensor lr), rarely present
    <part>/<path>                    tensors inside any other part's state_dict (e.g. a GradScaler's, if any)
    rng/<name>                       torch CPU/CUDA generator states, numpy's MT19937 keys
    extra/<name>                     loose tensors a caller adds
    metadata: format, format_version, parts ({name: "module" | "optimizer" | "state"}), state, recipe,
              <part>_class / <part>_state / <part>_param_groups / <part>_param_dtypes (optimizers),
              <part>_state (other parts), rng, card, spec, num_classes, in_chans (of the "model"
              part), effv2_version, torch_version, checksums

Format version 1 (before parts) wrote exactly the "model", "ema" and "optim" parts this way and no
"parts" key; it loads unchanged, its missing parts (a GradScaler, a task's state) named clearly.

Why one file: a single atomic rename (effv2.io.atomic) makes the whole checkpoint appear at
once, so a kill at any moment leaves either the previous complete file or the new complete one.
Why no pickle: safetensors holds only tensors and strings; non-tensor values are JSON, with
tuples and non-string dict keys tagged so they come back exactly as they went in.
``checksums`` holds a CRC32 per tensor, so a file damaged after it was written is refused too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UsageError
from .atomic import atomic_path, keep_previous_copy, remove_stale_temps
from .rng import capture_rng, restore_rng
from .stateful import decode, encode, load_wrapper_state, unwrap, wrapper_state
from .weights import check_compatible

FORMAT = "effv2-checkpoint"
FORMAT_VERSION = 2
WHICH = ("last", "best")

__all__ = [
    "Checkpoint",
    "CheckpointVersionWarning",
    "CheckpointWriteError",
    "checkpoint_path",
    "find_checkpoint",
    "load_checkpoint",
    "previous_path",
    "save_checkpoint",
]


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (full disk, no permission, ...). The previous one is intact."""


class CheckpointVersionWarning(UserWarning):
    """The checkpoint was written by another torch or effv2 version."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read. ``model_state`` / ``ema_state`` are kept only when no
    "model" / "ema" part was given to load them into (e.g. to evaluate or export a checkpoint)."""

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


# -- save -------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from .. import __version__

    return {"effv2_version": __version__, "torch_version": torch.__version__}


def _model_meta(inner: nn.Module) -> dict[str, Any]:
    card = getattr(inner, "card", None)
    if card is None:
        return {}
    return {
        "card": card.to_dict(),
        "spec": inner.spec.to_dict(),
        "num_classes": inner.num_classes,
        "in_chans": inner.in_chans,
    }


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


def _kind(part: Any) -> str:
    if isinstance(part, nn.Module):
        return "module"
    if isinstance(part, torch.optim.Optimizer):
        return "optimizer"
    if callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None)):
        return "state"
    raise UsageError(f"checkpoint: a part must have state_dict() and load_state_dict(), got {type(part).__name__}")


def _check_part_name(name: Any) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ("rng", "extra", "wrapper"):
        raise UsageError(f"checkpoint: part name {name!r} must be lower_snake_case and not rng, extra or wrapper")


def _save_part(name: str, part: Any, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if kind == "module":
        inner, wrappers = unwrap(part)
        if name == "model":
            meta.update(_model_meta(inner))
        for k, v in inner.state_dict().items():
            if not isinstance(v, torch.Tensor):
                raise UsageError(f"checkpoint: {name} state {k!r} is a {type(v).__name__}, not a tensor")
            tensors[f"{name}/{k}"] = v
        for k, v in wrapper_state(wrappers).items():
            tensors[f"wrapper/{name}/{k}"] = v
    elif kind == "optimizer":
        sd = part.state_dict()
        meta[f"{name}_class"] = type(part).__name__
        meta[f"{name}_state"] = encode(sd["state"], f"{name}/state", tensors)
        meta[f"{name}_param_groups"] = encode(sd["param_groups"], f"{name}/param_groups", tensors)
        # state_dict numbers parameters in param_groups order; their dtypes tell load_checkpoint
        # whether the setup is unchanged (then state dtypes are kept exactly, see _keep_state_dtypes).
        meta[f"{name}_param_dtypes"] = [str(p.dtype) for g in part.param_groups for p in g["params"]]
    else:
        meta[f"{name}_state"] = encode(part.state_dict(), name, tensors)


def save_checkpoint(
    path: str | Path,
    parts: Mapping[str, Any],
    *,
    state: dict[str, Any],
    recipe: dict[str, Any] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    rng: bool = True,
    keep_previous: bool = True,
) -> None:
    """Write a training checkpoint of ``parts`` (name -> object; None values are left out) to
    ``path`` atomically (see the module docstring for the layout).

    ``state`` and ``recipe`` must be JSON-able (tuples and non-string keys are kept exactly).
    ``keep_previous``: the file being replaced stays available as ``<stem>.prev.safetensors``.
    On a write failure raises :class:`CheckpointWriteError`; the previous checkpoint is intact
    and no temporary file is left. Call it on one process only (rank 0).
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target}: is a folder, expected a checkpoint file path")
    if not isinstance(parts, Mapping):
        raise UsageError(f"checkpoint: parts must map names to objects, got {type(parts).__name__}")
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint: state must be a dict, got {type(state).__name__}")
    if recipe is not None and not isinstance(recipe, dict):
        raise UsageError(f"checkpoint: recipe must be a dict or None, got {type(recipe).__name__}")

    # Everything that can fail on bad input is done before any file is touched.
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **_versions()}
    kinds: dict[str, str] = {}
    for name, part in parts.items():
        _check_part_name(name)
        if part is not None:
            kinds[name] = _kind(part)
            _save_part(name, part, kinds[name], tensors, meta)
    meta["parts"] = kinds
    if rng:
        rng_json, rng_tensors = capture_rng()
        meta["rng"] = rng_json
        tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
    for k, v in (extra or {}).items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UsageError(f"checkpoint: extra must map names to tensors; {k!r} is a {type(v).__name__}")
        tensors[f"extra/{k}"] = v
    meta["state"] = encode(state, "state", None)
    meta["recipe"] = None if recipe is None else encode(recipe, "recipe", None)

    tensors = _prepare(tensors)
    meta["checksums"] = {k: _crc(t) for k, t in tensors.items()}
    str_meta = {k: json.dumps(v) for k, v in meta.items()}

    previous = "the previous checkpoint is intact" if target.exists() else "no checkpoint was written"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if keep_previous and target.is_file():
            keep_previous_copy(target, previous_path(target))
        need = sum(t.nbytes for t in tensors.values()) + sum(len(k) + len(v) for k, v in str_meta.items())
        free = shutil.disk_usage(target.parent).free
        if free < need:
            raise CheckpointWriteError(
                f"could not write checkpoint {target}: {os.strerror(28)} (needs {need / 2**20:.1f} MiB, "
                f"{free / 2**20:.1f} MiB free); {previous}"
            )
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=str_meta)
    except (OSError, SafetensorError) as exc:
        raise CheckpointWriteError(f"could not write checkpoint {target}: {_os_reason(exc)}; {previous}") from exc
    remove_stale_temps(target, previous_path(target))


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
        raise UsageError(
            f"{path}: not an effv2 training checkpoint (no format={FORMAT!r} in its metadata; "
            f"a weights file loads with effv2.io.weights.load_into)"
        )
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise UsageError(
            f"{path}: checkpoint format version {meta.get('format_version')!r}; this effv2 reads up to {FORMAT_VERSION}"
        )
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
    diffs = [
        f"{name} {meta.get(key)} (this is {now[key]})"
        for name, key in (("torch", "torch_version"), ("effv2", "effv2_version"))
        if _public(meta.get(key)) != _public(now[key])
    ]
    if not diffs:
        return
    msg = f"{path}: written by {', '.join(diffs)}"
    if strict:
        raise UsageError(msg + "; refused (strict_versions)")
    warnings.warn(msg, CheckpointVersionWarning, stacklevel=3)


def _check_optimizer(
    path: Path, name: str, meta: dict[str, Any], sd: dict[str, Any], optimizer: torch.optim.Optimizer
) -> None:
    if meta.get(f"{name}_class") != type(optimizer).__name__:
        raise UsageError(
            f"{path}: optimizer mismatch: file has {meta.get(f'{name}_class')} state, "
            f"the optimizer is {type(optimizer).__name__}"
        )
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


def _v1_parts(meta: dict[str, Any]) -> dict[str, str]:
    """The parts a version-1 checkpoint has (it had no "parts" metadata): model and EMA weights where
    present, the optimizer when its state was saved."""
    return {"model": "module", "ema": "module", **({"optim": "optimizer"} if "optim_state" in meta else {})}


def _load_states(path: Path, plan: list[tuple[str, Any, str, Any]]) -> None:
    """Load the parts that can still refuse (anything that is neither a module nor an optimizer, e.g. a
    GradScaler): all of them or, on a refusal, none (the ones already loaded are put back)."""
    done: list[tuple[Any, Any]] = []
    for name, part, kind, loaded in plan:
        if kind != "state":
            continue
        backup = part.state_dict()
        try:
            part.load_state_dict(loaded)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            for p, b in reversed(done):
                p.load_state_dict(b)
            raise UsageError(f"{path}: {name} state does not load ({type(exc).__name__}: {exc})") from None
        done.append((part, backup))


def _empty(part: Any, kind: str) -> bool:
    """A part with nothing to restore (a stateless task), which an older file may lack."""
    return kind == "module" and not unwrap(part)[0].state_dict()


def load_checkpoint(
    path: str | Path,
    parts: Mapping[str, Any] | None = None,
    *,
    restore_rng_state: bool = True,
    strict_versions: bool = False,
    optional: tuple[str, ...] = (),
) -> Checkpoint:
    """Read a checkpoint and load it into ``parts`` (name -> object, as saved; None values are
    skipped). Never unpickles.

    Everything is checked (completeness, checksums, architecture, optimizer shape, that every part
    is in the file) before anything is changed, so a refused checkpoint leaves every part and the
    RNGs untouched. A part the file lacks is an error unless it is named in ``optional`` (then it
    keeps its fresh state) or has no state at all. A different torch or effv2 version warns
    (:class:`CheckpointVersionWarning`), or with ``strict_versions`` raises :class:`UsageError`.
    """
    p = Path(path)
    meta, tensors = _read(p)
    _check_versions(p, meta, strict_versions)
    src = str(p)
    try:
        state = decode(meta.get("state", {}), {}, src)
        recipe = decode(meta.get("recipe"), {}, src)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{p}: metadata 'state' or 'recipe' is malformed ({exc})") from None
    if not isinstance(state, dict) or not isinstance(recipe, (dict, type(None))):
        raise UsageError(f"{p}: metadata 'state' and 'recipe' must be JSON objects")
    saved_kinds = meta.get("parts", _v1_parts(meta) if meta.get("format_version") == 1 else {})
    if not isinstance(saved_kinds, dict):
        raise UsageError(f"{p}: metadata 'parts' is malformed")

    # Check every part against the file; nothing is changed yet.
    plan: list[tuple[str, Any, str, Any]] = []  # (name, part, kind, what to load)
    for name, part in (parts or {}).items():
        if part is None:
            continue
        kind = _kind(part)
        section = _section(tensors, name)
        present = saved_kinds.get(name) == kind and (kind != "module" or bool(section))
        what = {"optimizer": "optimizer state", "module": f"{name!r} weights"}.get(kind, f"{name!r} state")
        if not present:
            if name in optional or _empty(part, kind):
                continue
            raise UsageError(f"{p}: the checkpoint has no {what} (saved without an {name!r} part)")
        try:
            if kind == "module":
                check_compatible(unwrap(part)[0], section, src if name == "model" else f"{src} ({name})")
                plan.append((name, part, kind, section))
            elif kind == "optimizer":
                sd = {
                    "state": decode(meta[f"{name}_state"], tensors, src),
                    "param_groups": decode(meta[f"{name}_param_groups"], tensors, src),
                }
                _check_optimizer(p, name, meta, sd, part)
                plan.append((name, part, kind, sd))
            else:
                plan.append((name, part, kind, decode(meta[f"{name}_state"], tensors, src)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{p}: {what} is malformed ({type(exc).__name__}: {exc})") from None

    # Applied from the ones that can still refuse (other states, then the RNGs, which restore_rng
    # validates first) to those that cannot (modules and optimizers, checked above).
    _load_states(p, plan)
    if restore_rng_state and "rng" in meta:
        restore_rng(meta["rng"], _section(tensors, "rng"))
    for name, part, kind, loaded in plan:
        if kind == "module":
            inner, wrappers = unwrap(part)
            with torch.no_grad():
                inner.load_state_dict(loaded)
                load_wrapper_state(wrappers, _section(tensors, f"wrapper/{name}"))
        elif kind == "optimizer":
            part.load_state_dict(loaded)
            _keep_state_dtypes(part, loaded, meta.get(f"{name}_param_dtypes"))

    loaded_names = {name for name, *_ in plan}
    model_state, ema_state = _section(tensors, "model"), _section(tensors, "ema")
    return Checkpoint(
        path=p,
        state=state,
        recipe=recipe,
        meta=meta,
        extra=_section(tensors, "extra"),
        model_state=None if "model" in loaded_names else model_state,
        ema_state=None if "ema" in loaded_names or not ema_state else ema_state,
    )
