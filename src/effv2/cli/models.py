"""`effv2 models [PATTERN] [--table NAME] [--json]`: the registry with sizes and cost."""

from __future__ import annotations

import argparse
import json

from ..models import create_model, get_card, list_models
from ..models.flops import count_macs, count_params


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list registered models: parameters, MACs at eval size, train/eval size")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'efficientnetv2_b*'")
    p.add_argument("--table", metavar="NAME", help="print the stage table of one model (or spec file)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run(args: argparse.Namespace) -> int:
    if args.table:
        card = get_card(args.table)
        print(f"{card.name}: train {card.train_size} px, eval {card.eval_size} px, dropout {card.dropout:g}")
        print(card.spec.to_table())
        return 0
    rows = []
    for name in list_models(args.pattern):
        card = get_card(name)
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "macs": count_macs(model, card.eval_size),
                "train_size": card.train_size,
                "eval_size": card.eval_size,
                "dropout": card.dropout,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<22}{'params':>14}{'MACs@eval':>12}{'train':>7}{'eval':>6}{'dropout':>9}")
    for r in rows:
        print(
            f"{r['name']:<22}{r['params']:>14,}{r['macs'] / 1e9:>11.3f}G{r['train_size']:>7}"
            f"{r['eval_size']:>6}{r['dropout']:>9.2f}"
        )
    return 0
