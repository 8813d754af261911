"""`effv2 recipes [NAME|FILE] [--model M] [--data D] [--set K=V] [--list] [--json]`.

Prints a resolved recipe, the layer that set each key, and its progressive stages; ``--list``: the
shipped recipes and what each follows; ``--json``: the resolved recipe as config.json stores it.
Also runnable as ``python -m effv2.cli.recipes``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..config import RECIPES_DIR, Recipe, explain, recipe_to_dict, resolve_recipe, shipped_recipes
from ..config.layers import read_recipe_json
from ..errors import UsageError
from ..models import get_card
from ..training.schedule import all_stages, stage_bounds


def stage_table(recipe: Recipe, *, train_size: int, dropout: float, drop_path: float) -> list[str]:
    """The progressive stages of a resolved recipe as text rows (epochs, size, regularization)."""
    p = recipe.progressive
    stages = all_stages(p, train_size=train_size, dropout=dropout, drop_path=drop_path, eval_size=recipe.eval_size)
    bounds = stage_bounds(recipe.epochs, len(stages))
    rows = [
        f"{'stage':>5} {'epochs':>11} {'size':>5} {'randaug':>8} {'mixup':>7} {'cutmix':>7} {'dropout':>8} "
        f"{'drop_path':>9}"
    ]
    for sp, (a, b) in zip(stages, bounds):
        span = f"{a}-{b - 1}" if b > a else "(none)"
        rows.append(
            f"{sp.index:>5} {span:>11} {sp.image_size:>5} {sp.randaug_magnitude:>8.4g} {sp.mixup_alpha:>7.4g} "
            f"{sp.cutmix_alpha:>7.4g} {sp.dropout:>8.4g} {sp.drop_path:>9.4g}"
        )
    return rows


def add_recipe_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of `effv2 recipes` / `python -m effv2.cli.recipes` (one definition for both)."""
    ap.add_argument("recipe", nargs="?", help="shipped recipe name or recipe JSON file (default: the data set's)")
    ap.add_argument("--model", default="efficientnetv2_s")
    ap.add_argument("--data", default="imagenet", help="data set name (picks the dataset layer and default recipe)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--list", action="store_true", help="list the shipped recipes")
    ap.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("recipes", help="list the shipped recipes, or show one resolved with its layers and stages")
    add_recipe_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            for name in shipped_recipes():
                raw = read_recipe_json(RECIPES_DIR / f"{name}.json")
                parent = f" (extends {raw['extends']})" if "extends" in raw else ""
                print(f"{name}{parent}: follows {raw.get('follows') or '(inherited)'}")
            return 0
        rec, prov = resolve_recipe(args.recipe, model=args.model, dataset=args.data, overrides=args.overrides)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"recipe": recipe_to_dict(rec), "layers": prov}, indent=2))
        return 0
    card = get_card(args.model)
    print(f"recipe {rec.name} for {card.name} on {args.data}: follows {rec.follows or '-'}")
    print("layers: " + " <- ".join(f"{k} ({v['source']})" for k, v in prov.items()))
    print(textwrap.fill(rec.description, width=100))
    print(f"lr {rec.lr} per 256 images -> {rec.scaled_lr:g} at batch {rec.batch_size}")
    print("\n".join(line for line in explain(rec, prov) if not line.startswith("description =")))
    p = rec.progressive
    title = f"{p.variant} variant, {p.n_stages} stages" if p.enabled else "progressive learning off"
    print(f"stages ({title}, {rec.epochs} epochs):")
    print("\n".join(stage_table(rec, train_size=card.train_size, dropout=card.dropout, drop_path=card.drop_path)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print a resolved recipe, the layer that set each key, and its progressive stages (--list: the
    shipped recipes and what each follows; --json: the resolved recipe as config.json stores it).
    The same as `effv2 recipes`."""
    ap = argparse.ArgumentParser(prog="python -m effv2.cli.recipes", description=main.__doc__)
    add_recipe_args(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
