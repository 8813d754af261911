"""Open any saved effv2 model: a checkpoint, a run folder, a model folder or an exported file.

``load(path)`` returns the PyTorch model (eval mode) with ``model.data_config``, ``model.classes``
and ``model.transform`` (a PIL image -> input tensor). ``open_predictor(path)`` also runs exported
``.onnx`` (onnxruntime) and ``.pt2`` (torch.export) files, each with the preprocessing it carries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .data_config import DataConfig

EXPORT_META_KEY = "effv2_config"  # ONNX metadata_props key / .pt2 extra file holding the config JSON
PT2_CONFIG = "effv2_config.json"


def load(path: str | Path, *, prefer_ema: bool = True) -> torch.nn.Module:
    """The model saved at ``path`` (model folder, run folder or checkpoint/.safetensors file), in eval mode.

    ``model.data_config`` (:class:`DataConfig`), ``model.classes`` and ``model.transform`` (a PIL image
    -> float (C, S, S) tensor, preprocessed as ``effv2 eval`` / ``predict`` do) come with it.
    ``path`` may also be any ``--pretrained`` SOURCE (timm / torchvision files and folders,
    ``timm:NAME``, ``torchvision:NAME``; :mod:`effv2.inference.pretrained`).
    """
    from .pretrained import resolve_pretrained

    loaded = resolve_pretrained(path, prefer_ema=prefer_ema).loaded()
    model = loaded.model.eval()
    model.data_config = loaded.data_config
    model.classes = list(loaded.classes)
    model.transform = loaded.data_config.pil_transform(model.in_chans)
    return model


@dataclass
class Predictor:
    """Logits for a preprocessed float batch, whatever the model was saved as."""

    kind: str  # "pytorch" | "onnx" | "torch-export"
    path: Path
    classes: list[str]
    data_config: DataConfig
    in_chans: int
    device: torch.device
    fn: Callable[[torch.Tensor], torch.Tensor]
    weights: str = "model"
    autocast: Any = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _exported_config(raw: str | bytes | None, path: Path) -> dict[str, Any]:
    if not raw:
        raise UsageError(f"{path}: no effv2 config in this exported file (not written by `effv2 export`?)")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: malformed effv2 config ({exc})") from None
    if not isinstance(cfg, dict) or "data_config" not in cfg:
        raise UsageError(f"{path}: malformed effv2 config (no data_config)")
    return cfg


def onnx_session(path: str | Path, device: str = "cpu") -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("running .onnx files needs onnxruntime: pip install 'effv2[export]'") from None
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise UsageError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None


def open_predictor(
    path: str | Path | None, device: str = "auto", batch_size: int = 1, *, pretrained: str | None = None
) -> Predictor:
    """A checkpoint, run folder, model folder or exported file at ``path``, or a ``pretrained`` SOURCE."""
    if pretrained is not None:
        from ..runtime import resolve_runtime
        from .pretrained import resolve_pretrained

        loaded = resolve_pretrained(pretrained).loaded()
        return _torch_predictor(loaded, resolve_runtime(device, batch_size=batch_size))
    p = Path(path)
    if p.suffix == ".onnx" and p.is_file():
        sess = onnx_session(p, device)
        cfg = _exported_config(sess.get_modelmeta().custom_metadata_map.get(EXPORT_META_KEY), p)
        name = sess.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.float().cpu().numpy()})[0])

        return Predictor(
            "onnx",
            p,
            list(cfg["classes"]),
            DataConfig.from_dict(cfg["data_config"]),
            int(cfg["in_chans"]),
            torch.device("cpu"),
            run_onnx,
            cfg.get("weights", "model"),
        )
    from ..runtime import resolve_runtime

    runtime = resolve_runtime(device, batch_size=batch_size)
    if p.suffix == ".pt2" and p.is_file():
        extra = {PT2_CONFIG: ""}
        try:
            ep = torch.export.load(str(p), extra_files=extra)
        except Exception as exc:
            raise UsageError(f"{p}: not a loadable torch.export file ({type(exc).__name__}: {exc})") from None
        cfg = _exported_config(extra[PT2_CONFIG], p)
        module = ep.module().to(runtime.device)

        def run_pt2(x: torch.Tensor) -> torch.Tensor:
            return module(x.to(runtime.device)).float().cpu()

        return Predictor(
            "torch-export",
            p,
            list(cfg["classes"]),
            DataConfig.from_dict(cfg["data_config"]),
            int(cfg["in_chans"]),
            runtime.device,
            run_pt2,
            cfg.get("weights", "model"),
        )
    from ..training.inference import load_for_inference

    return _torch_predictor(load_for_inference(p), runtime)


def _torch_predictor(loaded: Any, runtime: Any) -> Predictor:
    from ..training.inference import fast_inference_model

    model = fast_inference_model(loaded.model, runtime)

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(runtime.input(x.to(runtime.device))).float().cpu()

    return Predictor(
        "pytorch",
        loaded.path,
        list(loaded.classes),
        loaded.data_config,
        loaded.model.in_chans,
        runtime.device,
        run_torch,
        loaded.used,
    )
