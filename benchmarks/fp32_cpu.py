"""What pays for fp32 training and inference on a CPU without native bf16 (issue 14 item 2).

    python benchmarks/fp32_cpu.py                      # this CPU as it is
    python benchmarks/fp32_cpu.py --isa avx2           # oneDNN and ATen capped at AVX2: an AVX2-only
                                                       # stand-in on a newer CPU (no native bf16)

Every row is one `effv2 bench --json` process (the command is recorded), so each variant starts
cold like a user's run does. A row's effv2 and timm figures are timed interleaved in that one
process (`--compare timm`): the ratio to "timm defaults" (fp32, NCHW, eager, timm's
tf_efficientnetv2 with the same weights) is side by side, the absolute img/s are not comparable
across rows taken minutes apart on a shared VM. The variants, all fp32 (`--amp none`):

    nchw            eager, NCHW (what timm's defaults run)
    channels_last   eager, NHWC in memory (effv2's fp32 default)
    compile-cold    channels_last + torch.compile with an empty inductor cache: first_step_s is
                    the compile a user's first run pays
    compile-warm    the same with the cache the cold row filled (TORCHINDUCTOR_CACHE_DIR kept
                    between the two processes): the compile a second run pays
    threads-1       channels_last on one intra-op thread (the other core idle)
    no-mkldnn       channels_last with torch.backends.mkldnn.enabled = False (ATen's own convs)

"Pays within a 10-minute budget" is computed, not guessed: a 600 s run at the variant's step
time, minus its first-step overhead, against the same at channels_last's.

Smoke run (seconds): python benchmarks/fp32_cpu.py --cases efficientnetv2_pico:32:8:train \
    --variants nchw,channels_last --steps 2 --json /tmp/fp32.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from effv2.bench.compare import reference_for
from effv2.bench.machine import cpu_info

HERE = Path(__file__).resolve().parent
# (model, size, batch, mode): the demo's model as the demo trains and evaluates it, b0 and S at 128 px
VARIANTS = ("nchw", "channels_last", "compile-cold", "compile-warm", "threads-1", "no-mkldnn")
# S is only timed eager (a compile of its training step takes minutes on 2 cores)
CASES = {
    "efficientnetv2_fmnist:28:256:train": VARIANTS,
    "efficientnetv2_fmnist:28:500:infer": ("nchw", "channels_last", "compile-cold", "compile-warm"),
    "efficientnetv2_b0:128:32:train": VARIANTS,
    "efficientnetv2_b0:128:32:infer": ("nchw", "channels_last", "compile-cold", "compile-warm"),
    "efficientnetv2_s:128:32:train": ("nchw", "channels_last"),
}
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NO_MKLDNN = (
    "import sys, torch; torch.backends.mkldnn.enabled = False; from effv2.cli.main import main; sys.exit(main())"
)


def variant_command(case: str, variant: str, steps: int) -> tuple[list[str], dict[str, str]]:
    """The `effv2 bench` argv and extra environment of one (case, variant) row."""
    model, size, batch, mode = case.split(":")
    args = ["bench", "--model", model, "--size", size, "--batch", batch, "--mode", mode, "--amp", "none"]
    args += ["--steps", str(steps), "--warmup", "2", "--json"]
    if reference_for("timm", model) is not None:  # timm has b0..xl, not the small-image models
        args += ["--compare", "timm"]
    args += ["--no-channels-last"] if variant == "nchw" else ["--channels-last"]
    args += ["--compile"] if variant.startswith("compile") else ["--no-compile"]
    if variant == "threads-1":
        args += ["--threads", "1"]
    if mode == "infer":
        args += ["--no-fold-bn"]  # folding is studied in benchmarks/inference.py
    head = [sys.executable, "-c", NO_MKLDNN] if variant == "no-mkldnn" else [sys.executable, "-m", "effv2"]
    return head + args, {}


def run_row(case: str, variant: str, steps: int, env: dict[str, str]) -> dict[str, Any]:
    argv, extra = variant_command(case, variant, steps)
    proc = subprocess.run(argv, env={**os.environ, **env, **extra}, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": case, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    rep = json.loads(proc.stdout[proc.stdout.index("{") :])
    eff = rep["results"][0]
    timm = next((r for r in rep["results"] if r["variant"] == "timm defaults"), None)
    return {
        "case": case,
        "variant": variant,
        "command": shlex.join(["python", "-m", "effv2", *argv[3:]])
        if argv[1] == "-m"
        else "(no-mkldnn) " + shlex.join(argv[3:]),
        "settings": eff["settings"],
        "img_per_s": eff["img_per_s"],
        "step_s": eff["step_s"],
        "first_step_s": eff["first_step_s"],
        "timm_img_per_s": timm["img_per_s"] if timm else None,
        "vs_timm_default": eff["img_per_s"] / timm["img_per_s"] if timm else None,
        "peak_share": eff["peak_share"],
        "machine": rep["machine"],
        "gemm": rep.get("gemm"),
    }


def pays_in(row: dict[str, Any], ref: dict[str, Any], budget_s: float = 600.0) -> float:
    """Steps a ``budget_s`` run gets with ``row``'s settings over those with ``ref``'s, first steps included."""

    def steps(r: dict[str, Any]) -> float:
        return max(0.0, budget_s - (r["first_step_s"] or 0.0) + r["step_s"]) / r["step_s"]

    return steps(row) / steps(ref)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | variant | img/s | vs timm defaults (same process) | first step (s) "
        "| steps in 10 min vs channels_last |",
        "|---|---|---|---|---|---|",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        ref = next((r for r in mine if r["variant"] == "channels_last" and "error" not in r), None)
        for r in mine:
            if "error" in r:
                lines.append(f"| {case} | {r['variant']} | failed: {r['error'][:80]} | | | |")
                continue
            pay = f"{pays_in(r, ref):.2f}x" if ref else "-"
            vs = f"{r['vs_timm_default']:.2f}x" if r["vs_timm_default"] else "(no timm model)"
            lines.append(
                f"| {case} | {r['variant']} | {r['img_per_s']:,.0f} | {vs} | {r['first_step_s']:.1f} | {pay} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", choices=("native", "avx2"), default="native", help="avx2: cap oneDNN and ATen at AVX2")
    p.add_argument("--cases", help="comma-separated model:size:batch:mode (default: the study's five)")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: each case's own)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (median)")
    p.add_argument("--json", default=str(HERE / "fp32_cpu.json"), help="where the rows go")
    args = p.parse_args(argv)
    env = dict(AVX2_ENV) if args.isa == "avx2" else {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="effv2-inductor-") as cache:
        cases = dict.fromkeys(args.cases.split(","), VARIANTS) if args.cases else dict(CASES)
        for case, variants in cases.items():
            case_cache = Path(cache) / case.replace(":", "_")  # cold for each case, warm for its second row
            for variant in args.variants.split(",") if args.variants else variants:
                if variant not in VARIANTS:
                    p.error(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
                row = run_row(case, variant, args.steps, {**env, "TORCHINDUCTOR_CACHE_DIR": str(case_cache)})
                rows.append(row)
                print(
                    json.dumps(
                        {
                            k: row.get(k)
                            for k in ("case", "variant", "img_per_s", "vs_timm_default", "first_step_s", "error")
                        }
                    ),
                    flush=True,
                )
    flags = [f for f in cpu_info()["flags"] if f.startswith(("avx", "amx", "fma"))]
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "isa": args.isa,
        "env": env,
        "cpu_flags": flags,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
