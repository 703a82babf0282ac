"""`zoo` CLI subcommands. Each module defines `register(subparsers)`; zoo.cli discovers them all."""
