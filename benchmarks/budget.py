"""Accuracy against training time: the demo's model trained to time budgets, progressive vs fixed size.

    python benchmarks/budget.py [--budgets 2m,5m,10m,30m] [--seeds 0] [--extra-seeds 10m=1]
                                [--variant NAME=KEY=VALUE,KEY=VALUE ...] [--out runs/budget] [--plot FILE]
    python benchmarks/budget.py --replot ROWS.json --plot FILE      # the plot again from recorded rows

Each run is `effv2 train --model efficientnetv2_fmnist --data fashion-mnist --recipe fmnist-cpu
--time-budget B --seed S` in its own process, one after another (never two at once: each run
measures its step times and plans its steps for this machine). Variants default to ``progressive``
(the recipe with ``progressive.min_epochs=0``: progressive at every budget) and ``fixed``
(``progressive.min_epochs=1000000``: the recipe's own fixed-size fallback at every budget, every step at
28 px with the regularization ``progressive.fallback_regularization`` names, the first stage's in
``fmnist-cpu``; the rows recorded before 2026-12-07 17:00 UTC used ``progressive.enabled=false``, the
last stage's); the recipe as shipped picks between the two by its plan's epochs
(``progressive.min_epochs``). Selection is on the validation hold-out; the test split is read once per
run, at its end (summary.json's ``test_top1``). A run folder that already holds a summary.json is reused,
so an interrupted benchmark continues where it stopped, but only when it was made with the same
``--set`` values (``check_reused``). Prints a table, writes the rows to ``--json`` and the plot of test
top-1 against the budget to ``--plot`` (PNG). A row's ``step_ms`` is the first plan's step at each
planned size; for a fallback run from 7979901 on it is the fallback stage's own step (before, the last
progressive stage's, RandAugment included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent
# progressive.min_epochs=0: the progressive arm stays progressive at every budget (the recipe's min_epochs
# would turn a short budget's run into the fixed schedule); min_epochs=1000000: the fixed arm is the recipe's
# fallback at every budget, with the fallback's regularization, as `make demo` trains it
DEFAULT_VARIANTS = {"progressive": ["progressive.min_epochs=0"], "fixed": ["progressive.min_epochs=1000000"]}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    if not name or not sets:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
    return name, [s for s in sets.split(",") if s]


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_reused(out: Path, *, budget: str, seed: int, sets: list[str]) -> None:
    """A run folder is reused (or resumed) only when it was made with the same ``--set`` values: a variant
    whose meaning changed (the fixed arm, 2026-12-07) must not pick up the old arm's folders."""
    config = out / "config.json"
    if not config.exists():
        return
    recorded = json.loads(config.read_text()).get("layers", {}).get("overrides", {}).get("set", {})
    wanted = {"time_budget": budget, "seed": seed, **{k: _value(v) for k, v in (x.split("=", 1) for x in sets)}}
    if recorded != wanted:
        raise SystemExit(f"{out}: holds a run made with {recorded}, not {wanted}; pass another --out")


