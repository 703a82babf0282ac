"""`zoo models`: what the gateway serves - names, versions, readiness, task and weights.

Models running seeded RANDOM weights (``make serve`` on a machine without downloaded weights) are flagged:
their answers are well-formed but meaningless. Asks the gateway (``$ZOO_URL``), not the local registry.
"""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    from clients.cli_support import client_from_args, error_line, print_table
    from clients.errors import ZooError

    client = client_from_args(args)
    try:
        rows = client.models()
    except ZooError as exc:
        print(error_line("models", exc, client.url), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{
            "name": r.name, "ready": r.ready,
            "versions": r.metadata.versions if r.metadata else [],
            "task": r.metadata.task if r.metadata else "",
            "platform": r.metadata.platform if r.metadata else "",
            "weights": r.metadata.weights if r.metadata else {},
            "random_weights": r.metadata.random_weights if r.metadata else None,
            **({"error": r.error} if r.error else {}),
        } for r in rows], indent=2))
    else:
        if not rows:
            print(f"{client.url} serves no model this key may use")
        print_table(["NAME", "VERSIONS", "READY", "TASK", "WEIGHTS"], [
            [r.name, ",".join(r.metadata.versions) if r.metadata else "?", "yes" if r.ready else "NO",
             (r.metadata.task or "-") if r.metadata else "?",
             r.metadata.weights_label if r.metadata else f"? ({r.error})"]
            for r in rows])
    random = [r.name for r in rows if r.metadata and r.metadata.random_weights]
    if random:
        print(f"warning: {', '.join(random)} serve{'s' if len(random) == 1 else ''} RANDOM weights: answers are "
              "well-formed but meaningless; `zoo pull <model>` and restart the server for trained weights",
              file=sys.stderr)
    not_ready = [r.name for r in rows if not r.ready]
    if not_ready:
        print(f"warning: not ready: {', '.join(not_ready)}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from clients.cli_support import add_client_options

    p = subparsers.add_parser("models", help="list the models the gateway serves (readiness, weights)",
                              description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(p)
    p.set_defaults(func=run)
