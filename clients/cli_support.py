"""Options and output helpers shared by the client-side `zoo` commands (predict, models, stream ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from clients.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, ZooClient
from clients.errors import ZooError
from clients.transport import RetryPolicy


def add_client_options(p: argparse.ArgumentParser) -> None:
    """--url, --api-key, --timeout, --retries (URL and key default to $ZOO_URL / $ZOO_API_KEY)."""
    p.add_argument("--url", default=None,
                   help=f"gateway REST URL (default: $ZOO_URL, else {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="API key (default: $ZOO_API_KEY)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--retries", type=int, default=3,
                   help="retries when the gateway answers 503 / is unreachable (default 3; 0: none)")


def client_from_args(args: argparse.Namespace) -> ZooClient:
    if args.retries < 0:
        raise ValueError("--retries must be >= 0")
    return ZooClient(args.url, args.api_key, timeout_s=args.timeout,
                     retry=RetryPolicy(max_attempts=args.retries + 1))


def error_line(command: str, exc: ZooError, what: str | None = None) -> str:
    where = f" ({what})" if what else ""
    return f"zoo {command}: error{where}: {exc}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    """Left-aligned columns sized to their widest cell."""
    out = out or sys.stdout
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
