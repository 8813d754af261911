"""`effv2 eval --checkpoint RUN_DIR_OR_FILE --data SOURCE [--split test] [--json]`."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .train import add_data_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="top-1/top-5 of a trained model on a data split")
    p.add_argument("--checkpoint", required=True, help="run folder (uses its best checkpoint) or a .safetensors file")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--size", type=int, help="evaluation image size (default: the one recorded with the model)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true")
    add_data_args(p)
    return p


@torch.no_grad()
def evaluate_imageset(model, imageset, *, size, mean, std, batch_size=256, device="cpu") -> dict:
    from ..data.loader import eval_batches

    correct1 = correct5 = n = 0
    loss = 0.0
    model.eval()
    for batch in eval_batches(imageset, batch_size=batch_size, image_size=size, device=device, mean=mean, std=std):
        if batch.y.shape[0] == 0:  # every file of this batch was unreadable (dropped in eval)
            continue
        logits = model(batch.x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top.eq(batch.y[:, None])
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
        loss += float(F.cross_entropy(logits, batch.y, reduction="sum"))
        n += batch.y.shape[0]
    if n == 0:
        raise UsageError("the split has no images to evaluate")
    return {"top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "loss": loss / n, "n": n}


def run(args: argparse.Namespace) -> int:
    from ..data.sources import load_source
    from ..training.inference import load_for_inference

    loaded = load_for_inference(args.checkpoint)
    bundle = load_source(args.data, data_dir=args.data_dir, download=args.download)
    imageset = {"test": bundle.test if bundle.test is not None else bundle.val, "val": bundle.val,
                "train": bundle.train}[args.split]
    if len(bundle.classes) != len(loaded.classes):
        raise UsageError(f"{args.data} has {len(bundle.classes)} classes but the model was trained on "
                         f"{len(loaded.classes)}")
    res = evaluate_imageset(loaded.model, imageset, size=args.size or loaded.eval_size, mean=loaded.mean,
                            std=loaded.std, batch_size=args.batch_size)
    res.update(split=args.split, checkpoint=str(loaded.path), weights=loaded.used)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.split}: top1 {res['top1']:.2f}%  top5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
              f"n {res['n']}  ({loaded.used} weights of {loaded.path})")
    return 0
