"""``--pretrained SOURCE``: one job, SOURCE -> (effv2 model, its DataConfig, class names if known).

SOURCE is one of

- ``timm:NAME`` (``timm:tf_efficientnetv2_b0``, ``timm:tf_efficientnetv2_s.in21k``): timm's own
  ``create_model(NAME, pretrained=True)``, i.e. the Hugging Face hub download and its cache
  (``$HF_HOME/hub``; with ``HF_HUB_OFFLINE=1`` the cache only);
- ``torchvision:NAME`` (``torchvision:efficientnet_v2_s``, ``torchvision:efficientnet_v2_s.IMAGENET1K_V1``):
  the weights enum's own ``get_state_dict()``, i.e. torch.hub's download and its cache
  (``$TORCH_HOME/hub/checkpoints/<file>``; torch.hub has no offline switch, so ``HF_HUB_OFFLINE=1``
  or ``EFFV2_OFFLINE=1`` stop it from trying the network when the file is not cached);
- a local path: an effv2 checkpoint, run folder or model folder; a timm hub folder (``config.json``
  naming the ``architecture`` beside ``model.safetensors`` or ``pytorch_model.bin``); or a bare
  timm / torchvision state_dict file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``: pickles are read
  with ``weights_only=True``), whose library is told by its keys and architecture by its shapes.

timm and torchvision weights are converted with :func:`effv2.models.convert.convert` (the
parity-tested pairing) and checked on a seeded batch before use; they carry the source's published
preprocessing (:func:`~effv2.models.convert.source_data_config`). Every failure is one
:class:`~effv2.errors.UsageError` line; when weights are neither cached nor downloadable it names
the file to fetch and the cache path to put it at.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import UsageError
from ..models.convert import (
    SUPPORTED,
    ConversionError,
    SourceArch,
    _build_source,
    convert,
    infer_io,
    load_source_model,
    max_logit_diff,
    resolve_source,
    source_data_config,
    supported_names,
)
from .data_config import DataConfig

PREFIXES = ("timm:", "torchvision:")
PARITY_SIZE, PARITY_TOL = 64, 1e-4  # the on-the-fly conversion check (effv2 convert's tolerance)
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm hub folder's weights, timm's order


@dataclass
class Pretrained:
    """Resolved weights: the effv2 model (fp32, CPU, eval mode) and how its inputs are preprocessed."""

    model: Any  # EfficientNetV2
    data_config: DataConfig
    classes: list[str] | None  # None: the source does not name its classes
    source: str  # SOURCE as given
    kind: str  # "effv2" | "timm" | "torchvision"
    path: Path | None = None  # the file read, when known
    used: str = "model"  # "ema" / "model" (effv2 checkpoints)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else [str(i) for i in range(self.model.num_classes)]

    def loaded(self) -> Any:
        """As :class:`effv2.training.inference.LoadedModel`, what eval, predict and export consume."""
        from ..training.inference import LoadedModel

        dc = self.data_config
        return LoadedModel(
            model=self.model,
            classes=self.class_names(),
            eval_size=dc.size,
            mean=dc.mean,
            std=dc.std,
            path=self.path or Path(self.source),
            used=self.used,
            data_config=dc,
            meta={"pretrained": self.source, **self.meta},
        )


def is_named(source: str) -> bool:
    return str(source).startswith(PREFIXES) and not Path(source).exists()


def resolve_pretrained(source: str | Path, *, prefer_ema: bool = True, flag: str = "--pretrained") -> Pretrained:
    """``SOURCE`` (see the module docstring) as a :class:`Pretrained`; ``flag`` names the option in errors."""
    src = str(source)
    if is_named(src):
        lib, name = src.split(":", 1)
        if not name:
            raise UsageError(f"{flag} {src}: name a model, e.g. {lib}:{supported_names(lib)[0]}")
        try:
            resolve_source(lib, name.split(".", 1)[0])
        except ConversionError as exc:
            raise UsageError(f"{flag} {src}: {exc}") from None
        return _from_timm_hub(src, name, flag) if lib == "timm" else _from_torchvision_hub(src, name, flag)
    p = Path(src).expanduser()
    if not p.exists():
        raise UsageError(
            f"{flag} {src}: no such file or folder (give a weights file or folder, timm:NAME or torchvision:NAME)"
        )
    if p.is_dir():
        cfg = _read_json(p / "config.json")
        if "architecture" in cfg and cfg.get("format") != "effv2-model-folder":
            return _from_timm_folder(src, p, cfg)
        return _from_effv2(src, p, prefer_ema)
    if p.suffix == ".safetensors":
        from ..io.weights import read_metadata

        meta = read_metadata(p)
        if meta.get("spec") or meta.get("card"):
            return _from_effv2(src, p, prefer_ema)
    return _from_state_file(src, p)


# -- effv2 files -----------------------------------------------------------------------------------
def _from_effv2(src: str, p: Path, prefer_ema: bool) -> Pretrained:
    from ..training.inference import load_for_inference

    loaded = load_for_inference(p, prefer_ema=prefer_ema)
    return Pretrained(
        loaded.model.eval(),
        loaded.data_config,
        list(loaded.classes),
        src,
        "effv2",
        loaded.path,
        loaded.used,
        dict(loaded.meta),
    )


# -- timm / torchvision state_dicts ----------------------------------------------------------------
def detect_library(state: dict[str, torch.Tensor], where: str) -> str:
    """``"timm"`` or ``"torchvision"`` from the stem key of an EfficientNetV2 state_dict."""
    if "conv_stem.weight" in state:
        return "timm"
    if "features.0.0.weight" in state:
        return "torchvision"
    first = ", ".join(list(state)[:3])
    raise UsageError(
        f"{where}: not timm, torchvision or effv2 EfficientNetV2 weights (no conv_stem.weight or "
        f"features.0.0.weight; first keys: {first})"
    )


def _n_blocks(library: str, state: dict[str, torch.Tensor]) -> int:
    pattern = r"blocks\.(\d+)\.(\d+)\." if library == "timm" else r"features\.(\d+)\.(\d+)\.block\."
    return len({m.groups() for k in state if (m := re.match(pattern, k))})


def detect_arch(library: str, state: dict[str, torch.Tensor], where: str) -> SourceArch:
    """The supported architecture whose tensors (names and shapes) are exactly ``state``'s.

    timm's ``efficientnetv2_X`` and ``tf_efficientnetv2_X`` hold the same tensors (they differ in
    padding and BN eps); the name in the file or folder path decides, else this is refused.
    """
    from ..models import get_card

    num_classes, in_chans = infer_io(library, state)
    n = _n_blocks(library, state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for arch in SUPPORTED.values():
        if arch.source != library or get_card(arch.model).spec.num_blocks != n:
            continue
        built = _build_source(arch, arch.name, num_classes, in_chans).state_dict()
        if {k: tuple(v.shape) for k, v in built.items()} == shapes:
            fits.append(arch)
    if not fits:
        raise UsageError(
            f"{where}: {library} weights of no supported EfficientNetV2 ({n} blocks); "
            f"supported: {', '.join(supported_names(library))}"
        )
    if len(fits) > 1:
        named = [a for a in fits if a.name in where.lower()]
        longest = max((len(a.name) for a in named), default=0)
        named = [a for a in named if len(a.name) == longest]
        if len(named) != 1:
            names = " or ".join(a.name for a in fits)
            raise UsageError(
                f"{where}: these {library} weights fit {names} (same tensors, different padding); put the "
                f"architecture in the file name, or convert with `effv2 convert --from {library} --model NAME`"
            )
        return named[0]
    return fits[0]


def _convert_checked(library: str, module: torch.nn.Module, arch: SourceArch, where: str) -> Any:
    module = module.float().eval()
    model = convert(library, module, src_name=arch.name).eval()
    diff = max_logit_diff(module, model, image_size=PARITY_SIZE)
    if not diff <= PARITY_TOL:
        raise ConversionError(
            f"{where}: the converted model disagrees with the {library} model (max |logit diff| {diff:.2e} "
            f"at {PARITY_SIZE} px, tolerance {PARITY_TOL:g})"
        )
    return model


def _converted(
    src: str,
    library: str,
    module: torch.nn.Module,
    arch: SourceArch,
    where: str,
    *,
    path: Path | None,
    classes: list[str] | None,
    data_config: DataConfig | None = None,
) -> Pretrained:
    model = _convert_checked(library, module, arch, where)
    dc = data_config or model.data_config or DataConfig.from_card(model.card)
    model.data_config = dc  # save_weights records it
    if classes is not None and len(classes) != model.num_classes:
        classes = None
    return Pretrained(model, dc, classes, src, library, path, "model", {"converted_from": f"{library} {arch.name}"})


def _from_state_file(src: str, p: Path) -> Pretrained:
    from ..io.torch_load import safe_torch_load

    state = safe_torch_load(p)
    library = detect_library(state, str(p))
    arch = detect_arch(library, state, str(p))
    module = load_source_model(library, arch.name, state)
    return _converted(src, library, module, arch, str(p), path=p, classes=None)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    return out if isinstance(out, dict) else {}


def _from_timm_folder(src: str, p: Path, cfg: dict[str, Any]) -> Pretrained:
    """A timm hub folder (what ``timm.models.push_to_hub`` writes, a hub snapshot): its config.json
    names the architecture and carries the pretrained_cfg the preprocessing is read from."""
    from ..io.torch_load import safe_torch_load

    name = str(cfg["architecture"])
    arch = resolve_source("timm", name)
    files = [p / f for f in HF_FILES if (p / f).is_file()]
    if not files:
        raise UsageError(f"{p}: a timm folder ({name}) without {' or '.join(HF_FILES)}")
    state = safe_torch_load(files[0])
    module = load_source_model("timm", name, state)
    extra = cfg.get("pretrained_cfg")
    if isinstance(extra, dict):
        module.pretrained_cfg = {**dict(getattr(module, "pretrained_cfg", None) or {}), **extra}
    classes = cfg.get("label_names")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    return _converted(src, "timm", module, arch, str(p), path=files[0], classes=classes)


# -- the libraries' own download and cache ---------------------------------------------------------
def offline() -> bool:
    """HF_HUB_OFFLINE (the hub's own switch, read by huggingface_hub at import) or EFFV2_OFFLINE."""
    on = ("1", "true", "yes", "on")
    if any(os.environ.get(k, "").strip().lower() in on for k in ("HF_HUB_OFFLINE", "EFFV2_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _imagenet_names(n: int) -> list[str] | None:
    if n != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        return [d.split(",")[0].strip() for d in ImageNetInfo("imagenet-1k").label_descriptions()]
    except Exception:  # noqa: BLE001 - class names are a nicety; indices serve
        return None


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _from_timm_hub(src: str, name: str, flag: str = "--pretrained") -> Pretrained:
    from ..models.convert import _import_timm

    arch = resolve_source("timm", name)  # unknown or unsupported name: one line listing the valid ones
    timm = _import_timm()
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        tags = timm.list_pretrained(f"{arch.name}.*")
        raise UsageError(f"{flag} {src}: timm has no such pretrained tag; valid: {', '.join(tags)}") from None
    hub_id = (cfg.hf_hub_id if cfg is not None else None) or f"timm/{name}"
    repo = hub_id.split("@", 1)[0]
    try:  # timm's own path: hf_hub_download into (or from) the Hugging Face cache
        module = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - hub, network, cache and file errors: all "not available"
        folder = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
        missing = isinstance(exc, FileNotFoundError)  # huggingface_hub's LocalEntryNotFoundError
        why = ("offline: HF_HUB_OFFLINE=1" if offline() else "no network") if missing else _reason(exc)
        raise UsageError(
            f"{flag} {src}: {hub_id} is not in the Hugging Face cache and could not be downloaded "
            f"({why}); put model.safetensors at {folder}/snapshots/COMMIT/model.safetensors with COMMIT in "
            f"{folder}/refs/main (what `hf download {repo} model.safetensors` writes), or pass the file: "
            f"{flag} FILE"
        ) from None
    classes = _imagenet_names(int(getattr(module, "num_classes", 0)))
    return _converted(src, "timm", module, arch, src, path=None, classes=classes)


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the weights downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _from_torchvision_hub(src: str, name: str, flag: str = "--pretrained") -> Pretrained:
    import torchvision

    base, _, tag = name.partition(".")
    arch = resolve_source("torchvision", base)
    enum = torchvision.models.get_model_weights(base)
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise UsageError(
            f"{flag} {src}: torchvision has no weights {tag!r} for {base}; valid: " + ", ".join(w.name for w in enum)
        ) from None
    cached = torch_hub_file(weights.url)
    if not cached.is_file() and offline():
        raise UsageError(
            f"{flag} {src}: {cached.name} is not in the torch hub cache and downloads are off "
            f"(HF_HUB_OFFLINE / EFFV2_OFFLINE); put {weights.url} at {cached}"
        )
    try:  # torchvision's own loader: torch.hub's cache, download (hash checked) when missing
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - network, hash, truncated or refused file: all "not available"
        where = "is in the torch hub cache but unreadable" if cached.is_file() else "could not be downloaded"
        raise UsageError(
            f"{flag} {src}: {cached.name} {where} ({_reason(exc)}); put {weights.url} at {cached}"
        ) from None
    module = load_source_model("torchvision", arch.name, state)
    classes = list(weights.meta.get("categories") or []) or None
    return _converted(
        src,
        "torchvision",
        module,
        arch,
        src,
        path=cached,
        classes=classes,
        data_config=source_data_config(arch, weights=weights),
    )
