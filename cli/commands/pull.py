"""`zoo pull`: fetch each model's pinned weights and verify them before anything uses them.

Where the registry pins a Hugging Face Hub file, it comes from the Hub (or HF_ENDPOINT, a mirror) into the
standard HF cache (HF_HOME / HF_HUB_CACHE); HF_TOKEN opens private or gated repos; with HF_HUB_OFFLINE=1 only
the cache is used. Otherwise the authors' URL is downloaded into $ZOO_HOME/upstream/. A URL only a browser can
open (Google Drive) is downloaded by hand and handed over with `--file PATH`. Every file is checked against
its sha256 pin; where no public record of the hash exists, the first file seen is trusted and locked
(`--lock FILE` or ZOO_WEIGHTS_LOCK; default $ZOO_HOME/weights.lock.json), and a different one is refused.
`zoo build` then finds the pulled weights by itself. `--repo` pulls from another Hub repo instead of the
registry pin, e.g. one made by `zoo export --to-hub` (its config.json says the file already is the zoo
layout). See docs/weights.md.
"""

from __future__ import annotations

import argparse
import sys

from zoo._registry import get_entry


def run(args: argparse.Namespace) -> int:
    from zoo import upstream
    from zoo.contract import WeightsError

    override = args.repo or args.revision or args.filename or args.sha256 or args.file
    if override and len(args.models) != 1:
        raise ValueError("--repo/--revision/--filename/--sha256/--file apply to one model; name exactly one")
    entries = [get_entry(name) for name in args.models]  # unknown names fail before any download
    failed = []
    for entry in entries:
        try:
            pulled = upstream.pull_weights(entry, repo=args.repo, revision=args.revision, filename=args.filename,
                                           sha256=args.sha256, file=args.file, lock=args.lock)
        except WeightsError as exc:  # a HubError too: one model's failure is reported, the rest go on
            if len(entries) == 1:
                raise
            print(f"zoo pull: error: {exc}", file=sys.stderr, flush=True)
            failed.append(entry.name)
            continue
        print(f"{entry.name}: ready ({pulled.label.short()}, sha256 {pulled.sha256})", flush=True)
    if failed:
        print(f"zoo pull: failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pull", help="fetch and verify pinned weights (Hub, upstream URL or a local file)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registered model names (see `zoo list`)")
    p.add_argument("--repo", help="pull from this hub repo instead of the registry pin (e.g. a `zoo export`)")
    p.add_argument("--revision", help="with --repo: branch, tag or commit hash (default: main; pin a commit)")
    p.add_argument("--filename", help="with --repo: the weights file (default: model.safetensors)")
    p.add_argument("--sha256", help="with --repo: expected sha256 (default: from the repo's zoo config.json)")
    p.add_argument("--file", metavar="PATH",
                   help="a file you downloaded by hand: verified against the registry's source and recorded")
    p.add_argument("--lock", metavar="FILE",
                   help="trust-on-first-use lock to check and extend (default: $ZOO_WEIGHTS_LOCK, else "
                        "$ZOO_HOME/weights.lock.json); commit it to share it across a fleet")
    p.set_defaults(func=run)
