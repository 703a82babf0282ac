"""Where zoo-gateway keeps its archives and run state (override with ZOO_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def zoo_home() -> Path:
    return Path(os.environ.get("ZOO_HOME", Path.home() / ".cache" / "zoo-gateway")).expanduser()


def default_store() -> Path:
    return zoo_home() / "model_store"


def default_triton_repository() -> Path:
    """Where `zoo build --engine triton` writes its Triton model repository."""
    return zoo_home() / "triton_repository"


def default_run_dir() -> Path:
    return zoo_home() / "run"