def run_one(out: Path, *, budget: str, seed: int, sets: list[str], model: str, recipe: str) -> dict:
    """One budgeted training run in its own process (or the summary of a finished one)."""
    summary = out / "summary.json"
    check_reused(out, budget=budget, seed=seed, sets=sets)
    if not summary.exists():
        cmd = [sys.executable, "-m", "effv2", "train", "--model", model, "--data", "fashion-mnist"]
        cmd += ["--recipe", recipe, "--out", str(out), "--time-budget", budget, "--seed", str(seed), "--quiet"]
        cmd += ["--log", "none"] + [w for s in sets for w in ("--set", s)]
        if out.exists():  # a run killed mid-way: continue it (its recorded plan)
            cmd = [sys.executable, "-m", "effv2", "train", "--resume", str(out), "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{out}: effv2 train failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        print(f"  {out.name}: {time.perf_counter() - t0:.0f}s of wall time", flush=True)
    s = json.loads(summary.read_text())
    cfg = json.loads((out / "config.json").read_text())
    plan = cfg.get("plan") or {}
    return {
        "test_top1": s["test_top1"],
        "best_val_top1": s["best_top1"],
        "train_s": s["train_s"],
        "steps": plan.get("steps"),
        "epochs": round(plan["steps"] / plan["steps_per_epoch"], 2) if plan else s["epochs"],
        "planned_s": plan.get("planned_s"),
        "step_ms": [round(1e3 * t, 1) for t in plan.get("step_s", [])],
        "completed": s["completed"],
        "steps_trained": _last_step(out / "metrics.jsonl"),
    }


def _last_step(metrics: Path) -> int | None:
    """Optimizer steps the run made (after its re-plans): the last evaluated epoch's ``step``."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    return next((r["step"] for r in reversed(rows) if "step" in r), None)


def table(rows: list[dict]) -> str:
    """Markdown: one line per (variant, budget), mean over seeds, every seed's figure shown."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["budget_s"]), []).append(r)
    lines = [
        "| variant | budget | seeds | test top-1 (mean) | per seed | best val top-1 | trained "
        "| steps trained | first plan: steps (epochs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per = ", ".join(f"{r['test_top1']:.2f}" for r in rs)
        lines.append(
            f"| {variant} | {rs[0]['budget']} | {len(rs)} | {mean(r['test_top1'] for r in rs):.2f} | {per} | "
            f"{mean(r['best_val_top1'] for r in rs):.2f} | {mean(r['train_s'] for r in rs) / 60:.1f} min | "
            f"{_steps(rs)} | {rs[0]['steps']} ({rs[0]['epochs']}) |"
        )
    return "\n".join(lines)


def _steps(rs: list[dict]) -> str:
    done = [r.get("steps_trained") for r in rs]
    return ", ".join(f"{d:,}" for d in done) if all(d is not None for d in done) else "-"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for variant in sorted({r["variant"] for r in rows}):
        rs = [r for r in rows if r["variant"] == variant]
        budgets = sorted({r["budget_s"] for r in rs})
        means = [mean(r["test_top1"] for r in rs if r["budget_s"] == b) for b in budgets]
        ax.plot([b / 60 for b in budgets], means, marker="o", label=variant)
        ax.scatter([r["budget_s"] / 60 for r in rs], [r["test_top1"] for r in rs], s=10, alpha=0.5)
    ax.set_xscale("log")
    ticks = sorted({r["budget_s"] / 60 for r in rows})  # the budgets themselves, not 2x10^0, 3x10^0, ...
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("time budget (minutes, log scale)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    plt.close(fig)


def title(args: argparse.Namespace, cpu: str) -> str:
    return f"{args.model} / {args.recipe}\n" + textwrap.fill(f"on {cpu}", 72)  # the flags fit the figure


def main(argv: list[str] | None = None) -> int:
    from effv2.bench.machine import describe
    from effv2.cli.demo import DEMO_MODEL, DEMO_RECIPE
    from effv2.config.values import parse_duration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="2m,5m,10m,30m")
    ap.add_argument("--seeds", default="0", help="seeds at every budget (comma-separated)")
    ap.add_argument("--extra-seeds", default="10m=1", help="more seeds at some budgets: 10m=1,2;30m=1")
    ap.add_argument("--variant", type=parse_variant, action="append", help="NAME=KEY=VALUE[,...] (repeatable)")
    ap.add_argument("--model", default=DEMO_MODEL, help=f"default: the demo's ({DEMO_MODEL})")
    ap.add_argument("--recipe", default=DEMO_RECIPE)
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--json", default=None, help="rows as JSON (default OUT/rows.json)")
    ap.add_argument("--plot", default=None, help="PNG of test top-1 against the budget (default OUT/budget.png)")
    ap.add_argument("--replot", default=None, metavar="ROWS.json", help="draw --plot from recorded rows; no training")
    args = ap.parse_args(argv)
    if args.replot:
        recorded = json.loads(Path(args.replot).read_text())
        m = recorded["machine"]
        cpu = m.get("cpu_label") or f"{m['cpu']}, {m['cpu_cores']} cores"
        plot(recorded["rows"], Path(args.plot or Path(args.replot).with_suffix(".png")), title(args, cpu))
        return 0

    variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
    seeds = [int(s) for s in args.seeds.split(",")]
    extra: dict[str, list[int]] = {}
    for part in filter(None, args.extra_seeds.split(";")):
        b, _, ss = part.partition("=")
        extra[b] = [int(s) for s in ss.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    m = describe("cpu")
    print(f"{m['cpu_label']}; torch {m['torch']}", flush=True)
    for budget in args.budgets.split(","):
        budget_s = parse_duration(budget, "--budgets")
        for seed in seeds + [s for s in extra.get(budget, []) if s not in seeds]:
            for name, sets in variants.items():
                r = run_one(
                    out / f"{name}-{budget}-s{seed}",
                    budget=budget,
                    seed=seed,
                    sets=sets,
                    model=args.model,
                    recipe=args.recipe,
                )
                rows.append({"variant": name, "budget": budget, "budget_s": budget_s, "seed": seed, **r})
                print(f"  {name} {budget} seed {seed}: test {r['test_top1']:.2f}%, val {r['best_val_top1']:.2f}%")
                Path(args.json or out / "rows.json").write_text(json.dumps({"machine": m, "rows": rows}, indent=1))
    print(table(rows))
    plot(
        rows,
        Path(args.plot or out / "budget.png"),
        title(args, m["cpu_label"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
