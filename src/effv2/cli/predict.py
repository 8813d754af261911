"""`effv2 predict --checkpoint RUN_DIR_OR_FILE IMAGE... [--top-k K] [--json]`."""

from __future__ import annotations

import argparse
import json

import torch


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="top-k classes with probabilities for image files")
    p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    p.add_argument("--json", action="store_true")
    return p


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    from ..runtime import resolve_runtime
    from ..training.inference import fast_inference_model, load_for_inference, preprocess_image

    loaded = load_for_inference(args.checkpoint)
    x = torch.stack([preprocess_image(p, loaded) for p in args.images])  # (N, C, S, S)
    runtime = resolve_runtime(args.device, batch_size=x.shape[0])
    model = fast_inference_model(loaded.model, runtime)
    with runtime.autocast():
        probs = model(runtime.input(x.to(runtime.device))).float().softmax(dim=1).cpu()
    k = max(1, min(args.top_k, probs.shape[1]))
    top = probs.topk(k, dim=1)
    out = []
    for path, values, indices in zip(args.images, top.values, top.indices):
        preds = [
            {"class": loaded.classes[i], "index": int(i), "prob": round(float(v), 6)} for v, i in zip(values, indices)
        ]
        out.append({"image": path, "top": preds})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in preds))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0
