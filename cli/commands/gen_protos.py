"""`zoo gen-protos`: recompile proto/descriptors.binpb from proto/*.proto (run after editing a .proto)."""

from __future__ import annotations

import argparse

import proto


def run(args: argparse.Namespace) -> int:
    if not args.force and not proto.is_stale():
        print(f"{proto.DESCRIPTOR_SET} is up to date ({', '.join(proto.PROTO_FILES)})")
        return 0
    path = proto.write_descriptor_set()
    print(f"{path}  ({', '.join(proto.PROTO_FILES)})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gen-protos", help="recompile the wire contract's descriptor set (developers)",
                              description=__doc__)
    p.add_argument("--force", action="store_true", help="recompile even if up to date")
    p.set_defaults(func=run)
