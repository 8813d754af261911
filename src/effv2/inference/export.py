"""Export a trained model for deployment: ONNX, torch.export (.pt2), folded safetensors, model folder.

Every export is of the inference model (EMA weights when the checkpoint has them, BatchNorm folded
into the convs, AdvProp's aux BNs dropped: ``fold_bn``), carries its preprocessing and class names
(ONNX metadata_props / a .pt2 extra file / safetensors metadata, key ``effv2_config``), and is
checked against the PyTorch model on sample images before this returns: the max abs logit
difference and top-1 agreement are reported, and :class:`ExportMismatch` is raised above tolerance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .data_config import DataConfig
from .load import EXPORT_META_KEY, PT2_CONFIG

FORMATS = ("onnx", "torch-export", "safetensors", "folder")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2", "safetensors": ".safetensors", "folder": ""}
DEFAULT_TOL = 1e-3  # max abs logit difference accepted (fp32; folding alone moves logits ~1e-5)
ONNX_OPSET = 17


class ExportMismatch(Exception):
    """The exported model's logits differ from the PyTorch model's by more than the tolerance."""


@dataclass
class ExportReport:
    format: str
    out: Path
    max_abs_diff: float = 0.0
    top1_agree: int = 0
    n: int = 0
    tol: float = DEFAULT_TOL
    batch_sizes: list[int] = field(default_factory=list)
    folded_bn: int = 0
    weights: str = "model"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tol

    def line(self) -> str:
        return (
            f"check: max |logit diff| {self.max_abs_diff:.3g} (tolerance {self.tol:g}), "
            f"top-1 agreement {self.top1_agree}/{self.n}, batch sizes {self.batch_sizes}"
        )


def sample_images(dc: DataConfig, n: int = 4, seed: int = 0, in_chans: int = 3) -> torch.Tensor:
    """A seeded batch of smooth random RGB images of varied sizes, preprocessed by ``dc``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h, w = dc.size + 7 * i + 3, dc.size + 11 * i + 1
        low = torch.rand(3, max(2, h // 8), max(2, w // 8), generator=g)[None]
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
        img = (img + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)
        out.append(dc.from_uint8((img * 255).round().to(torch.uint8), in_chans))
    return torch.stack(out)


def export_config(loaded: Any, dc: DataConfig) -> dict[str, Any]:
    from .folder import model_config

    cfg = model_config(loaded)
    cfg.update(format="effv2-export", data_config=dc.to_dict(), folded=True)
    return cfg


def _compare(ref: torch.Tensor, got: torch.Tensor, report: ExportReport) -> None:
    ref, got = ref.float().cpu(), got.float().cpu()
    if ref.shape != got.shape:
        raise ExportMismatch(f"exported model returns shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    report.max_abs_diff = max(report.max_abs_diff, float((ref - got).abs().max()))
    report.top1_agree += int((ref.argmax(1) == got.argmax(1)).sum())
    report.n += ref.shape[0]
    report.batch_sizes.append(ref.shape[0])


def _export_onnx(folded: torch.nn.Module, x: torch.Tensor, out: Path, cfg: dict, dynamic: bool) -> None:
    try:
        import onnx
    except ImportError:
        raise UsageError("--format onnx needs the onnx package: pip install 'effv2[export]'") from None
    import warnings

    # The TorchScript-based exporter: 0.5 s for a small model where the dynamo one takes 6-13 s on
    # this CPU, and it needs no onnxscript. Batch is the only dynamic axis; H and W are fixed.
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded,
            (x,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=False,
            dynamic_axes=axes,
        )
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = EXPORT_META_KEY, json.dumps(cfg)
    onnx.save(proto, str(out))


def export_model(
    checkpoint: str | Path | None,
    fmt: str,
    out: str | Path,
    *,
    size: int | None = None,
    dynamic_batch: bool = False,
    device: str = "cpu",
    tol: float = DEFAULT_TOL,
    n_check: int = 4,
    check_images: list[str | Path] | None = None,
    pretrained: str | None = None,
) -> ExportReport:
    """Export ``checkpoint`` (a checkpoint file, run folder or model folder) or the ``pretrained``
    SOURCE (:mod:`effv2.inference.pretrained`) as ``fmt`` to ``out``, then check it."""
    from ..models.fuse import fold_bn
    from ..runtime import resolve_device
    from ..training.inference import load_for_inference

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    if fmt != "folder" and out.is_dir():
        raise UsageError(f"{out}: is a folder; give a file path (e.g. model{SUFFIX[fmt]})")
    if pretrained is not None:
        from .pretrained import resolve_pretrained

        loaded = resolve_pretrained(pretrained).loaded()
    else:
        loaded = load_for_inference(checkpoint)
    dc = loaded.data_config.with_size(size) if size else loaded.data_config
    dev = resolve_device(device)
    ref_model = loaded.model.eval().to(dev)
    if getattr(ref_model, "features_only", False):
        raise UsageError("export: features_only models are not exported")
    folded = fold_bn(ref_model)
    report = ExportReport(fmt, out, tol=tol, folded_bn=int(folded.folded_bn), weights=loaded.used)
    if check_images:  # the user's own files, preprocessed as predict does
        x = torch.stack([dc.load_file(p, loaded.model.in_chans) for p in check_images])
    else:
        x = sample_images(dc, n_check, in_chans=loaded.model.in_chans)
    batches = [x, x[:1]] if dynamic_batch else [x]
    with torch.no_grad():
        refs = [ref_model(b.to(dev)) for b in batches]
    cfg = export_config(loaded, dc)
    out.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "onnx":
        _export_onnx(folded.cpu(), x, out, cfg, dynamic_batch)
        from .load import onnx_session

        sess = onnx_session(out, "cpu")
        name = sess.get_inputs()[0].name
        for b, r in zip(batches, refs):
            _compare(r, torch.from_numpy(sess.run(None, {name: b.numpy()})[0]), report)
    elif fmt == "torch-export":
        dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        with torch.no_grad():
            ep = torch.export.export(folded, (x.to(dev),), dynamic_shapes=dyn)
        torch.export.save(ep, str(out), extra_files={PT2_CONFIG: json.dumps(cfg)})
        module = torch.export.load(str(out)).module()
        with torch.no_grad():
            for b, r in zip(batches, refs):
                _compare(r, module(b.to(dev)), report)
    elif fmt == "safetensors":
        from ..io.weights import save_weights

        save_weights(
            folded.cpu(),
            out,
            metadata={
                "folded": True,
                "classes": cfg["classes"],
                "data_config": cfg["data_config"],
                "weights": loaded.used,
            },
        )
        back = load_for_inference(out).model.to(dev)
        with torch.no_grad():
            for b, r in zip(batches, refs):
                _compare(r, back(b.to(dev)), report)
    else:
        from .folder import write_model_folder
        from .load import load

        write_model_folder(checkpoint, out, loaded=loaded if pretrained is not None else None)
        back = load(out).to(dev)
        if back.data_config != loaded.data_config:
            raise ExportMismatch(f"{out}: the model folder's data config differs: {back.data_config}")
        with torch.no_grad():
            for b, r in zip(batches, refs):
                _compare(r, back(b.to(dev)), report)
    if not report.ok:
        raise ExportMismatch(f"{out}: {report.line()}")
    return report
