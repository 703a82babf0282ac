"""The `zoo` command line and the processes it runs (TorchServe, the gateway, Prometheus).

This is the top layer: it may import every other package (zoo, handlers, serving, clients, proto); nothing
imports it back. Subcommands live in ``cli/commands/``, one module each.
"""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here
