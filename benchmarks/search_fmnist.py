"""Training-aware search on Fashion-MNIST around efficientnetv2_mini, then the found model vs the
demo model trained for the same wall time with the default recipe. About 2 hours by default.

    python benchmarks/search_fmnist.py [--search-time 70m] [--train-time 20m] [--out runs/search_fmnist]
                                       [--sampler tpe] [--workers 1] [--data-dir DIR] [--no-record]

1. Search (``--search-time``): the "mini" space (block type, layers, kernel, expansion, SE per
   stage; the backbone's channels and strides), each trial proxy-trained for ``--proxy-epochs`` at
   ``--proxy-size`` px on a stratified ``--train-subset`` and scored on ``--val-subset`` val images
   (never the test split); reward = A * S^-0.07 * P^-0.05 (paper section 3.3). Resumable: run the
   same command again and finished trials are kept.
2. Final training (``--finals``), each with the default Fashion-MNIST recipe (fmnist-cpu) and as
   many epochs as fit in ``--train-time`` (the budget is a hard stop), evaluated on the test split:
   efficientnetv2_mini first (epochs planned from a timed 28 px step; a run that ends below 85% of
   the budget is re-planned from its measured time and trained again from scratch), then, planned
   from mini's run and the ratio of step times, the found spec (best_spec.json, the best reward),
   the accuracy pick (the best proxy top-1 among trials no slower than the backbone, also chosen
   on val only; ``--no-accuracy-pick`` skips it) and that pick width-scaled so that
   ``--scale-epochs`` epochs fill the budget. ``--seeds N`` trains them N times (``--seed-arms``,
   ``--jobs``). ``--no-search`` skips step 1 and uses the study in ``--out``; finished final runs
   are reused.
3. Appends the search table, the found model's stage table and the comparison to
   benchmarks/RESULTS.md with the machine, versions and this command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from effv2.models import create_model, get_card
from effv2.models.flops import count_macs, count_params
from effv2.search.driver import SearchConfig, best_specs_of, open_results, parse_budget, run_search
from effv2.search.evaluators import ProxyEvaluator
from effv2.search.predictor import predictor_report
from effv2.search.results import format_table, records
from effv2.search.space import genotype, get_space
from effv2.training.api import train

HERE = Path(__file__).resolve().parent
BACKBONE = "efficientnetv2_mini"


def machine(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"{torch.cuda.get_device_name(0)}"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def epochs_for(model_name: str, seconds: float, *, n_train: int, batch: int, device: str) -> tuple[int, float]:
    """Epochs of the default recipe that fit in ``seconds``: one timed step at 28 px x steps per
    epoch x 1.2 for data loading and evaluation (progressive stages below 28 px make it conservative)."""
    from effv2.bench.timing import time_train_step

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    model = create_model(model_name, num_classes=10, in_chans=1)
    step_s = time_train_step(
        model, batch_size=batch, image_size=28, in_chans=1, num_classes=10, steps=5, warmup=2, device=dev
    )["step_s"]
    epoch_s = 1.2 * step_s * (n_train // batch)
    return max(1, int(seconds // epoch_s)), epoch_s


def accuracy_pick(done: list[dict], space, out: Path) -> dict | None:
    """A second selection rule, from the val split only: the distinct trial with the highest proxy
    top-1 among those whose step time is at most the backbone's (ties: the faster). Its card is
    written to OUT/accuracy_pick_spec.json. The paper's reward also pays for fewer parameters, which
    on a task whose proxy accuracy barely depends on size picks the smallest net."""
    base = next((r for r in done if r["backbone"]), None)
    if base is None:
        return None
    ok = [r for r in done if r["step_ms"] <= base["step_ms"] and not r["backbone"]]
    if not ok:
        return None
    best = max(ok, key=lambda r: (r["top1"], -r["step_ms"]))
    from effv2.models.spec import ArchSpec

    card = {
        "name": f"search_{space.name}_trial{best['trial']}_accuracy",
        **space.card(ArchSpec.from_dict(best["spec"])),
        "notes": f"accuracy pick of {out}: trial {best['trial']}, proxy top1 {best['top1']:.2f}%, "
        f"step {best['step_ms']:.2f} ms (backbone {base['step_ms']:.2f} ms), {best['params']:,} params",
        "tags": ["searched"],
    }
    (out / "accuracy_pick_spec.json").write_text(json.dumps(card, indent=2) + "\n")
    return best


def _train_once(model: str, run_dir: Path, epochs: int, budget_s: float, args) -> dict:
    summary = run_dir / "summary.json"
    if summary.is_file():  # finished earlier: a rerun of the script only records
        return json.loads(summary.read_text())
    return train(
        model,
        "fashion-mnist",
        run_dir,
        data_dir=args.data_dir,
        seed=args.seed,
        epochs=epochs,
        overrides=[f"time_budget_s={budget_s:g}"],
        quiet=True,
        device=args.device,
        resume=(run_dir / "checkpoints" / "last.safetensors").exists(),
    )


def train_for(
    label: str, model: str, run_dir: Path, budget_s: float, args, n_train: int, epochs: int | None = None
) -> dict:
    """Train with the default recipe for about ``budget_s`` of wall time. Epochs are planned from a
    timed step; when that run finishes below 85% of the budget (small nets pay relatively more
    for data and evaluation than the step estimate says, or less), it was a calibration: the epochs
    are re-planned from its measured time and the model is trained again from scratch in
    ``RUN-fit`` (and once more in ``RUN-fit2`` if that is still short). The budget stays a hard
    stop (time_budget_s)."""
    if epochs is None:
        epochs, _ = epochs_for(model, budget_s, n_train=n_train, batch=128, device=args.device)
    s = _train_once(model, run_dir, epochs, budget_s, args)
    plan = [str(s["epochs"])]
    for suffix in ("-fit", "-fit2"):  # at most two re-plans, each from what the previous run measured
        if not (s["completed"] and s["train_s"] < 0.85 * budget_s):
            break
        refit = max(s["epochs"] + 1, int(s["epochs"] * budget_s / s["train_s"] * 0.95))
        s = _train_once(model, run_dir.with_name(run_dir.name + suffix), refit, budget_s, args)
        plan.append(str(s["epochs"]))  # what the run in that folder trained (a reused one may differ)
    planned = " -> ".join(plan)
    m = create_model(model, num_classes=10, in_chans=1)
    row = {
        "label": label,
        "model": model,
        "params": count_params(m),
        "macs": count_macs(m, 28),
        "epochs": s["epochs"],
        "planned": planned,
        "completed": s["completed"],
        "train_s": s["train_s"],
        "img_per_s": s["img_per_s"],
        "test_top1": s.get("test_top1"),
    }
    print(json.dumps(row), flush=True)
    return row


def step_measure(args):
    """card -> ms of one training step of the default recipe (batch 256, 1 channel, 10 classes) on
    ``args.device``, timed as the trainer runs (effv2.search.scale.latency_measure)."""
    from effv2.runtime import resolve_device
    from effv2.search.scale import latency_measure

    return latency_measure(
        mode="train",
        batch_size=256,
        in_chans=1,
        num_classes=10,
        device=str(resolve_device(args.device)),
        steps=5,
        warmup=2,
    )


def scale_pick(pick: dict, out: Path, budget_s: float, args) -> tuple[Path, int]:
    """EfficientNet's second step: the accuracy pick scaled (effv2 scale) to the training step time
    at which the default recipe's ``args.scale_epochs`` epochs fill the budget. The target comes
    from the pick's own final run: its seconds per epoch, times the ratio of step times (timed as
    the trainer runs, batch 256 at 28 px). Width only (alpha = gamma = 1): the image stays at the
    data's 28 px, and depth moves in whole layers rounded up (EfficientNet's ceil), which doubles
    the pick's 1-layer stages at any phi > 0 (2.5x the step), past the target.
    Returns the card (OUT/scaled_pick_spec.json, reused) and the epochs planned for it."""
    from effv2.search.scale import Coefficients, ScaleLimits, scale_to_target

    path = out / "scaled_pick_spec.json"
    measure = step_measure(args)
    pick_epoch_s = pick["train_s"] / pick["epochs"]
    if not path.is_file():
        card = get_card(str(out / "accuracy_pick_spec.json"))
        pick_ms = measure(card)
        target_ms = pick_ms * (0.95 * budget_s / args.scale_epochs) / pick_epoch_s
        res = scale_to_target(
            card,
            "latency_ms",
            target_ms,
            coeffs=Coefficients(alpha=1.0, beta=1.1, gamma=1.0),
            limits=ScaleLimits(max_size=28),
            in_chans=1,
            num_classes=10,
            measure=measure,
        )
        d = res.to_dict()
        d["name"] = f"{json.loads((out / 'accuracy_pick_spec.json').read_text())['name']}_scaled"
        d["scaling"].update(
            pick_ms=pick_ms,
            pick_epoch_s=pick_epoch_s,
            recipe_epochs=args.scale_epochs,
            execution=getattr(measure, "execution", None),
        )
        path.write_text(json.dumps(d, indent=2) + "\n")
    sc = json.loads(path.read_text())["scaling"]
    epochs = max(1, int(0.95 * budget_s / (sc["pick_epoch_s"] * sc["achieved"]["latency_ms"] / sc["pick_ms"])))
    return path, epochs


def plan_from(ref: tuple[str, dict], model: str, budget_s: float, args) -> int:
    """Epochs of ``model`` that fill the budget, from a finished reference run ``(model, summary
    row)``: its seconds per epoch x the ratio of the two nets' training steps (timed as the trainer
    runs, batch 256 at their train size). Closer than a timed step alone, which leaves out data
    loading and evaluation, so fewer runs end short and get re-planned."""
    measure = step_measure(args)
    ref_model, ref_row = ref
    ratio = measure(get_card(model)) / measure(get_card(ref_model))
    return max(1, int(0.95 * budget_s / (ref_row["train_s"] / ref_row["epochs"] * ratio)))


def _seed_run(job: tuple) -> dict:
    """One extra-seed final run in its own process (``--jobs``): the same epochs and budget as the
    planned run, another seed."""
    model, run_dir, epochs, budget_s, args, threads = job
    if threads:
        torch.set_num_threads(threads)
    return _train_once(model, Path(run_dir), epochs, budget_s, args)


def more_seeds(finals: list[dict], names: list[str], out: Path, budget_s: float, args) -> None:
    """Train the final models named in ``args.seed_arms`` (all when empty) ``args.seeds - 1`` more
    times (seeds ``args.seed + k``) with the epochs their planned run settled on, ``args.jobs`` at a
    time, seed by seed so that the arms of one seed run side by side under the same load, and add
    the test top-1 of all seeds to each row (``seed_top1``, mean and sample std). Runs go to
    ``OUT/final/NAME-seedK`` and are reused by a rerun."""
    import statistics
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    arms = [(f, name) for f, name in zip(finals, names) if not args.seed_arms or name in args.seed_arms]
    jobs = [
        (
            f["model"],
            str(out / "final" / f"{name}-seed{k}"),
            f["epochs"],
            budget_s,
            argparse.Namespace(**{**vars(args), "seed": args.seed + k}),
            args.threads,
        )
        for k in range(1, args.seeds)
        for f, name in arms
    ]
    if args.jobs <= 1:
        done = [_seed_run(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(_seed_run, jobs))
    for i, (f, _) in enumerate(arms):
        runs = [f] + done[i :: len(arms)]
        f["seed_top1"] = [r["test_top1"] for r in runs]
        f["seed_epochs"] = [r["epochs"] for r in runs]
        f["seed_train_s"] = [r["train_s"] for r in runs]
        f["seed_completed"] = [bool(r.get("completed", True)) for r in runs]
        f["mean_top1"] = statistics.fmean(f["seed_top1"])
        f["std_top1"] = statistics.stdev(f["seed_top1"])
        print(
            json.dumps(
                {"label": f["label"], "seed_top1": f["seed_top1"], "mean": f["mean_top1"], "std": f["std_top1"]}
            ),
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/search_fmnist")
    ap.add_argument("--search-time", default="70m", help="search budget (a time, or a number of trials)")
    ap.add_argument("--train-time", default="20m", help="wall time for each of the two final trainings")
    ap.add_argument("--sampler", default="tpe", choices=("random", "tpe", "evolution"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--proxy-epochs", type=int, default=3)
    ap.add_argument(
        "--proxy-time",
        default=None,
        help="equal-time proxy (effv2 search --proxy-time): epochs per trial fit this time, e.g. 60s",
    )
    ap.add_argument(
        "--first-from",
        default=None,
        help="a finished search folder whose --first-top best architectures (by --first-by) this "
        "search trains first: a second stage with a costlier proxy",
    )
    ap.add_argument("--first-top", type=int, default=8)
    ap.add_argument("--first-by", default="top1", choices=("reward", "top1"))
    ap.add_argument("--proxy-size", type=int, default=20)
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--val-subset", type=int, default=3000)
    ap.add_argument("--predictor-screen", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument(
        "--no-search",
        action="store_true",
        help="use the finished search in --out as it is (no new trials); train and record",
    )
    ap.add_argument("--no-accuracy-pick", action="store_true", help="train only the best-reward architecture")
    ap.add_argument(
        "--finals",
        type=lambda v: [a for a in v.split(",") if a],
        default=["found", "accuracy", "scaled", "mini"],
        help="which final runs: comma list of found, accuracy, scaled, mini (default all; mini "
        "first, the others planned from its run)",
    )
    ap.add_argument(
        "--scale-epochs",
        type=int,
        default=16,
        help="also train the accuracy pick width-scaled so that this many epochs of the default "
        "recipe fill --train-time (the recipe's own length: 2 stages of 8); 0 skips it",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train each final model with this many seeds (the extra ones reuse the planned epochs)",
    )
    ap.add_argument(
        "--seed-arms",
        type=lambda v: [a for a in v.split(",") if a],
        default=[],
        help="which final models get the extra seeds: comma list of found, accuracy, scaled, mini (default all)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="extra-seed runs side by side (each with --threads threads)")
    args = ap.parse_args()
    out = Path(args.out)
    trials, search_s = parse_budget(args.search_time)
    _, train_s = parse_budget(args.train_time)
    if train_s is None:
        ap.error("--train-time must be a time, e.g. 20m")
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. the search ------------------------------------------------------------------------------
    space = get_space("mini")
    evaluate = ProxyEvaluator(
        data="fashion-mnist",
        backbone=BACKBONE,
        data_dir=args.data_dir,
        epochs=args.proxy_epochs,
        image_size=args.proxy_size,
        train_subset=args.train_subset,
        val_subset=args.val_subset,
        device=args.device,
        seed=args.seed,
        equal_time_s=parse_budget(args.proxy_time)[1] if args.proxy_time else None,
    )
    print(space.to_table(), flush=True)
    if args.no_search:  # top the study up to what it holds: no new trial
        trials, search_s = sum(t.state.name == "COMPLETE" for t in open_results(out)[0].trials), None
    result = run_search(
        space,
        evaluate,
        SearchConfig(
            out_dir=out,
            trials=trials,
            time_s=search_s,
            sampler=args.sampler,
            seed=args.seed,
            workers=args.workers,
            predictor_screen=args.predictor_screen,
            threads=args.threads,
            first_specs=best_specs_of(args.first_from, args.first_top, by=args.first_by) if args.first_from else (),
        ),
    )
    if result["best"] is None:
        print("the search finished no trial; nothing to compare", file=sys.stderr)
        return 1
    study, _ = open_results(out)
    rows = records(study)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["duplicate_of"] is None]
    pred = {m: predictor_report(done, model=m) for m in ("ridge", "mlp")} if len(done) >= 12 else {}

    # 2. the found model vs the demo model, same wall time, default recipe ------------------------
    from effv2.data.sources import load_source

    n_train = len(load_source("fashion-mnist", data_dir=args.data_dir).train)
    wanted = set(args.finals) - ({"accuracy", "scaled"} if args.no_accuracy_pick else set())
    picks = [("found by search (best reward)", str(out / "best_spec.json"), "found")] if "found" in wanted else []
    acc = accuracy_pick(done, space, out)
    if acc is not None and wanted & {"accuracy", "scaled"}:
        picks.append((f"accuracy pick (trial {acc['trial']})", str(out / "accuracy_pick_spec.json"), "accuracy"))
    if "mini" in wanted:
        picks.append(("efficientnetv2_mini (demo)", BACKBONE, "mini"))
    trained: dict[str, dict] = {}
    if "mini" in wanted:  # first: the others' epochs are planned from its measured run
        trained["mini"] = train_for(picks[-1][0], BACKBONE, out / "final" / "mini", train_s, args, n_train)
    for label, model, name in picks:
        if name != "mini":
            ref = trained.get("mini")
            epochs = plan_from((BACKBONE, ref), model, train_s, args) if ref and ref["epochs"] else None
            trained[name] = train_for(label, model, out / "final" / name, train_s, args, n_train, epochs=epochs)
    if "accuracy" in trained and "scaled" in wanted and args.scale_epochs:
        scaled, scaled_epochs = scale_pick(trained["accuracy"], out, train_s, args)
        label = f"accuracy pick scaled to {args.scale_epochs} epochs"
        picks.insert(len(picks) - ("mini" in wanted), (label, str(scaled), "scaled"))
        trained["scaled"] = train_for(
            label, str(scaled), out / "final" / "scaled", train_s, args, n_train, epochs=scaled_epochs
        )
    if "accuracy" not in wanted:
        picks = [p for p in picks if p[2] != "accuracy"]
    finals = [trained[name] for _, _, name in picks]
    if args.seeds > 1:
        more_seeds(finals, [name for _, _, name in picks], out, train_s, args)

    # 3. the record ------------------------------------------------------------------------------
    best_card = json.loads((out / "best_spec.json").read_text())
    found = get_card(str(out / "best_spec.json"))
    cmd = "python benchmarks/search_fmnist.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Training-aware search on Fashion-MNIST around efficientnetv2_mini ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine(args.device)}; torch {torch.__version__}",
        f"- search: sampler {args.sampler}, {result['complete']} finished trials ({result['failed']} failed), "
        f"{args.workers} worker(s); proxy "
        f"{'epochs fitting ' + args.proxy_time if args.proxy_time else str(args.proxy_epochs) + ' epochs'} "
        f"at {args.proxy_size} px on "
        f"{args.train_subset} train images, scored on {args.val_subset} val images",
        f"- reward = A * (S / S_backbone)^-0.07 * (P / P_backbone)^-0.05; found: trial {result['best']['trial']} "
        f"`{genotype(found.spec)}` ({best_card['notes']})",
        "",
        "```",
        format_table(rows, limit=10),
        "```",
        "",
        "Found architecture:",
        "",
        "```",
        found.spec.to_table(),
        "```",
        "",
    ]
    if any(f["model"].endswith("accuracy_pick_spec.json") for f in finals):
        pick = get_card(str(out / "accuracy_pick_spec.json"))
        lines += [
            f"Accuracy pick ({json.loads((out / 'accuracy_pick_spec.json').read_text())['notes']}):",
            "",
            "```",
            pick.spec.to_table(),
            "```",
            "",
        ]
    if (out / "scaled_pick_spec.json").is_file() and any(f["model"].endswith("scaled_pick_spec.json") for f in finals):
        sc = json.loads((out / "scaled_pick_spec.json").read_text())["scaling"]
        scaled = get_card(str(out / "scaled_pick_spec.json"))
        lines += [
            f"Accuracy pick scaled ({scaled.notes}; target: a training step of "
            f"{sc['value']:.1f} ms at batch 256 = {sc['recipe_epochs']} epochs of {sc['pick_epoch_s']:.1f} s x "
            f"{sc['value'] / sc['pick_ms']:.2f} in the budget; measured {sc['achieved']['latency_ms']:.1f} ms vs "
            f"the pick's {sc['pick_ms']:.1f} ms):",
            "",
            "```",
            scaled.spec.to_table(),
            "```",
            "",
        ]
    if pred:
        lines += [
            "- predictor on held-out trials: "
            + "; ".join(
                f"{m}: Spearman {r['spearman']:.3f}, MAE {r['mae']:.2f} ({r['n_test']} test / {r['n_train']} fit)"
                for m, r in pred.items()
            ),
            "",
        ]
    lines += [
        f"Final training, default recipe, {args.train_time} budget each, test split:",
        "",
        "| model | params | MACs @28 px | epochs (planned) | train time (s) | img/s | test top-1 (%) |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {f['label']} | {f['params']:,} | {f['macs'] / 1e6:.1f}M | {f['epochs']} ({f['planned']}) | "
            f"{f['train_s']:.0f} | {f['img_per_s']:.0f} | "
            f"{'' if f['test_top1'] is None else format(f['test_top1'], '.2f')} |"
            for f in finals
        ],
        "",
    ]
    if args.seeds > 1:
        lines += [
            f"Seeds {args.seed}..{args.seed + args.seeds - 1} (seed {args.seed} is the run above; the others reuse its "
            f"epochs, {'one run at a time' if args.jobs <= 1 else f'{args.jobs} runs side by side'}, "
            f"{args.threads or torch.get_num_threads()} thread(s) each):",
            "",
            "| model | test top-1 per seed (%) | mean +- std (%) | epochs per seed | train time per seed (s) |",
            "|---|---|---|---|---|",
            *[
                f"| {f['label']} | {', '.join(f'{t:.2f}' for t in f['seed_top1'])} | "
                f"{f['mean_top1']:.2f} +- {f['std_top1']:.2f} | "
                f"{', '.join(str(e) + ('' if ok else '*') for e, ok in zip(f['seed_epochs'], f['seed_completed']))} | "
                f"{', '.join(f'{t:.0f}' for t in f['seed_train_s'])} |"
                for f in finals
                if "seed_top1" in f
            ],
            "",
            "`*`: the budget stopped the run before its planned epochs ended (the machine ran slower than in the "
            "planned run), so its learning rate never reached the end of its schedule.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
