"""Shared fixtures. Heavy components (TorchServe) are started per module by the tests that need them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Reference outputs of the official implementations, kept in the repository so every clone runs every test
# (tests/data/golden/PROVENANCE.md says where they come from).
GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The in-repository golden data (tests/data/golden)."""
    return GOLDEN_DIR


@pytest.fixture(autouse=True, scope="session")
def _isolated_zoo_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's ~/.cache/zoo-gateway."""
    os.environ["ZOO_HOME"] = str(tmp_path_factory.mktemp("zoo_home"))
