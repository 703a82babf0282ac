"""`zoo pull`: download pinned weights from the Hugging Face Hub (or HF_ENDPOINT), verify their sha256.

Files land in the standard HF cache (HF_HOME / HF_HUB_CACHE); HF_TOKEN opens private or gated repos;
with HF_HUB_OFFLINE=1 only the cache is used. `zoo build` then finds the pulled weights by itself.
`--repo` pulls from another repo instead of the registry pin, e.g. one made by `zoo export` (its config.json
says the file already is the zoo layout). See docs/weights.md.
"""

from __future__ import annotations

import argparse
import sys

from zoo._registry import get_entry


def run(args: argparse.Namespace) -> int:
    from zoo import hub

    override = args.repo or args.revision or args.filename or args.sha256
    if override and len(args.models) != 1:
        raise ValueError("--repo/--revision/--filename/--sha256 apply to one model; name exactly one")
    entries = [get_entry(name) for name in args.models]  # unknown names fail before any download
    failed = []
    for entry in entries:
        try:
            pulled = hub.pull(entry, repo=args.repo, revision=args.revision, filename=args.filename,
                              sha256=args.sha256)
        except hub.HubError as exc:
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
    p = subparsers.add_parser("pull", help="download and verify pinned weights from the Hugging Face Hub",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registered model names (see `zoo list`)")
    p.add_argument("--repo", help="pull from this hub repo instead of the registry pin (e.g. a `zoo export`)")
    p.add_argument("--revision", help="with --repo: branch, tag or commit hash (default: main; pin a commit)")
    p.add_argument("--filename", help="with --repo: the weights file (default: model.safetensors)")
    p.add_argument("--sha256", help="with --repo: expected sha256 (default: from the repo's zoo config.json)")
    p.set_defaults(func=run)
