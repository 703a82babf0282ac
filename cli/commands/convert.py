"""`zoo convert`: an official checkpoint -> the zoo's safetensors layout, proven to fit the architecture.

The entry's converter maps the keys; the result is loaded strictly into a freshly built model (any missing,
unexpected or mis-shaped tensor is an error naming it); the source file's sha256 goes into the
safetensors metadata. Use the output with `zoo build --weights` or `zoo export --weights`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo._registry import get_entry


def run(args: argparse.Namespace) -> int:
    from zoo.publish import convert_checkpoint_file

    entry = get_entry(args.model)
    out = Path(args.output or f"{entry.name}.safetensors")
    path, source_sha = convert_checkpoint_file(entry, args.checkpoint, out)
    print(f"{path}  ({entry.name}, zoo layout; source {Path(args.checkpoint).name} sha256 {source_sha})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert an official checkpoint to zoo-layout safetensors",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered model name (see `zoo list`)")
    p.add_argument("checkpoint", help="official checkpoint (.pth/.pt/.bin/.safetensors/.npz, any layout it knows)")
    p.add_argument("-o", "--output", help="output file (default: ./MODEL.safetensors)")
    p.set_defaults(func=run)
