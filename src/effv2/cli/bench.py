"""`effv2 bench --model NAME --size PX --batch B --mode train|infer [--compare timm,torchvision] [--json]`.

Times training steps (forward, loss, backward, optimizer step) or inference batches; prints
images per second, achieved FLOP/s and its share of the machine's peak, and, with --compare,
the same architecture in timm / torchvision (same weights, interleaved in one process) with ratios.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import UsageError


def _libraries(text: str) -> tuple[str, ...]:
    libs = tuple(x.strip() for x in text.split(",") if x.strip())
    if not libs:
        raise argparse.ArgumentTypeError("expected a comma-separated list: timm,torchvision")
    return libs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="images/s, FLOP/s and share of peak; optionally against timm/torchvision")
    p.add_argument("--model", required=True, help="registered model name or spec file (*.json)")
    p.add_argument("--size", type=int, help="image size in px (default: the model's train size)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument(
        "--mode",
        choices=("train", "infer"),
        default="train",
        help="train: forward + loss + backward + optimizer step; infer: forward in inference mode",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant, median reported (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--amp",
        choices=("auto", "none", "bf16", "fp16"),
        default="auto",
        help="autocast precision; auto = effv2's fast default for the device",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format (default: fast default for the device)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: fast default; compile time shows as first_step_s)",
    )
    p.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="infer mode: fold BatchNorm into the convs (default: fast default)",
    )
    p.add_argument(
        "--padding",
        choices=("symmetric", "tf_same"),
        help="effv2 padding (default: the model's; tf_same matches timm's tf_efficientnetv2_b*)",
    )
    p.add_argument(
        "--compare",
        type=_libraries,
        default=(),
        metavar="LIBS",
        help="comma-separated: timm, torchvision; same weights, timed interleaved",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--in-chans", type=int, help="input channels (default: the model card's)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument(
        "--optimizer", choices=("sgd", "adamw", "rmsprop_tf", "rmsprop"), default="sgd", help="train mode (default sgd)"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--replicas",
        type=int,
        help="train mode: shards of the batch trained in parallel, one per core group (default: auto)",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return p


def _fmt_flops(x: float | None) -> str:
    if x is None:
        return "?"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}FLOP/s"
    return f"{x:.3g} FLOP/s"


def print_report(r: dict) -> None:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads"
    print(
        f"{r['model']} {r['mode']} @ {r['image_size']} px, batch {r['batch_size']}, {r['steps']} steps "
        f"(median) after {r['warmup']} warm-up; {m['device']} ({where}), torch {m['torch']}"
    )
    s = r["effv2_settings"]
    src = r["settings_source"]
    print(
        "effv2 settings: "
        + ", ".join(f"{k}={s[k]} ({src[k]})" for k in ("amp", "channels_last", "compile", "fold_bn", "replicas"))
        + f", padding={s['padding']}"
    )
    print(f"cost: {r['macs_per_img'] / 1e6:.1f} M MACs/img forward; {r['flop_note']}")
    print(f"{'variant':<24}{'settings':<46}{'img/s':>10}{'ms/step':>10}{'FLOP/s':>16}{'% peak':>8}{'1st step s':>12}")
    for x in r["results"]:
        share = f"{100 * x['peak_share']:.1f}" if x["peak_share"] is not None else "?"
        first = f"{x['first_step_s']:.2f}" if x["first_step_s"] is not None else "-"
        print(
            f"{x['variant']:<24}{x['settings'][:45]:<46}{x['img_per_s']:>10.1f}{1e3 * x['step_s']:>10.1f}"
            f"{_fmt_flops(x['flop_per_s']):>16}{share:>8}{first:>12}"
        )
    for name, ratio in r["ratios"].items():
        print(f"ratio {name}: {ratio:.2f}x")
    for c in r["logit_check"].values():
        print(f"same weights, same logits: {c['checked']}: max |diff| {c['max_abs_diff']:.2g}")
    peaks: dict[str, list[str]] = {}
    for x in r["results"]:
        peaks.setdefault(x["peak_how"], []).append(x["variant"])
    for how, variants in peaks.items():
        print(f"peak for {', '.join(variants)}: {how}")
    for key, why in r.get("defaults_why", {}).items():
        print(f"default {key}: {why}")
    for precision, g in r.get("gemm", {}).items():
        share = f" = {100 * g['share']:.0f}% of the derived peak" if g["share"] else ""
        print(
            f"{precision} peak: derived {_fmt_flops(g['derived'])}, measured 2048x2048 torch.mm "
            f"{_fmt_flops(g['measured_mm'])}{share}"
        )
    for note in r["notes"]:
        print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    from ..bench.compare import BenchConfig, run_bench
    from ..models import get_card

    card = get_card(args.model)
    if args.in_chans is not None and args.in_chans < 1:
        raise UsageError(f"--in-chans: expected >= 1, got {args.in_chans}")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: expected >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(
        model=args.model,
        image_size=args.size or card.train_size,
        batch_size=args.batch,
        mode=args.mode,
        steps=args.steps,
        warmup=args.warmup,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        fold_bn=args.fold_bn,
        padding=args.padding,
        compare=args.compare,
        device=args.device,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        optimizer=args.optimizer,
        replicas=args.replicas,
    )
    report = run_bench(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
