"""zoo-gateway model zoo: pure-PyTorch models, registry, weights and archive building.

The registry names below load on first use (PEP 562): they import torch, and light subpackages such as
`zoo.streaming` (used inside the gateway process, which never loads torch) must import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo._registry import (
        ModelEntry,
        ServingConfig,
        WeightsSource,
        create_model,
        get_entry,
        list_models,
        register,
    )

__all__ = [
    "ModelEntry",
    "ServingConfig",
    "WeightsSource",
    "create_model",
    "get_entry",
    "list_models",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("zoo._registry"), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
