"""BatchNorm2d in training (forward + backward) against its channel count, on this CPU: channels-last and
NCHW, with one thread and with torch's thread count, at a fixed number of elements, beside a copy of
the same tensor (the memory-bound floor).

    python benchmarks/bn_width.py [--channels 16,24,32,40,48,64,96] [--batch 256] [--elements 1204224]
                                  [--repeats 30] [--json FILE]

Why: on the 2-core Zen 3 the demo model's 24-channel 14x14 BN ran slower with 2 threads than with 1
(`benchmarks/step_profile.py` puts BN at 31% of the demo's step). ATen's channels-last BN reduces
into one row of C floats per thread; when 4*C bytes is not a multiple of the 64-byte cache line the
threads' rows share a line. Each channel count keeps batch x H x W x C fixed (H = W chosen to fit), so
the rows differ only in C. Times are medians of ``--repeats`` after 5 warm-up calls, with effv2's malloc
settings (as training runs).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from effv2.bench.machine import describe
from effv2.bench.timing import measure
from effv2.runtime.malloc import keep_freed_memory


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after 5 untimed ones (effv2's step timer)."""
    return 1e3 * measure(fn, batch_size=1, steps=repeats, warmup=5)["step_s"]


def side(channels: int, elements: int, batch: int) -> int:
    """The H = W that keeps batch x H x W x channels closest to ``elements``."""
    return max(1, round(math.sqrt(elements / (batch * channels))))


def time_bn(channels: int, hw: int, batch: int, channels_last: bool, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(batch, channels, hw, hw, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.rand(channels, generator=g).add_(0.5).requires_grad_(True)
    b = torch.zeros(channels, requires_grad=True)
    rm, rv = torch.zeros(channels), torch.ones(channels)
    dy = torch.randn(x.shape, generator=g).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )

    def forward() -> torch.Tensor:
        return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-3)

    def forward_backward() -> None:
        forward().backward(dy)
        x.grad = w.grad = b.grad = None

    with torch.no_grad():
        fwd = median_ms(forward, repeats)
    both = median_ms(forward_backward, repeats)
    copy = median_ms(lambda: x.detach().clone(), repeats)
    return {"fwd_ms": fwd, "fwd_bwd_ms": both, "copy_ms": copy}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", default="16,24,32,40,48,64,96")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--elements", type=int, default=256 * 24 * 14 * 14, help="batch x H x W x C (default 24x14x14)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        ap.error(f"--channels {args.channels!r}: expected comma-separated integers")
    keep_freed_memory()
    m = describe("cpu")
    threads = torch.get_num_threads()
    print(f"{m['cpu_label']}; torch {m['torch']}; BN training, batch {args.batch}, ~{args.elements} elements")
    print("| C | HxW | 4C % 64 | layout | threads | fwd ms | fwd+bwd ms | copy ms | fwd+bwd / copy |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c in channels:
        hw = side(c, args.elements, args.batch)
        for layout in ("channels_last", "nchw"):
            for n in sorted({1, threads}, reverse=True):
                torch.set_num_threads(n)
                r = time_bn(c, hw, args.batch, layout == "channels_last", args.repeats)
                rows.append({"channels": c, "hw": hw, "layout": layout, "threads": n, **r})
                print(
                    f"| {c} | {hw}x{hw} | {4 * c % 64} | {layout} | {n} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
                    f"{r['copy_ms']:.2f} | {r['fwd_bwd_ms'] / r['copy_ms']:.1f} |",
                    flush=True,
                )
    torch.set_num_threads(threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "batch": args.batch, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
