"""`zoo export`: a Hub-ready folder (model.safetensors, config.json, README.md model card).

Publish it as is with `huggingface-cli upload ORG/NAME DIR` (or git + git-lfs), then anyone can
`zoo pull MODEL --repo ORG/NAME --revision COMMIT`. Weights: --weights PATH (an official checkpoint or a
`zoo convert` output), --random-weights (seeded, labelled RANDOM in the card, the config and every
answer), or by default the weights pulled with `zoo pull`.
"""

from __future__ import annotations

import argparse

from zoo._registry import get_entry


def run(args: argparse.Namespace) -> int:
    from zoo.publish import export_model

    entry = get_entry(args.model)
    weights = export_model(entry, args.dir, args.weights, args.random_weights, args.seed)
    print(f"{args.dir}: model.safetensors (sha256 {weights['sha256']}, {weights['kind']}), config.json, "
          f"README.md")
    if weights["kind"] == "random-seeded":
        print(f"WARNING: {entry.name} exported with RANDOM weights (seed {args.seed}); the card says so")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a Hub-ready folder for a model", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered model name (see `zoo list`)")
    p.add_argument("dir", help="output folder (created)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--weights", metavar="PATH", help="checkpoint to export (official or zoo layout)")
    group.add_argument("--random-weights", action="store_true", help="export seeded RANDOM weights")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.set_defaults(func=run)
