"""`zoo list`: the registry as a table: each model's weights source, how that file is verified, and the
weights each built archive really carries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo._registry import ModelEntry, list_models
from zoo.paths import default_store


def _archive_weights(store: Path, name: str) -> str:
    mar = store / f"{name}.mar"
    if not mar.exists():
        return "not built"
    from zoo.mar import read_archive_meta
    from zoo.weights import WeightsLabel

    return WeightsLabel(**read_archive_meta(mar)["weights"]).short()


def weights_source(entry: ModelEntry) -> dict[str, object]:
    """The pinned source of an entry's weights and how `zoo pull` verifies it (for `zoo list --json`)."""
    src = entry.weights
    return {"kind": src.source_kind, "location": src.describe(), "verification": src.verification()}


def print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))


def run(args: argparse.Namespace) -> int:
    store = Path(args.store)
    entries = list_models(task=args.task)
    rows = [
        {
            "name": e.name,
            "served as": e.serve_name,
            "task": e.task,
            "version": e.version,
            "default": "yes" if e.default_serve else "opt-in",
            "weights source": e.weights.describe(),
            "verification": e.weights.verification_summary()
            + (" (manual download: --file)" if e.weights.fetch_method == "manual" else ""),
            "archive weights": _archive_weights(store, e.serve_name),
            "license": e.license,
            "paper": e.paper,
        }
        for e in entries
    ]
    if args.json:
        summaries = [{**e.summary(), "weights_source": weights_source(e), "archive_weights": r["archive weights"]}
                     for e, r in zip(entries, rows, strict=True)]
        print(json.dumps(summaries, indent=2, default=str))
    else:
        print_table(rows, list(rows[0]) if rows else ["name"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list registered models", description=__doc__)
    p.add_argument("--task", help="only models of this task (e.g. detection)")
    p.add_argument("--store", default=str(default_store()), help="model store to inspect for built archives")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
