"""Inference img/s of every deployable form of a model on this CPU, interleaved in one process (issue 15 item 8).

The study recorded in benchmarks/RESULTS.md and docs/inference-bench.md:

    python benchmarks/inference.py
    = the demo's model (efficientnetv2_mini, 28 px, 1 channel, 10 classes: `effv2 demo`, recipe
      fmnist-cpu) and efficientnetv2_b0 at 224 px (3 channels, 1000 classes), batch 1 and 32.

Smoke run (seconds): python benchmarks/inference.py --case efficientnetv2_pico:32:3:10 --batches 1 \
    --rounds 1 --json /tmp/inference.json

The forms (random weights with random BN statistics, :func:`trained_like`; speed does not depend
on the values):

    eager         the model as built: fp32, NCHW, BatchNorm kept, under torch.inference_mode
    eager_fast    the same model with effv2's fast defaults for this batch size
                  (effv2.bench.machine.fast_defaults: channels_last, bf16 autocast where the CPU
                  computes bf16 natively and the batch is >= 4, BN folded)
    folded        BN folded into the convs (effv2.models.fuse.fold_bn), fp32 NCHW: folding alone
    torch_export  the .pt2 program exactly as `effv2 export --format torch-export --dynamic-batch`
                  writes it (effv2.inference.export.export_model, its parity check included),
                  loaded back with torch.export.load(...).module()
    onnxruntime   the .onnx file `effv2 export --format onnx --dynamic-batch` writes, run by
                  onnxruntime's CPU provider with as many intra-op threads as torch uses

How it is timed: each form's outputs on one fixed batch are compared with eager's first (max abs
logit difference, top-1 agreement). Then every form is warmed up (untimed) and timed in rounds,
A B C D E, A B C D E, ... (effv2.bench.compare.interleave), so load from other processes hits all
forms alike; a round runs each form ``k`` times, ``k`` chosen so that eager's round takes at least
``--min-round-s`` (batch-1 calls of a small model take a millisecond). img/s = images of a round
over the median round time; "best round" over the fastest round (on a shared machine the least
disturbed one).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effv2.bench.compare import interleave
from effv2.bench.machine import ISA_FLAGS, cpu_info, describe, fast_defaults
from effv2.bench.timing import run_timed
from effv2.models import create_model
from effv2.models.fuse import fold_bn
from effv2.runtime import autocast

HERE = Path(__file__).resolve().parent
FORMS: tuple[str, ...] = ("eager", "eager_fast", "folded", "torch_export", "onnxruntime")
# (model, image size, input channels, classes): the demo's model as `effv2 demo` trains it, and b0
CASES: tuple[tuple[str, int, int, int], ...] = (("efficientnetv2_mini", 28, 1, 10), ("efficientnetv2_b0", 224, 3, 1000))
CPU = torch.device("cpu")

Forward = Callable[[], torch.Tensor]  # one batch through one form, on a batch prepared once


def _torch_form(module: nn.Module, x: torch.Tensor, *, amp: str = "none", channels_last: bool = False) -> Forward:
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), NHWC in memory

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast(amp, CPU):
            return module(x)

    return forward


def _onnx_form(path: Path, x: torch.Tensor, threads: int) -> Forward:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name, arr = sess.get_inputs()[0].name, x.numpy().copy()
    return lambda: torch.from_numpy(sess.run(None, {name: arr})[0])


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters and a wider classifier, in place: a freshly built
    model has mean 0 / var 1 BNs (folding them is nearly the identity) and logits of ~0.05, where a
    comparison between forms proves little. Speed does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
    return model


def _repeat(forward: Forward, k: int) -> Callable[[], None]:
    def step() -> None:
        for _ in range(k):
            forward()

    return step


def export_files(model: nn.Module, size: int, workdir: Path) -> dict[str, Path]:
    """``{"torch_export": .pt2, "onnxruntime": .onnx}`` written by effv2's own export path (the one
    behind `effv2 export ... --dynamic-batch`), each checked against the model at export time."""
    from effv2.inference.export import export_model
    from effv2.io.weights import save_weights

    weights = workdir / f"{model.card.name}.safetensors"
    save_weights(model, weights)
    out = {}
    for form, fmt, suffix in (("torch_export", "torch-export", ".pt2"), ("onnxruntime", "onnx", ".onnx")):
        out[form] = workdir / f"{model.card.name}-{size}{suffix}"
        export_model(weights, fmt, out[form], size=size, dynamic_batch=True)
    return out


def forms_for_batch(
    model: nn.Module, files: dict[str, Path], x: torch.Tensor, threads: int
) -> tuple[dict[str, Forward], dict[str, str]]:
    """Every form's forward on batch ``x`` and a line saying how each one runs."""
    fd = fast_defaults("cpu", batch_size=x.shape[0])
    fast = (fold_bn(model) if fd["fold_bn_infer"] else copy.deepcopy(model)).eval()
    exported = torch.export.load(str(files["torch_export"])).module()
    forwards = {
        "eager": _torch_form(copy.deepcopy(model).eval(), x),
        "eager_fast": _torch_form(fast, x, amp=fd["amp"], channels_last=fd["channels_last"]),
        "folded": _torch_form(fold_bn(model).eval(), x),
        "torch_export": _torch_form(exported, x),  # an exported module has no train mode (eval() raises)
        "onnxruntime": _onnx_form(files["onnxruntime"], x, threads),
    }
    how = {
        "eager": "fp32, NCHW, BN kept",
        "eager_fast": f"amp {fd['amp']}, channels_last {fd['channels_last']}, BN folded {fd['fold_bn_infer']}",
        "folded": "fp32, NCHW, BN folded",
        "torch_export": "torch.export .pt2 (BN folded, fp32), .module()",
        "onnxruntime": f"ONNX opset 17 (BN folded), CPUExecutionProvider, {threads} intra-op threads",
    }
    return forwards, how


