"""zoo-gateway model zoo: pure-PyTorch models, registry, weights and archive building."""

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
