"""`zoo tritonserver ARGS...`: run the tritonserver this install finds (`cli.triton.find_triton`: a system one,
else PyTriton's with its Python backend laid out), with ARGS passed through.

For platforms that start Triton themselves with their own arguments, e.g. KServe's Triton runtime
(`--model-store=/mnt/models --http-port=8080 ...`) on this image: the zoo's model repositories
(`zoo build --engine triton`) need a Python backend whose interpreter has torch and this package, which is
what this install has. `--backend-directory` is added unless ARGS give one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from cli.triton import find_triton, layout_backends

    install = find_triton()
    server_args = list(args.server_args)
    if server_args[:1] == ["--"]:
        server_args = server_args[1:]
    if not any(a.startswith("--backend-directory") for a in server_args):
        backends = layout_backends(install, Path(tempfile.mkdtemp(prefix="zoo-tritonserver-")))
        server_args.append(f"--backend-directory={backends}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(install.env)
    os.execve(str(install.binary), [str(install.binary), *server_args], env)
    return 1  # not reached


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tritonserver", help="run tritonserver with the zoo's Python backend",
                              description=__doc__)
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="tritonserver's own arguments")
    p.set_defaults(func=run)
