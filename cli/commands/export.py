"""`zoo export`: a Hub-ready folder (model.safetensors, config.json, README.md model card), and with
`--to-hub ORG` (or ORG/NAME) that folder published to your own Hub organisation or mirror.

`--to-hub` uploads to HF_ENDPOINT (default huggingface.co) with HF_TOKEN (write access to ORG), creating the
repo (default name: the model's) if needed, as one commit, and prints the command a fleet uses to pull it:
`zoo pull MODEL --repo ORG/NAME --revision COMMIT` (the file's sha256 travels in config.json). Without it,
publish the folder yourself with `huggingface-cli upload ORG/NAME DIR` (or git + git-lfs). Weights:
--weights PATH (an official checkpoint or a `zoo convert` output), --random-weights (seeded, labelled RANDOM
in the card, the config and every answer), or by default the weights pulled with `zoo pull`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from zoo._registry import get_entry


def hub_repo_id(target: str, model: str) -> str:
    """`ORG` -> `ORG/<model>`; `ORG/NAME` as given."""
    target = target.strip("/")
    if not target or target.count("/") > 1:
        raise ValueError(f"--to-hub takes ORG or ORG/NAME, got {target!r}")
    return target if "/" in target else f"{target}/{model}"


def run(args: argparse.Namespace) -> int:
    from zoo import hub
    from zoo.publish import export_model

    entry = get_entry(args.model)
    if args.dir is None and not args.to_hub:
        raise ValueError("give an output folder, or --to-hub ORG to publish without keeping one")
    repo = hub_repo_id(args.to_hub, entry.name) if args.to_hub else None
    with tempfile.TemporaryDirectory(prefix="zoo-export-") as scratch:
        folder = Path(args.dir) if args.dir is not None else Path(scratch)
        weights = export_model(entry, folder, args.weights, args.random_weights, args.seed)
        print(f"{folder}: model.safetensors (sha256 {weights['sha256']}, {weights['kind']}), config.json, "
              f"README.md")
        if weights["kind"] == "random-seeded":
            print(f"WARNING: {entry.name} exported with RANDOM weights (seed {args.seed}); the card says so")
        if repo is not None:
            published = hub.publish_folder(folder, repo, private=args.private)
            print(f"published {published.url} ({published.endpoint})")
            print(f"pull it with: zoo pull {entry.name} --repo {published.repo} --revision {published.commit}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a Hub-ready folder for a model, optionally publish it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered model name (see `zoo list`)")
    p.add_argument("dir", nargs="?", help="output folder (created; optional with --to-hub)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--weights", metavar="PATH", help="checkpoint to export (official or zoo layout)")
    group.add_argument("--random-weights", action="store_true", help="export seeded RANDOM weights")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.add_argument("--to-hub", metavar="ORG[/NAME]",
                   help="upload the folder to this Hub org (repo name defaults to the model's) on HF_ENDPOINT")
    p.add_argument("--private", action="store_true", help="with --to-hub: create the repo private")
    p.set_defaults(func=run)
