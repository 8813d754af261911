"""`effv2 recipes [NAME|FILE] [--model M] [--data D] [--set K=V] [--list] [--json]`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("recipes", help="list the shipped recipes, or show one resolved with its layers and stages")
    p.add_argument("recipe", nargs="?", help="shipped recipe name or recipe JSON file (default: the data set's)")
    p.add_argument("--model", default="efficientnetv2_s")
    p.add_argument("--data", default="imagenet", help="data set name (picks the dataset layer and default recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--list", action="store_true", help="list the shipped recipes")
    p.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.recipe import main as recipe_main

    argv = ([args.recipe] if args.recipe else []) + ["--model", args.model, "--data", args.data]
    for s in args.overrides:
        argv += ["--set", s]
    argv += ["--list"] if args.list else []
    argv += ["--json"] if args.json else []
    return recipe_main(argv)
