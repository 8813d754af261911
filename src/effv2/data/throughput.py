"""Measure how fast ``train_batches`` produces batches: ``python -m effv2.data.throughput SOURCE [options]``.

Prints one line per setting: images per second of the augmentation path alone (no model), so it
can be compared with the model's step time to see whether data loading is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from .loader import train_batches
from .sources import load_source


def measure(imageset, *, batches: int, warmup: int = 2, **kw) -> float:
    """Images per second over ``batches`` batches after ``warmup`` batches."""
    it = train_batches(imageset, **kw)
    for _ in range(warmup):
        next(it)
    start, n = time.perf_counter(), 0
    for _, b in zip(range(batches), it, strict=False):
        n += b.x.shape[0]
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m effv2.data.throughput", description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--randaug", type=float, nargs="+", default=[5.0, 10.0], help="magnitudes to measure")
    p.add_argument("--mixup", type=float, default=0.2)
    p.add_argument("--cutmix", type=float, default=0.0)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bundle = load_source(a.source, data_dir=a.data_dir)
    for m in a.randaug:
        rate = measure(
            bundle.train,
            batches=a.batches,
            batch_size=a.batch_size,
            image_size=a.image_size,
            randaug_magnitude=m,
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            num_classes=bundle.num_classes,
            seed=0,
            epoch=0,
            num_workers=a.workers,
        )
        print(
            f"{a.source}: {rate:,.0f} img/s  (image_size {a.image_size}, batch {a.batch_size}, randaug {m:g}, "
            f"mixup {a.mixup:g}, cutmix {a.cutmix:g}, workers {a.workers}, torch threads {a.threads}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__})"
        )


if __name__ == "__main__":
    main()
