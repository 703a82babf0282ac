"""`zoo` CLI subcommands. Each module defines `register(subparsers)`; cli.main discovers them all."""
