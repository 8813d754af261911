"""`effv2 eval --checkpoint RUN_DIR_OR_FILE | --pretrained SOURCE --data DATA [--split test] [--json]`.

The model's own preprocessing (its DataConfig: size, crop fraction, interpolation, mean, std) is
applied to every image, exactly as `effv2 predict` applies it; `--size` changes only the size.
"""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from .train import add_data_args, add_pretrained_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="top-1/top-5 of a trained model on a data split")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="run folder (uses its best checkpoint) or a .safetensors file")
    add_pretrained_arg(which)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--size", type=int, help="evaluation image size (default: the one recorded with the model)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    p.add_argument(
        "--amp",
        default="auto",
        help="auto | none | bf16 | fp16: autocast precision (auto: the device's fast default; none: fp32)",
    )
    p.add_argument("--json", action="store_true")
    add_data_args(p)
    return p


def _shown(names: list[str], limit: int = 8) -> str:
    head = ", ".join(repr(n) for n in names[:limit])
    return f"[{head}, ... ({len(names)} in all)]" if len(names) > limit else f"[{head}]"


def match_classes(imageset, data_classes: list[str], model_classes: list[str], source: str):
    """``imageset`` with its labels mapped by class name onto the model's class indices.

    The same names in another order are remapped (a folder sorts "10" before "2", a CSV manifest
    with numeric labels sorts 2 before 10); any other difference is a one-line UsageError that shows
    both lists.
    """
    if list(data_classes) == list(model_classes):
        return imageset
    if sorted(data_classes) != sorted(model_classes) or len(set(model_classes)) != len(model_classes):
        raise UsageError(
            f"{source}: its classes {_shown(list(data_classes))} are not the model's classes "
            f"{_shown(list(model_classes))}; evaluate on data with the classes the model was trained on"
        )
    from ..data.imagesets import FileImageSet

    index = {name: i for i, name in enumerate(model_classes)}
    to_model = [index[name] for name in data_classes]
    if isinstance(imageset, FileImageSet):
        return FileImageSet(list(imageset.paths), [to_model[lab] for lab in imageset.labels])
    import torch

    from ..data.imagesets import TensorImageSet

    lut = torch.tensor(to_model, dtype=torch.int64, device=imageset.labels.device)
    return TensorImageSet(imageset.images, lut[imageset.labels])


def run(args: argparse.Namespace) -> int:
    from ..data.sources import load_source
    from ..runtime import resolve_runtime
    from ..training.evaluate import evaluate
    from ..training.inference import load_for_inference

    if args.pretrained is not None:
        from ..inference.pretrained import resolve_pretrained

        loaded = resolve_pretrained(args.pretrained).loaded()
    else:
        loaded = load_for_inference(args.checkpoint)
    if args.size is not None and args.size < 8:
        raise UsageError(f"--size must be >= 8, got {args.size}")
    data_config = loaded.data_config.with_size(args.size) if args.size else loaded.data_config
    bundle = load_source(args.data, data_dir=args.data_dir, download=args.download)
    imageset = {
        "test": bundle.test if bundle.test is not None else bundle.val,
        "val": bundle.val,
        "train": bundle.train,
    }[args.split]
    imageset = match_classes(imageset, bundle.classes, loaded.classes, args.data)
    runtime = resolve_runtime(args.device, amp=args.amp, batch_size=args.batch_size)
    model = runtime.place(loaded.model)
    res = evaluate(
        model,
        imageset,
        runtime=runtime,
        data_config=data_config,
        batch_size=args.batch_size,
    )
    if res["n"] == 0:
        raise UsageError(f"{args.data}: the {args.split} split has no readable images to evaluate")
    res.update(
        split=args.split,
        checkpoint=str(loaded.path),
        weights=loaded.used,
        device=str(runtime.device),
        amp=runtime.amp,
        data_config=data_config.to_dict(),
    )
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.split}: top1 {res['top1']:.2f}%  top5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
            f"n {res['n']}  ({loaded.used} weights of {loaded.path})"
        )
    return 0
