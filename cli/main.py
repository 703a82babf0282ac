"""The `zoo` command line. Subcommands live in cli/commands/, one module each, discovered at start."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import cli.commands
from cli import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="zoo-gateway: build, serve and call computer-vision research models.",
    )
    parser.add_argument("--version", action="version", version=f"zoo-gateway {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cli.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
