"""Benchmarks behind the README's speed claims; each run appends a markdown block to benchmarks/RESULTS.md.

Two studies:

  compare   effv2 vs timm (its default settings, and with exactly effv2's flags), same weights,
            interleaved in one process (issue 4 item 3):
              python benchmarks/bench_models.py compare
            = efficientnetv2_b0 @128 and efficientnetv2_s @128, batch 32, train and infer, 10 steps.
  defaults  what each candidate fast default does, side by side in one process (issue 4 item 2):
              python benchmarks/bench_models.py defaults --model efficientnetv2_b0 --size 128 --batch 32
              python benchmarks/bench_models.py defaults --model efficientnetv2_mini --size 28 --batch 128

Smoke run (seconds, results to a scratch file):
  python benchmarks/bench_models.py compare --steps 2 --warmup 1 --size 32 --batch 2 --out /tmp/R.md
  python benchmarks/bench_models.py defaults --model efficientnetv2_pico --size 32 --batch 2 --steps 2 \
      --warmup 1 --no-compile --out /tmp/R.md

Every block records the command, CPU model and cores (lscpu), GPU, torch version, date, absolute
img/s and the ratios. Timings are medians over interleaved steps (A, B, A, B, ...), so ratios stay
meaningful on a loaded machine even when absolute numbers do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

from effv2.bench.compare import BenchConfig, Settings, interleave, make_step, run_bench
from effv2.bench.machine import cpu_info, describe, fast_defaults
from effv2.bench.timing import resolve_device
from effv2.models import create_model, get_card

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_line(device: str) -> str:
    d = describe(device)
    info = cpu_info()
    gpu = f", GPU {d['gpu']} (CUDA {d['cuda']})" if "gpu" in d else ""
    return (
        f"CPU {info['model_name']}, {info['cores']} cores ({info['logical_cpus']} logical), "
        f"{d['torch_threads']} torch threads{gpu}; torch {d['torch']}, python {d['python']}"
    )


def header(title: str, device: str) -> list[str]:
    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    return [
        f"## {title}",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{cmd}`",
        f"- machine: {machine_line(device)}",
        "",
    ]


# ---- compare ------------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> list[str]:
    lines = header("effv2 vs timm (same weights, interleaved)", args.device)
    lines += [
        "| model | px | mode | batch | effv2 settings | effv2 img/s | reference | ref defaults img/s "
        "| ref same-flags img/s | effv2 / defaults | effv2 / same flags | effv2 % peak | logits max diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reports = []
    for model in args.models:
        for mode in args.modes:
            cfg = BenchConfig(
                model=model,
                image_size=args.size,
                batch_size=args.batch,
                mode=mode,
                steps=args.steps,
                warmup=args.warmup,
                compare=tuple(args.libs),
                device=args.device,
            )
            r = run_bench(cfg)
            reports.append(r)
            eff = r["results"][0]
            for lib in args.libs:
                rows = {x["variant"]: x for x in r["results"] if x["library"] == lib}
                if not rows:
                    continue
                d = rows.get(f"{lib} defaults")
                s = rows.get(f"{lib} same flags", d)  # equal when effv2 runs plain fp32
                share = f"{100 * eff['peak_share']:.1f}%" if eff["peak_share"] else "?"
                lines.append(
                    f"| {model} | {args.size} | {mode} | {args.batch} | {eff['settings']} | {eff['img_per_s']:.1f} "
                    f"| {lib} {d['model']} | {d['img_per_s']:.1f} | {s['img_per_s']:.1f} "
                    f"| {eff['img_per_s'] / d['img_per_s']:.2f}x | {eff['img_per_s'] / s['img_per_s']:.2f}x "
                    f"| {share} | {r['logit_check'][lib]['max_abs_diff']:.1g} |"
                )
            print(lines[-1], flush=True)
    notes = sorted({n for r in reports for n in r["notes"]})
    lines += [""] + [f"- note: {n}" for n in notes]
    lines += [
        f"- timm defaults = fp32 eager NCHW; same flags = effv2's settings ({reports[0]['settings_source']}); "
        f"{args.steps} timed steps after {args.warmup} warm-up, median; train = forward + loss + backward "
        "+ SGD step; % peak from FLOPs = 2 x MACs (x3 for train) over the derived peak "
        f"({reports[0]['results'][0]['peak_how']})",
        "",
    ]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(reports, indent=2))
    return lines


# ---- defaults -----------------------------------------------------------------------------------


def _silu_not_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.SiLU):
            m.inplace = False
    return model


# (label, settings, SiLU inplace?) per mode; the first row is the baseline every ratio is against.
def candidates(mode: str, with_compile: bool) -> list[tuple[str, Settings, bool]]:
    S = Settings
    rows = [
        ("fp32 eager NCHW (baseline)", S("none", False, False, False), True),
        ("SiLU not inplace", S("none", False, False, False), False),
        ("channels_last", S("none", True, False, False), True),
        ("bf16 autocast", S("bf16", False, False, False), True),
        ("bf16 + channels_last", S("bf16", True, False, False), True),
    ]
    if mode == "infer":
        rows += [
            ("fold_bn", S("none", False, False, True), True),
            ("fold_bn + channels_last", S("none", True, False, True), True),
            ("fold_bn + bf16 + channels_last", S("bf16", True, False, True), True),
        ]
    if with_compile:
        rows += [
            ("compile", S("none", False, True, False), True),
            ("compile + bf16 + channels_last", S("bf16", True, True, False), True),
        ]
    return rows


def cmd_defaults(args: argparse.Namespace) -> list[str]:
    card = get_card(args.model)
    in_chans = args.in_chans or len(card.mean)
    dev = resolve_device(args.device)
    lines = header(f"candidate fast defaults: {args.model} @ {args.size} px, batch {args.batch}", str(dev))
    lines += [
        f"- current fast_defaults({dev.type}) = {fast_defaults(dev)}; "
        f"mkldnn bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}",
        "",
        "| mode | variant | img/s | ms/step | vs baseline | first step s (incl. compile) |",
        "|---|---|---|---|---|---|",
    ]
    for mode in args.modes:
        cfg = BenchConfig(
            model=args.model,
            image_size=args.size,
            batch_size=args.batch,
            mode=mode,
            steps=args.steps,
            warmup=args.warmup,
            device=str(dev),
            in_chans=in_chans,
        )
        torch.manual_seed(0)
        base = create_model(args.model, in_chans=in_chans)
        steps = {}
        rows = candidates(mode, args.compile)
        if args.only:  # the baseline (first row) is always kept: every ratio is against it
            rows = [rows[0]] + [r for r in rows[1:] if r[0] in args.only]
        for label, s, inplace in rows:
            model = create_model(args.model, in_chans=in_chans)
            model.load_state_dict(base.state_dict())
            if not inplace:
                _silu_not_inplace(model)
            steps[label] = make_step(model, s, cfg, in_chans, dev)
        timed = interleave(steps, batch_size=args.batch, n_steps=args.steps, warmup=args.warmup)
        ref = timed[next(iter(timed))]["img_per_s"]
        for label, t in timed.items():
            first = f"{t['warmup_s'][0]:.2f}" if t["warmup_s"] else "-"
            lines.append(
                f"| {mode} | {label} | {t['img_per_s']:.1f} | {1e3 * t['step_s']:.1f} "
                f"| {t['img_per_s'] / ref:.2f}x | {first} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"- {args.steps} timed steps per variant after {args.warmup} warm-up, interleaved one step "
        "per variant per round, median; train = forward + loss + backward + SGD step; "
        "break-even steps for compile = (first step - step) / (baseline step - compiled step)",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study", required=True)
    c = sub.add_parser("compare", help="effv2 vs timm defaults and timm same-flags (issue 4 item 3)")
    c.add_argument("--models", nargs="+", default=["efficientnetv2_b0", "efficientnetv2_s"])
    c.add_argument("--size", type=int, default=128)
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--libs", nargs="+", default=["timm"], choices=["timm", "torchvision"])
    c.add_argument("--json-out", help="also write the full reports as JSON here")
    d = sub.add_parser("defaults", help="each candidate fast default side by side (issue 4 item 2)")
    d.add_argument("--model", default="efficientnetv2_b0")
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--in-chans", type=int)
    d.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include torch.compile variants (slow to compile)",
    )
    d.add_argument(
        "--only",
        nargs="+",
        metavar="LABEL",
        help="time only these variants (labels as in the table, e.g. 'bf16 + channels_last')",
    )
    for q in (c, d):
        q.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
        q.add_argument("--steps", type=int, default=10)
        q.add_argument("--warmup", type=int, default=3)
        q.add_argument("--device", default="auto")
        q.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
        q.add_argument("--out", default=str(RESULTS), help="markdown file to append to (default benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = cmd_compare(args) if args.study == "compare" else cmd_defaults(args)
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
