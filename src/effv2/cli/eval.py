"""`effv2 eval --checkpoint RUN_DIR_OR_FILE --data SOURCE [--split test] [--json]`."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from .train import add_data_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="top-1/top-5 of a trained model on a data split")
    p.add_argument("--checkpoint", required=True, help="run folder (uses its best checkpoint) or a .safetensors file")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--size", type=int, help="evaluation image size (default: the one recorded with the model)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    p.add_argument("--json", action="store_true")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data.sources import load_source
    from ..runtime import resolve_runtime
    from ..training.evaluate import evaluate
    from ..training.inference import load_for_inference

    loaded = load_for_inference(args.checkpoint)
    bundle = load_source(args.data, data_dir=args.data_dir, download=args.download)
    imageset = {
        "test": bundle.test if bundle.test is not None else bundle.val,
        "val": bundle.val,
        "train": bundle.train,
    }[args.split]
    if len(bundle.classes) != len(loaded.classes):
        raise UsageError(
            f"{args.data} has {len(bundle.classes)} classes but the model was trained on {len(loaded.classes)}"
        )
    runtime = resolve_runtime(args.device, batch_size=args.batch_size)
    model = runtime.place(loaded.model)
    res = evaluate(
        model,
        imageset,
        runtime=runtime,
        image_size=args.size or loaded.eval_size,
        mean=loaded.mean,
        std=loaded.std,
        batch_size=args.batch_size,
    )
    if res["n"] == 0:
        raise UsageError(f"{args.data}: the {args.split} split has no readable images to evaluate")
    res.update(
        split=args.split, checkpoint=str(loaded.path), weights=loaded.used, device=str(runtime.device), amp=runtime.amp
    )
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.split}: top1 {res['top1']:.2f}%  top5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
            f"n {res['n']}  ({loaded.used} weights of {loaded.path})"
        )
    return 0
