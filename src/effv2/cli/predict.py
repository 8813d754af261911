"""`effv2 predict --checkpoint PATH | --pretrained SOURCE IMAGE... [--top-k K] [--json]`.

PATH is a run folder, a checkpoint / .safetensors file, a model folder, or a file written by
`effv2 export` (.onnx, run with onnxruntime; .pt2, torch.export); SOURCE is timm / torchvision
weights (a file, a folder, timm:NAME or torchvision:NAME: effv2.inference.pretrained). Each image is decoded and
preprocessed exactly as `effv2 eval` does (the model's DataConfig), whatever the format.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .train import add_pretrained_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="top-k classes with probabilities for image files")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="run folder, model folder, .safetensors, or an exported .onnx / .pt2")
    add_pretrained_arg(which)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    p.add_argument("--json", action="store_true")
    return p


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    from ..inference.load import open_predictor

    pred = open_predictor(args.checkpoint, args.device, batch_size=len(args.images), pretrained=args.pretrained)
    t0 = time.perf_counter()
    x = torch.stack([pred.data_config.load_file(p, pred.in_chans) for p in args.images])  # (N, C, S, S)
    t1 = time.perf_counter()
    probs = pred(x).float().softmax(dim=1).cpu()
    t2 = time.perf_counter()
    k = max(1, min(args.top_k, probs.shape[1]))
    top = probs.topk(k, dim=1)
    out = []
    for path, values, indices in zip(args.images, top.values, top.indices):
        preds = [
            {"class": pred.classes[i], "index": int(i), "prob": round(float(v), 6)} for v, i in zip(values, indices)
        ]
        out.append({"image": path, "top": preds})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in preds))
    if args.json:
        print(json.dumps(out, indent=2))
    n = len(args.images)
    print(
        f"{n} image(s), {pred.kind} on {pred.device}: preprocess {1e3 * (t1 - t0):.1f} ms, "
        f"model {1e3 * (t2 - t1):.1f} ms ({n / max(t2 - t1, 1e-9):.1f} img/s)",
        file=sys.stderr,
    )
    return 0
