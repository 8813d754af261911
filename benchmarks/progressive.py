"""Progressive learning vs fixed-size training: same model, same epochs, same recipe otherwise.

    python benchmarks/progressive.py [--model efficientnetv2_mini] [--epochs 12] [--seeds 0] [--data-dir DIR]

Runs `effv2 train` twice per seed on Fashion-MNIST (recipe fmnist-cpu): once as shipped
(progressive, 3 stages 20 -> 28 px with growing RandAugment, mixup and dropout) and once with
``progressive.enabled=false`` (every epoch at 28 px with the final stage's regularization), then
appends wall time, test top-1 and the speed-up to benchmarks/RESULTS.md with the machine and versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch

from effv2.bench.machine import describe
from effv2.training.api import train

HERE = Path(__file__).resolve().parent


def machine() -> str:
    d = describe("cpu")
    return f"{d['cpu']}, {d['cpu_cores']} cores, {d['torch_threads']} torch threads"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnetv2_mini")
    ap.add_argument("--recipe", default="fmnist-cpu")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for label, extra in (("progressive", []), ("fixed size", ["progressive.enabled=false"])):
                s = train(
                    args.model,
                    "fashion-mnist",
                    Path(tmp) / f"{label}-{seed}",
                    recipe=args.recipe,
                    overrides=[*args.overrides, *extra],
                    data_dir=args.data_dir,
                    seed=seed,
                    epochs=args.epochs,
                    quiet=True,
                )
                rows.append(
                    {
                        "variant": label,
                        "seed": seed,
                        "train_s": s["train_s"],
                        "test_top1": s["test_top1"],
                        "img_per_s": s["img_per_s"],
                        "epochs": s["epochs"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

    def mean(variant: str, key: str) -> float:
        vals = [r[key] for r in rows if r["variant"] == variant]
        return sum(vals) / len(vals)

    speedup = mean("fixed size", "train_s") / mean("progressive", "train_s")
    delta = mean("progressive", "test_top1") - mean("fixed size", "test_top1")
    cmd = "python benchmarks/progressive.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Progressive learning vs fixed size ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine()}; torch {torch.__version__}; model {args.model}, recipe {args.recipe}",
        "",
        "| variant | seed | epochs | train time (s) | img/s | test top-1 (%) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['train_s']:.0f} | {r['img_per_s']:.0f} | "
            f"{r['test_top1']:.2f} |"
            for r in rows
        ],
        "",
        f"Progressive learning trained {speedup:.2f}x faster (wall time, mean over seeds) with "
        f"{delta:+.2f} points of test top-1. The paper reports 1.4x-2.2x at equal or better accuracy on ImageNet.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