def measure_case(
    model_name: str,
    size: int,
    in_chans: int,
    num_classes: int,
    *,
    batches: tuple[int, ...] = (1, 32),
    rounds: int = 15,
    warmup: int = 3,
    min_round_s: float = 0.2,
    workdir: Path | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (batch, form): img/s (median round), agreement with eager, settings."""
    threads = torch.get_num_threads()
    torch.manual_seed(seed)
    model = trained_like(create_model(model_name, num_classes=num_classes, in_chans=in_chans), seed).eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = export_files(model, size, Path(workdir or tmp))
        export_s = time.perf_counter() - t0
        rows = []
        for batch in batches:
            x = torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(seed + batch))
            forwards, how = forms_for_batch(model, files, x, threads)
            ref = forwards["eager"]().float()
            checks = {}
            for form, fwd in forwards.items():
                out = fwd().float()
                checks[form] = {
                    "max_abs_diff": float((out - ref).abs().max()),
                    "top1_agree": int((out.argmax(1) == ref.argmax(1)).sum()),
                }
            # k calls per round so that a round of eager lasts >= min_round_s (after one warm call)
            k = max(1, math.ceil(min_round_s / max(run_timed(forwards["eager"]), 1e-6)))
            steps = {form: _repeat(fwd, k) for form, fwd in forwards.items()}
            timed = interleave(steps, batch_size=batch * k, n_steps=rounds, warmup=warmup)
            base = timed["eager"]["img_per_s"]
            for form in FORMS:
                t = timed[form]
                rows.append(
                    {
                        "model": model_name,
                        "size": size,
                        "in_chans": in_chans,
                        "num_classes": num_classes,
                        "batch": batch,
                        "form": form,
                        "how": how[form],
                        "img_per_s": t["img_per_s"],
                        "best_img_per_s": batch * k / min(t["all_step_s"]),  # the fastest round: less load in it
                        "ms_per_batch": 1e3 * t["step_s"] / k,
                        "vs_eager": t["img_per_s"] / base,
                        "calls_per_round": k,
                        "rounds": rounds,
                        "round_s": t["all_step_s"],
                        "export_s": export_s,
                        "n": batch,
                        **checks[form],
                    }
                )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | px | batch | form | how | img/s | best round img/s | ms/batch | vs eager | max abs logit diff "
        "| top-1 agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch']} | {r['form']} | {r['how']} | {r['img_per_s']:,.0f} "
            f"| {r['best_img_per_s']:,.0f} "
            f"| {r['ms_per_batch']:.2f} | {r['vs_eager']:.2f}x | {r['max_abs_diff']:.1e} | {r['top1_agree']}/{r['n']} |"
        )
    return lines


def _case(text: str) -> tuple[str, int, int, int]:
    try:
        name, size, chans, classes = text.split(":")
        return name, int(size), int(chans), int(classes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL:SIZE:CHANNELS:CLASSES") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", type=_case, action="append", help="MODEL:SIZE:CHANNELS:CLASSES (repeatable)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per batch size (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--min-round-s", type=float, default=0.2, help="a round runs each form at least this long")
    p.add_argument("--threads", type=int, help="torch (and onnxruntime) intra-op threads; default torch's")
    p.add_argument("--json", type=Path, default=HERE / "inference.json", help="where the rows go")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    isa = [f for f in ISA_FLAGS if f in cpu_info()["flags"]]
    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    print(f"{cmd}\n{describe('cpu')}", flush=True)  # cpu_label: model name, family and model, ISA flags
    rows = []
    for name, size, chans, classes in args.case or CASES:
        new = measure_case(
            name,
            size,
            chans,
            classes,
            batches=tuple(args.batches),
            rounds=args.rounds,
            warmup=args.warmup,
            min_round_s=args.min_round_s,
        )
        print("\n".join(table(new)[2 if rows else 0 :]), flush=True)
        rows += new
    report = {
        "command": cmd,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {**describe("cpu"), "isa_flags": isa},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
