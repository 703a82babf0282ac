"""`zoo build`: write TorchServe `.mar` archives (or, with `--engine triton`, a Triton model repository) for
registered models. Both carry the same handler, sources and labelled weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo._registry import ModelEntry, get_entry
from zoo.paths import default_store, default_triton_repository

ENGINES = ("torchserve", "triton")


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


def add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="torchserve",
                   help="serving engine: TorchServe (.mar archives) or Triton (a model repository running the same "
                        "handlers in its Python backend)")
    p.add_argument("--store", default=None,
                   help=f"where the archives go (default {default_store()}), or with --engine triton the model "
                        f"repository (default {default_triton_repository()})")


def engine_store(args: argparse.Namespace) -> Path:
    """`--store`, else the engine's default folder."""
    if args.store:
        return Path(args.store)
    return default_triton_repository() if args.engine == "triton" else default_store()


def run(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        from zoo.triton_repo import build_triton_model as build
    else:
        from zoo.mar import build_mar as build

    weights = parse_weights_args(args.weights)
    for name in args.models:
        entry = get_entry(name)
        path, label = build(
            entry, engine_store(args), weights_for(entry, weights, len(args.models) == 1),
            args.random_weights, args.seed,
        )
        print(f"{path}  weights: {label.short()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build", help="build .mar archives (or a Triton model repository)", description=__doc__)
    p.add_argument("models", nargs="+", help="registered model names (see `zoo list`)")
    add_engine_option(p)
    add_weights_options(p)
    p.set_defaults(func=run)
