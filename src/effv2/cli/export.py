"""`effv2 export --checkpoint RUN_DIR_OR_FILE | --pretrained SOURCE --format FORMAT --out PATH`.

FORMAT is onnx, torch-export, safetensors or folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from .train import add_pretrained_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..inference.export import DEFAULT_TOL, FORMATS

    p = sub.add_parser(
        "export",
        help="export a trained model (BN folded, EMA weights) and check it against PyTorch",
        description="Export the inference model (EMA weights when present, BatchNorm folded, aux BNs dropped) "
        "with its preprocessing and class names, then check the export against the PyTorch model on sample "
        "images (exit 1 above --tol).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="run folder, model folder or .safetensors checkpoint")
    add_pretrained_arg(which)
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt2, .safetensors) or folder (--format folder)")
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's eval size)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (ONNX, torch-export)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto: where to trace and check")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help="max abs logit difference accepted")
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="IMAGE",
        help="image files to check the export on (default: 4 seeded synthetic images at odd sizes)",
    )
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..inference.export import ExportMismatch, export_model

    if args.size is not None and args.size < 8:
        raise UsageError(f"--size must be >= 8, got {args.size}")
    try:
        rep = export_model(
            args.checkpoint,
            args.fmt,
            args.out,
            size=args.size,
            dynamic_batch=args.dynamic_batch,
            device=args.device,
            tol=args.tol,
            check_images=args.check_images,
            pretrained=args.pretrained,
        )
    except ExportMismatch as exc:
        print(f"effv2 export: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "format": rep.format,
                    "out": str(rep.out),
                    "max_abs_diff": rep.max_abs_diff,
                    "top1_agree": rep.top1_agree,
                    "n": rep.n,
                    "tol": rep.tol,
                    "batch_sizes": rep.batch_sizes,
                    "folded_bn": rep.folded_bn,
                    "weights": rep.weights,
                }
            )
        )
    else:
        print(f"exported {rep.format} to {rep.out} ({rep.weights} weights, {rep.folded_bn} BNs folded)")
        print(rep.line())
    return 0
