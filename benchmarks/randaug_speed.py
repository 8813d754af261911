"""Images/s of the in-memory RandAugment alone: torchvision impl (op per chunk of 8) vs official (op per image).

    .venv/bin/python benchmarks/randaug_speed.py [--repeats 5] [--threads 1]

Cases: Fashion-MNIST-shaped 256x1x28x28 at magnitude 2 and 15, 224 px RGB 32x3x224x224 at 15;
2 ops per image. Each case times the whole batch call (as loader.train_batches makes it), the
median of ``--repeats`` timed runs (old and new interleaved) after one warm-up, on random uint8 images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from effv2.data.augment import ScaledRandAugment, randaugment_chunks
from effv2.data.order import seeded_cpu_rng
from effv2.data.randaugment import randaugment

CASES = [((256, 1, 28, 28), 2.0), ((256, 1, 28, 28), 15.0), ((32, 3, 224, 224), 15.0)]


def _time_pair(old, new, repeats: int, batches: int) -> tuple[float, float]:
    """Median seconds per batch of each, the timed runs interleaved so that load changes hit both alike."""
    old(0), new(0)
    runs: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for fn, out in ((old, runs[0]), (new, runs[1])):
            t = time.perf_counter()
            for b in range(batches):
                fn(1 + r * batches + b)
            out.append((time.perf_counter() - t) / batches)
    return statistics.median(runs[0]), statistics.median(runs[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-ops", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.num_ops} ops")
    print(f"{'batch':>18} {'m':>5} {'torchvision img/s':>18} {'official img/s':>15} {'ratio':>6}")
    for shape, m in CASES:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        batches = 10 if shape[-1] <= 32 else 3
        tv = ScaledRandAugment(args.num_ops, m)

        def old(seed: int, x=x, tv=tv) -> torch.Tensor:
            with seeded_cpu_rng(seed):
                return randaugment_chunks(x, tv)

        def new(seed: int, x=x, m=m) -> torch.Tensor:
            return randaugment(x, args.num_ops, m, torch.Generator().manual_seed(seed))

        t_old, t_new = _time_pair(old, new, args.repeats, batches)
        n = shape[0]
        print(f"{'x'.join(map(str, shape)):>18} {m:>5g} {n / t_old:>18.0f} {n / t_new:>15.0f} {t_old / t_new:>6.2f}")


if __name__ == "__main__":
    main()
