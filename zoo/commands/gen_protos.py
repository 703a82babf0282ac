"""`zoo gen-protos`: (re)generate the gateway's gRPC stubs from proto/*.proto into serving/_generated/."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from serving.protos import PROTO_FILES, generate

    path = generate(force=args.force)
    print(f"{path}  ({', '.join(PROTO_FILES)})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gen-protos", help="generate the gateway's gRPC stubs", description=__doc__)
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.set_defaults(func=run)
