"""Where one training step's time goes on this machine: a model's step as the trainer runs it with
effv2's fast defaults (the task, backward, the optimizer, EMA), under torch.profiler, as self CPU time
per kind of work, with the convolutions' achieved GFLOP/s set against a large fp32/bf16 GEMM measured
in the same process.

    python benchmarks/step_profile.py [--model efficientnetv2_b0] [--size 128] [--batch 32]
                                      [--in-chans 3] [--num-classes 1000] [--steps 5] [--threads N]
                                      [--amp auto] [--top 12]

    # the demo's step (efficientnetv2_fmnist, 28 px, 1 channel, batch 256)
    python benchmarks/step_profile.py --model efficientnetv2_fmnist --size 28 --batch 256 --in-chans 1 --num-classes 10

Self times are exclusive (an op's children are not counted twice), summed over ``--steps`` profiled
steps after 3 unprofiled ones and divided by the step count. Conv FLOPs come from
torch.utils.flop_counter (forward; the backward counts twice the forward, less the stem's input
gradient, which is not computed). Use it to see what a speed-up could reach before writing one: a
kind of work at 10% of the step cannot make the step more than 1.11x faster.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from effv2.bench.machine import describe, fast_defaults, measured_gemm_flops
from effv2.bench.timing import build_train_step
from effv2.models import create_model
from effv2.runtime.malloc import keep_freed_memory

# aten op name -> kind of work (first match of a prefix wins); anything else is "other"
KINDS: tuple[tuple[str, str], ...] = (
    ("aten::convolution_backward", "conv backward"),
    ("aten::mkldnn_convolution", "conv forward"),
    ("aten::_convolution", "conv forward"),
    ("aten::convolution", "conv forward"),
    ("aten::native_batch_norm_backward", "batch norm backward"),
    ("aten::native_batch_norm", "batch norm forward"),
    ("aten::_batch_norm", "batch norm forward"),
    ("aten::batch_norm", "batch norm forward"),
    ("aten::silu_backward", "activation backward"),
    ("aten::sigmoid_backward", "activation backward"),
    ("aten::silu", "activation forward"),
    ("aten::sigmoid", "activation forward"),
    ("aten::_foreach_", "optimizer and EMA (foreach)"),
    ("aten::mm", "matmul (classifier)"),
    ("aten::addmm", "matmul (classifier)"),
)


def kind_of(name: str) -> str:
    return next((kind for prefix, kind in KINDS if name.startswith(prefix)), "other elementwise and bookkeeping")


def conv_forward_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward conv FLOPs, FLOPs of the input gradient the stem conv does not need)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    per_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for k, v in per_op.items() if "convolution" in str(k))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    stem = FlopCounterMode(display=False)
    with stem, torch.no_grad():
        first(x)
    return float(conv), float(stem.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnetv2_b0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--amp", default="auto", help="auto (effv2's fast default) | none | bf16")
    ap.add_argument("--top", type=int, default=12, help="also list the N ops with the most self time")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.size < 8:
        print("step_profile: --steps and --batch must be >= 1 and --size >= 8", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = keep_freed_memory()
    d = fast_defaults("cpu", batch_size=args.batch)
    amp = d["amp"] if args.amp == "auto" else args.amp
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    if d["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)
    fwd_flops, stem_dgrad = conv_forward_flops(model.eval(), x)
    step = build_train_step(
        model,
        batch_size=args.batch,
        image_size=args.size,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        amp=amp,
        channels_last=d["channels_last"],
    )
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    per_kind: dict[str, float] = {}
    for e in events:
        kind = kind_of(e.key)
        per_kind[kind] = per_kind.get(kind, 0.0) + e.self_cpu_time_total / 1e3 / args.steps
    total = sum(per_kind.values())
    gemm = measured_gemm_flops("bf16" if amp == "bf16" else "fp32")
    m = describe("cpu")
    print(f"{m['cpu_label']}; torch {m['torch']}; {torch.get_num_threads()} threads; malloc: {malloc}")
    print(
        f"{args.model} @{args.size}px batch {args.batch}, in_chans {args.in_chans}, amp {amp}, "
        f"channels_last {d['channels_last']}: {total:.1f} ms of self CPU time a step ({args.steps} steps profiled)\n"
    )
    print("| kind of work | ms a step | share |")
    print("|---|---|---|")
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f}% |")
    fwd_ms = per_kind.get("conv forward", 0.0)
    bwd_ms = per_kind.get("conv backward", 0.0)
    bwd_flops = 2 * fwd_flops - stem_dgrad
    print(f"\nmeasured {amp if amp == 'bf16' else 'fp32'} GEMM (2048^3 torch.mm): {gemm / 1e9:.0f} GFLOP/s")
    if fwd_ms:
        print(f"conv forward:  {fwd_flops / 1e9:.2f} GFLOP in {fwd_ms:.1f} ms = {fwd_flops / fwd_ms / 1e6:.0f} GFLOP/s")
    if bwd_ms:
        print(f"conv backward: {bwd_flops / 1e9:.2f} GFLOP in {bwd_ms:.1f} ms = {bwd_flops / bwd_ms / 1e6:.0f} GFLOP/s")
    print(f"\nthe {args.top} ops with the most self time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"  {e.key:<40s} {e.self_cpu_time_total / 1e3 / args.steps:8.1f} ms  {e.count // args.steps:5d} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
