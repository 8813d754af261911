"""The `effv2` command. Each subcommand lives in its own module exposing ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UsageError
from ..models.spec import SpecError

# name -> module under effv2.cli; each module has add_parser(subparsers) and run(args) -> int.
COMMANDS = ("models", "recipes", "convert", "train", "eval", "predict", "export", "demo", "bench", "search", "scale")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="effv2", description="The EfficientNetV2 system: models, progressive training, search.")
    parser.add_argument("--version", action="version", version=f"effv2 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"effv2.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"effv2.cli.{name}":
                continue  # not built yet
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    """The user's message. A DataLoader worker re-raises an error with the worker's traceback in its
    text; the message is its last line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, SpecError) as exc:
        print(f"effv2 {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from ..training.state import NonFiniteError

        if not isinstance(exc, NonFiniteError):
            raise
        print(f"effv2 {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"effv2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
