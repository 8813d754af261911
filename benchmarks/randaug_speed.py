"""Images/s of the in-memory RandAugment alone: torchvision impl (op per chunk of 8) vs official (op per image).

    .venv/bin/python benchmarks/randaug_speed.py [--repeats 5] [--threads 1]

Cases: Fashion-MNIST-shaped 256x1x28x28 at magnitude 2 and 15, 224 px RGB 32x3x224x224 at 15;
2 ops per image. Each case times the whole batch call (as loader.train_batches makes it), the
median of ``--repeats`` timed runs (all variants interleaved) after one warm-up, on random uint8 images.
Variants: torchvision's op per chunk as ``randaugment_chunks`` makes it (chunks that drew the same op
in one call), the same draws with one call per chunk (what it did before; equal outputs), and the
official impl (an op per image; other outputs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from effv2.data.augment import RANDAUG_CHUNK, ScaledRandAugment, randaugment_chunks
from effv2.data.order import seeded_cpu_rng
from effv2.data.randaugment import randaugment

CASES = [((256, 1, 28, 28), 2.0), ((256, 1, 28, 28), 15.0), ((32, 3, 224, 224), 15.0)]


def _time_all(fns, repeats: int, batches: int) -> list[float]:
    """Median seconds per batch of each, the timed runs interleaved so that load changes hit all alike."""
    for fn in fns:
        fn(0)
    runs: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for fn, out in zip(fns, runs, strict=True):
            t = time.perf_counter()
            for b in range(batches):
                fn(1 + r * batches + b)
            out.append((time.perf_counter() - t) / batches)
    return [statistics.median(r) for r in runs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-ops", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.num_ops} ops")
    head = f"{'batch':>18} {'m':>5} {'tv grouped img/s':>17} {'tv per chunk':>13} {'ratio':>6} {'official':>9}"
    print(head)
    for shape, m in CASES:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        batches = 10 if shape[-1] <= 32 else 3
        tv = ScaledRandAugment(args.num_ops, m)

        def grouped(seed: int, x=x, tv=tv) -> torch.Tensor:
            with seeded_cpu_rng(seed):
                return randaugment_chunks(x, tv)

        def per_chunk(seed: int, x=x, tv=tv) -> torch.Tensor:
            with seeded_cpu_rng(seed):
                return torch.cat([tv(p) for p in x.split(RANDAUG_CHUNK)])

        def official(seed: int, x=x, m=m) -> torch.Tensor:
            return randaugment(x, args.num_ops, m, torch.Generator().manual_seed(seed))

        t_g, t_c, t_o = _time_all([grouped, per_chunk, official], args.repeats, batches)
        n = shape[0]
        cells = f"{n / t_g:>17.0f} {n / t_c:>13.0f} {t_c / t_g:>6.2f} {n / t_o:>9.0f}"
        print(f"{'x'.join(map(str, shape)):>18} {m:>5g} {cells}")


if __name__ == "__main__":
    main()
