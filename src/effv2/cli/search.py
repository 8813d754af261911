"""`effv2 search`: training-aware architecture search (paper section 3.3) on an Optuna study.

effv2 search --data fashion-mnist --space mini --budget 30m --out runs/search   # run / resume
effv2 search report runs/search                                                   # tables, plot, predictor
effv2 search space mini                                                           # print the space
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError

# = effv2.search.driver.STUDY_NAME (not imported here: building the parser must not import Optuna)
STUDY_NAME = "effv2-search"

ACTIONS = ("run", "report", "space")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "search",
        help="training-aware architecture search (run, report, space)",
        description="Search block type, layers, kernel, expansion and SE per stage around a "
        "backbone; reward = A * S^-0.07 * P^-0.05. Run the same command again to resume.",
    )
    p.add_argument(
        "action", nargs="?", default="run", choices=ACTIONS, help="run (default) | report DIR | space NAME_OR_FILE"
    )
    p.add_argument("target", nargs="?", help="report: the search folder; space: the space name or file")
    g = p.add_argument_group("what to search")
    g.add_argument(
        "--space", default="mini", help="pico | mini | b0 | s | a registered model | space JSON (default mini)"
    )
    g.add_argument("--data", help="data source for proxy training, e.g. fashion-mnist")
    g.add_argument("--data-dir", help="where data sets are looked for first")
    g.add_argument("--budget", help="trials the study should hold (50), or a time for this session (30m, 2h)")
    g.add_argument("--out", help="search folder: study.db, trials/, trials.csv, pareto.png, best_spec.json")
    g.add_argument(
        "--sampler",
        default="tpe",
        choices=("random", "tpe", "evolution"),
        help="random | tpe (model-based, default) | evolution (regularized evolution)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-backbone", action="store_true", help="do not train the backbone itself as trial 0")
    g.add_argument(
        "--first-from",
        metavar="DIR",
        help="a finished search (its folder): train its --first-top best architectures first, "
        "a second stage with a costlier proxy (same space)",
    )
    g.add_argument("--first-top", type=int, default=8, metavar="K", help="how many of --first-from (default 8)")
    g.add_argument(
        "--first-by",
        default="reward",
        choices=("reward", "top1"),
        help="rank --first-from by its reward (default) or its proxy top-1",
    )
    g = p.add_argument_group("proxy training (each trial)")
    g.add_argument("--proxy-epochs", type=int, default=10, help="epochs per trial (paper: about 10)")
    g.add_argument(
        "--proxy-time",
        metavar="TIME",
        help="equal-time proxy: each trial trains for as many epochs as fit in TIME (90s, 2m), planned "
        "from its measured step time, instead of --proxy-epochs",
    )
    g.add_argument("--proxy-size", type=int, help="image size per trial (default 3/4 of the backbone's train size)")
    g.add_argument("--batch-size", type=int, help="proxy batch size (default: the recipe's)")
    g.add_argument("--recipe", help="training recipe (default: the data set's)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every trial (repeatable)",
    )
    g.add_argument("--trial-time", type=float, metavar="SECONDS", help="cap each trial's training time")
    g.add_argument(
        "--trial-timeout",
        type=float,
        metavar="SECONDS",
        help="hard limit per trial, whatever it is doing: past it the trial is recorded as failed, the search goes on",
    )
    g.add_argument("--train-subset", type=int, metavar="N", help="proxy-train on a stratified subset of N images")
    g.add_argument("--val-subset", type=int, metavar="N", help="score on a stratified subset of N val images")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (training and step timing)")
    g.add_argument(
        "--evaluator",
        default="proxy",
        choices=("proxy", "synthetic"),
        help="proxy (train) | synthetic (a known function of the rows: try the machinery in seconds)",
    )
    g.add_argument("--synthetic-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    g = p.add_argument_group("storage and parallel workers")
    g.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///OUT/study.db); "
        "postgresql://user:pass@host/db to share one study between machines",
    )
    g.add_argument(
        "--study-name",
        default=STUDY_NAME,
        help=f"study in the storage (default {STUDY_NAME}); several searches can share one database",
    )
    g.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per worker (default: cores / workers; 1 is often fastest on a busy machine)",
    )
    g.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="SECONDS",
        help="trial heartbeat; a trial silent for 4x this long is re-queued (default 30)",
    )
    g = p.add_argument_group("performance predictor")
    g.add_argument(
        "--predictor-screen",
        type=int,
        default=0,
        metavar="K",
        help="rank K sampled candidates with the predictor and train the best (0 = off)",
    )
    g.add_argument(
        "--predictor",
        default="ridge",
        choices=("ridge", "mlp"),
        help="ridge (default; best with few trials) | mlp (ensemble of small MLPs; its spread drives exploration)",
    )
    g.add_argument("--population", type=int, default=16, help="regularized evolution's population (default 16)")
    g.add_argument("--all", action="store_true", help="report: print every trial, not the best 20")
    g.add_argument("--json", action="store_true", help="space: print the space as JSON (a file to edit)")
    g.add_argument("--quiet", action="store_true")
    return p


def _space(name: str):
    from ..search.space import get_space

    return get_space(name)


def run(args: argparse.Namespace) -> int:
    if args.action == "space":
        space = _space(args.target or args.space)
        print(json.dumps(space.to_dict(), indent=2) if args.json else space.to_table())
        return 0
    if args.action == "report":
        return _report(args)
    if args.target:
        raise UsageError(f"unexpected argument {args.target!r} (run takes options only)")
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..search.driver import SearchConfig, parse_budget, run_search
    from ..search.evaluators import ProxyEvaluator, SyntheticEvaluator, proxy_size_for

    if not args.out:
        raise UsageError("--out is required (the search folder; run the same command again to resume)")
    if not args.budget:
        raise UsageError("--budget is required: a number of trials (50) or a time (30m, 2h)")
    trials, time_s = parse_budget(args.budget)
    space = _space(args.space)
    size = args.proxy_size or proxy_size_for(space.train_size)
    if size < space.base.total_stride:
        raise UsageError(f"--proxy-size {size}: smaller than the backbone's total stride {space.base.total_stride}")
    if args.proxy_epochs < 1:
        raise UsageError(f"--proxy-epochs: expected at least 1, got {args.proxy_epochs}")
    equal_time_s = None
    if args.proxy_time:
        _, equal_time_s = parse_budget(args.proxy_time)
        if equal_time_s is None:
            raise UsageError(f"--proxy-time {args.proxy_time!r}: expected a time (90s, 2m)")
    if args.evaluator == "synthetic":
        evaluate = SyntheticEvaluator(base=space.base, image_size=size, delay_s=args.synthetic_delay)
    else:
        if not args.data:
            raise UsageError("--data is required for proxy training (or --evaluator synthetic for a dry run)")
        evaluate = ProxyEvaluator(
            data=args.data,
            backbone=space.backbone,
            data_dir=args.data_dir,
            epochs=args.proxy_epochs,
            image_size=size,
            batch_size=args.batch_size,
            recipe=args.recipe,
            overrides=tuple(args.overrides),
            time_budget_s=args.trial_time,
            train_subset=args.train_subset,
            val_subset=args.val_subset,
            device=args.device,
            seed=args.seed,
            equal_time_s=equal_time_s,
        )
        _ = evaluate.task  # load the data and resolve the recipe now: mistakes cost seconds, not a trial
    first = ()
    if args.first_from:
        from ..search.driver import best_specs_of

        if args.first_top < 1:
            raise UsageError(f"--first-top: expected at least 1, got {args.first_top}")
        first = best_specs_of(args.first_from, args.first_top, by=args.first_by)
    config = SearchConfig(
        out_dir=Path(args.out),
        first_specs=first,
        trials=trials,
        time_s=time_s,
        sampler=args.sampler,
        seed=args.seed,
        storage=args.storage,
        study_name=args.study_name,
        workers=args.workers,
        predictor_screen=args.predictor_screen,
        predictor=args.predictor,
        include_backbone=not args.no_backbone,
        population=args.population,
        heartbeat_s=args.heartbeat,
        grace_s=4 * args.heartbeat,
        threads=args.threads,
        trial_timeout_s=args.trial_timeout,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(space.to_table())
        t = evaluate.task
        per = f"epochs fitting {equal_time_s:g} s each" if equal_time_s else f"{args.proxy_epochs} epochs"
        what = (
            f"proxy training: {per} on {args.data}"
            if args.evaluator == "proxy"
            else "synthetic evaluator (no training)"
        )
        print(
            f"{what}, {size} px, batch {t.batch_size}"
            + f"; sampler {args.sampler}; storage {config.storage_url.split('@')[-1]}; workers {args.workers}"
        )
    result = run_search(space, evaluate, config)
    if result["best"] is None:
        print("no finished trial yet")
        return 1
    if not args.quiet:
        _print_predictor(result["complete"], Path(args.out), args.storage, args.study_name)
    return 0


def _print_predictor(n_complete: int, out: Path, storage: str | None, study_name: str = STUDY_NAME) -> None:
    from ..search.driver import open_results
    from ..search.predictor import predictor_report
    from ..search.results import records

    if n_complete < 12:
        return
    study, _ = open_results(out, storage=storage, study_name=study_name)
    rows = [r for r in records(study, complete_only=True) if r["duplicate_of"] is None]
    if len(rows) < 12:
        return
    for model in ("ridge", "mlp"):
        rep = predictor_report(rows, model=model)
        print(
            f"predictor {model:5s}: Spearman {rep['spearman']:.3f}, MAE {rep['mae']:.2f} top-1 points "
            f"on {rep['n_test']} held-out trials (fit on {rep['n_train']})"
        )


def _report(args: argparse.Namespace) -> int:
    from ..search.driver import open_results
    from ..search.results import format_table, write_results

    folder = args.target or args.out
    if not folder:
        raise UsageError("report needs the search folder: effv2 search report DIR")
    study, space = open_results(folder, storage=args.storage, study_name=args.study_name)
    rows = write_results(study, space, Path(folder), plot=True)
    if not any(r["state"] == "COMPLETE" for r in rows):
        print(f"{folder}: no finished trial yet ({len(rows)} trials)")
        return 1
    print(space.to_table())
    print(format_table(rows, limit=None if args.all else 20))
    print(f"wrote {Path(folder) / 'trials.csv'}, {Path(folder) / 'pareto.png'}, {Path(folder) / 'best_spec.json'}")
    _print_predictor(sum(r["state"] == "COMPLETE" for r in rows), Path(folder), args.storage, args.study_name)
    return 0
