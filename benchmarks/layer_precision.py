"""Which convs pay in bf16 on this CPU: every distinct conv of a model, forward + backward, bf16
autocast against fp32 (channels-last, batch 32), then the whole training step with effv2's
per-layer policy (strided depthwise convs in fp32) against plain bf16 autocast everywhere.

    python benchmarks/layer_precision.py [--model efficientnetv2_b0] [--size 128] [--batch 32]
                                         [--threads 2] [--record]

``--record`` appends the table to benchmarks/RESULTS.md with the command, machine and versions.
This is the measurement behind effv2.models.blocks.StridedDepthwiseConv2d.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from effv2.bench.compare import interleave
from effv2.bench.machine import describe
from effv2.bench.timing import build_train_step
from effv2.models import create_model
from effv2.models.blocks import Conv2dSame, StridedDepthwiseConv2d, StridedDepthwiseConv2dSame

HERE = Path(__file__).resolve().parent


def median_ms(fn, n: int = 8, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def conv_inputs(model: nn.Module, size: int, in_chans: int) -> dict[str, tuple[nn.Conv2d, torch.Size]]:
    """Each Conv2d's input shape, from one forward pass (hooks return None: outputs unchanged)."""
    seen: dict[str, tuple[nn.Conv2d, torch.Size]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: seen.setdefault(n, (mod, i[0].shape)) and None)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.randn(2, in_chans, size, size))
    for h in hooks:
        h.remove()
    return seen


def time_conv(conv: nn.Conv2d, shape: torch.Size, batch: int, bf16: bool) -> float:
    x = torch.randn(batch, *shape[1:]).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = conv.weight.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        y.backward(torch.ones_like(y))

    return median_ms(step)


def all_bf16(model: nn.Module) -> nn.Module:
    """The same model with effv2's fp32 strided depthwise convs turned back into plain convs."""
    for m in model.modules():
        if isinstance(m, StridedDepthwiseConv2dSame):
            m.__class__ = Conv2dSame
        elif isinstance(m, StridedDepthwiseConv2d):
            m.__class__ = nn.Conv2d
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnetv2_b0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1000)
    in_chans = model.in_chans

    rows, seen = [], set()
    for name, (conv, shape) in conv_inputs(model, args.size, in_chans).items():
        key = (tuple(shape[1:]), conv.out_channels, conv.kernel_size, conv.stride, conv.groups)
        if key in seen:
            continue
        seen.add(key)
        bf16, fp32 = time_conv(conv, shape, args.batch, True), time_conv(conv, shape, args.batch, False)
        kind = "depthwise" if conv.groups > 1 and conv.groups == conv.in_channels else "dense"
        rows.append(
            (
                name,
                tuple(shape[1:]),
                conv.out_channels,
                conv.kernel_size[0],
                conv.stride[0],
                kind,
                bf16,
                fp32,
                isinstance(conv, StridedDepthwiseConv2d),
            )
        )
        print(f"{name}: bf16 {bf16:.2f} ms, fp32 {fp32:.2f} ms", flush=True)

    policy = create_model(args.model, num_classes=1000)
    plain = all_bf16(create_model(args.model, num_classes=1000))
    plain.load_state_dict(policy.state_dict())
    common = dict(batch_size=args.batch, image_size=args.size, in_chans=in_chans, amp="bf16", channels_last=True)
    timed = interleave(
        {"policy": build_train_step(policy, **common), "all bf16": build_train_step(plain, **common)},
        batch_size=args.batch,
        n_steps=args.steps,
        warmup=3,
    )
    step_policy, step_plain = timed["policy"]["step_s"], timed["all bf16"]["step_s"]

    m = describe("cpu")
    cmd = "python benchmarks/layer_precision.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Per-layer precision on CPU: {args.model} convs, bf16 vs fp32 ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}",
        f"- each distinct conv of {args.model} at {args.size} px, batch {args.batch}, channels-last: forward + "
        "backward (grads for input and weight), median of 8",
        "",
        "| conv | input (C, H, W) | out | k | stride | kind | bf16 ms | fp32 ms | bf16 speed-up | effv2 runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {n} | {s} | {o} | {k} | {st} | {kind} | {b:.2f} | {f:.2f} | {f / b:.2f}x | "
            f"{'fp32' if pol else 'bf16'} |"
            for n, s, o, k, st, kind, b, f, pol in rows
        ],
        "",
        f"Whole training step (bf16 autocast, channels-last, batch {args.batch}, {args.steps} interleaved steps, "
        f"median): effv2's policy {1e3 * step_policy:.0f} ms, every conv in bf16 {1e3 * step_plain:.0f} ms: "
        f"{step_plain / step_policy:.2f}x faster with the strided depthwise convs in fp32.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
