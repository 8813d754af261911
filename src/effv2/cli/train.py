"""`effv2 train`: progressive training of a registered model or a spec file on a data source."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def add_pretrained_arg(group) -> None:
    """eval / predict / export: ``--pretrained SOURCE`` as the alternative to ``--checkpoint``."""
    group.add_argument(
        "--pretrained",
        metavar="SOURCE",
        help="weights to use instead of --checkpoint: a timm / torchvision / effv2 weights file or folder, "
        "timm:NAME or torchvision:NAME (their download and cache; see docs/pretrained.md)",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where datasets are looked for first (then $EFFV2_DATA, then system locations)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train with progressive learning and adaptive regularization")
    p.add_argument("--model", help="registered model name (see `effv2 models`)")
    p.add_argument("--model-spec", metavar="FILE", help="an architecture spec JSON (from search or scale)")
    p.add_argument(
        "--data", help="fashion-mnist | cifar10 | cifar100 | flowers102 | stanford-cars | image folder | CSV"
    )
    p.add_argument("--out", help="run folder (config.json, metrics.jsonl, checkpoints/, curves.png)")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights (fine-tuning): an `effv2 convert` "
        "output, a run folder or a checkpoint; the classifier is replaced when the class count differs",
    )
    p.add_argument(
        "--pretrained",
        metavar="SOURCE",
        help="start from pretrained weights with their preprocessing (mean/std): a timm / torchvision / effv2 "
        "weights file or folder, timm:NAME or torchvision:NAME (their download and cache); --model defaults "
        "to their architecture",
    )
    p.add_argument("--recipe", help="recipe name (see docs) or a recipe JSON file")
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="train the best schedule that fits this wall time (10m, 2h): epochs planned from measured step times",
    )
    p.add_argument(
        "--plan-from",
        metavar="RUN_DIR",
        help="train the time-budget plan recorded in RUN_DIR instead of measuring one (the same steps, stop and "
        "fallback): with --deterministic, the uninterrupted twin of a budgeted run that was killed and resumed",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set progressive.enabled=false (repeatable)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic algorithms; a resumed run then ends bitwise equal to an uninterrupted one",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (or in --out) from its last checkpoint; only --epochs may change it "
        "(to extend a run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let a new run use a non-empty --out folder that is not an effv2 run (its files are left alone)",
    )
    p.add_argument(
        "--log",
        metavar="SINKS",
        help="where metrics go besides metrics.jsonl and curves.png: csv (the default), tensorboard "
        "(RUN_DIR/tensorboard/), tensorboard,csv, or none; a resume keeps the run's unless given",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quiet", action="store_true")
    add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.api import train

    if args.model and args.model_spec:
        raise UsageError("give --model or --model-spec, not both")
    model = args.model_spec or args.model
    if args.resume is not None:
        out = args.resume if isinstance(args.resume, str) else args.out
        if not out:
            raise UsageError("--resume needs a run folder: --resume RUN_DIR or --out RUN_DIR --resume")
        if args.time_budget or args.plan_from:
            flag = "--time-budget" if args.time_budget else "--plan-from"
            raise UsageError(f"--resume follows the plan recorded when the run started; {flag} cannot change it")
        if args.resume is not True and args.out and args.out != args.resume:
            raise UsageError(f"--resume {args.resume} and --out {args.out} name two folders; give one")
        train(
            model,
            args.data,
            out,
            resume=True,
            data_dir=args.data_dir,
            quiet=args.quiet,
            device=args.device,
            epochs=args.epochs,
            recipe=args.recipe,
            overrides=args.overrides,
            seed=args.seed,
            deterministic=args.deterministic,
            init=args.init,
            log=args.log,
            pretrained=args.pretrained,
        )
        return 0
    if not (model or args.pretrained) or not args.data or not args.out:
        raise UsageError("--model (or --model-spec), --data and --out are required")
    if args.time_budget and args.plan_from:
        raise UsageError("--plan-from trains the plan another budgeted run made; give it or --time-budget, not both")
    overrides = list(args.overrides) + ([f"time_budget={args.time_budget}"] if args.time_budget else [])
    train(
        model,
        args.data,
        args.out,
        recipe=args.recipe,
        overrides=overrides,
        data_dir=args.data_dir,
        seed=args.seed,
        epochs=args.epochs,
        deterministic=args.deterministic,
        quiet=args.quiet,
        device=args.device,
        download=args.download,
        overwrite=args.overwrite,
        init=args.init,
        log=args.log,
        pretrained=args.pretrained,
        plan_from=args.plan_from,
    )
    return 0
