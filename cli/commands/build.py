"""`zoo build`: write TorchServe `.mar` archives for registered models."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo._registry import ModelEntry, get_entry
from zoo.paths import default_store


def parse_weights_args(values: list[str] | None) -> dict[str, str]:
    """`--weights name=path` pairs (a bare path applies when one model is named)."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        out[name] = path
    return out


def add_weights_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", action="append", metavar="[MODEL=]PATH",
                   help="local checkpoint (official, hub or zoo layout) to use instead of pulled weights")
    p.add_argument("--random-weights", action="store_true",
                   help="allow seeded RANDOM weights when no real weights are available (labelled as such)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")


def weights_for(entry: ModelEntry, weights: dict[str, str], single: bool) -> str | None:
    """The `--weights` path given for this entry under any of its names (`arch.tag`, or the bare arch)."""
    for name in (entry.name, entry.serve_name):
        if name in weights:
            return weights[name]
    if single and "" in weights:
        return weights[""]
    return None


def run(args: argparse.Namespace) -> int:
    from zoo.mar import build_mar

    weights = parse_weights_args(args.weights)
    for name in args.models:
        entry = get_entry(name)
        path, label = build_mar(
            entry, Path(args.store), weights_for(entry, weights, len(args.models) == 1),
            args.random_weights, args.seed,
        )
        print(f"{path}  weights: {label.short()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build", help="build .mar archives", description=__doc__)
    p.add_argument("models", nargs="+", help="registered model names (see `zoo list`)")
    p.add_argument("--store", default=str(default_store()), help="where to write the archives")
    add_weights_options(p)
    p.set_defaults(func=run)
