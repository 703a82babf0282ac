"""Shared fixtures. Heavy components (TorchServe) are started per module by the tests that need them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "shared" / "golden"
if os.environ.get("ZOO_GOLDEN_DIR"):
    GOLDEN_DIR = Path(os.environ["ZOO_GOLDEN_DIR"])


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """`../shared/golden` beside the checkout (override with ZOO_GOLDEN_DIR)."""
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"golden reference data not found at {GOLDEN_DIR}")
    return GOLDEN_DIR


@pytest.fixture(autouse=True, scope="session")
def _isolated_zoo_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's ~/.cache/zoo-gateway."""
    os.environ["ZOO_HOME"] = str(tmp_path_factory.mktemp("zoo_home"))
