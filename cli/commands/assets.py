"""`zoo assets`: fetch and verify the non-model assets the handlers need (the MTCNN face-detector weights).

The P/R/O-net weights come from the facenet-pytorch 2.6.0 wheel (MIT; downloaded with `pip download
--no-deps`, never installed) and are checked against pinned sha256 hashes. Looks in $ZOO_MTCNN_DIR, then
$ZOO_HOME/assets/mtcnn (default ~/.cache/zoo-gateway/assets/mtcnn), and downloads only when none holds them.
`make setup` runs this so a fresh machine has them; `.mar` archives that need them carry their own copy.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from zoo.faces.weights import MTCNN_FILES, check_dir, ensure_mtcnn_weights, find_mtcnn_weights

    if args.check:
        found = find_mtcnn_weights()
        if found is None:
            print("MTCNN weights: not found (run `zoo assets`)")
            return 1
        print(f"MTCNN weights: {found} (verified)")
        return 0
    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  mtcnn weights: {message} ...", file=sys.stderr, flush=True)

    folder = ensure_mtcnn_weights(args.dest, progress=progress)
    assert not check_dir(folder)
    print(f"MTCNN weights: {folder} ({', '.join(MTCNN_FILES)}; sha256 verified)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("assets", help="fetch and verify handler assets (MTCNN face-detector weights)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=None, help="put the files exactly in this folder (default: the cache)")
    p.add_argument("--check", action="store_true", help="only report whether verified weights are present")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
