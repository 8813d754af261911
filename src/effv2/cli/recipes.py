"""`effv2 recipes [NAME|FILE] [--model M] [--data D] [--set K=V] [--list] [--json]`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("recipes", help="list the shipped recipes, or show one resolved with its layers and stages")
    from ..training.recipe import add_recipe_args

    add_recipe_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.recipe import main as recipe_main

    argv = ([args.recipe] if args.recipe else []) + ["--model", args.model, "--data", args.data]
    for s in args.overrides:
        argv += ["--set", s]
    argv += ["--list"] if args.list else []
    argv += ["--json"] if args.json else []
    return recipe_main(argv)
