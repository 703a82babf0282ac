"""The Backend interface: what the gateway's DataPlane needs from a serving system (TorchServe, Triton, ...).

Everything is async and runs on the gateway's one event loop. Model names and versions passed in are the
*backend's* names (the DataPlane maps public names to them from the config); a backend never sees the
public names, API keys or wire formats, only `serving.types` objects and plain bytes.

Errors: raise `serving.errors` exceptions, never transport-specific ones:
- ModelNotFound for an unknown model or version, InvalidInput for a request the model rejects (keep the
  model's message), BackendUnavailable (503 + Retry-After) when the backend is down, restarting or has no
  ready worker, DeadlineExceeded when `deadline` passes, BackendError for anything else.

Deadlines are absolute `time.monotonic()` seconds (`None`: no deadline); `time_left()` turns one into a
per-call timeout and raises DeadlineExceeded once it has passed.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from serving.errors import DeadlineExceeded
from serving.triton_schema import Scheduling, model_config
from serving.types import InferRequest, InferResponse


def time_left(deadline: float | None, what: str = "request") -> float | None:
    """Seconds until `deadline` (None: unlimited); DeadlineExceeded if it already passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"{what}: deadline exceeded before the backend answered")
    return left


@dataclass(frozen=True)
class ListedModel:
    """A model a backend serves, as discovery sees it: its backend name and any extra public names (aliases)
    it should also be reachable under (e.g. a model's pre-rename name)."""

    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelWorkers:
    """A model's workers by status (``READY`` always present) and its configured minimum (TorchServe)."""

    by_status: dict[str, int]
    min_workers: int


@dataclass(slots=True)
class RawPrediction:
    """A task route's answer, passed through as the handler produced it."""

    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """One serving system behind the gateway."""

    #: label for metrics (`zoo_gateway_backend_errors_total{backend=...}`) and logs
    name: str = "backend"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections (called once on the gateway's loop before serving)."""

    @abc.abstractmethod
    async def live(self) -> bool:
        """The backend process answers at all."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """The backend can serve every model routed to it."""

    async def list_models(self) -> list[ListedModel]:
        """The models this backend serves now, for discovery (routes of a config that names no models).
        Default: none, i.e. a backend that cannot list its models is served only through configured routes."""
        return []

    async def model_workers(self, model: str) -> ModelWorkers | None:
        """Worker counts of `model` for the backend gauges; None: this backend has no worker view (the gauges
        then show readiness only). Raise (any error) when the backend cannot answer now."""
        return None

    @abc.abstractmethod
    async def model_ready(self, model: str, version: str = "") -> bool:
        """`model` (version `version`, "" = default) can take requests now. Unknown model: ModelNotFound."""

    @abc.abstractmethod
    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """OIP model metadata: {"name", "versions", "platform", "inputs": [{"name", "datatype", "shape"}],
        "outputs": [...], "parameters": {...}} (parameters: free-form extras, e.g. the weights label;
        the gateway adds the public name). Unknown model: ModelNotFound."""

    async def binary_inputs(self, model: str, version: str = "") -> frozenset[str]:
        """Names of the model's binary BYTES inputs (an image, a video): their JSON data is base64. Default:
        none (JSON strings are taken as UTF-8 text)."""
        return frozenset()

    async def model_scheduling(self, model: str, version: str = "") -> Scheduling:
        """How the backend runs `model` (batching, instances) for its model config. Default: one instance,
        one item at a time."""
        return Scheduling()

    async def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """Triton's model config (REST JSON form), derived from the metadata and `model_scheduling`. Unknown
        model: ModelNotFound."""
        meta = await self.model_metadata(model, version)
        return model_config(meta, await self.model_scheduling(model, version), self.name)

    @abc.abstractmethod
    async def infer(self, request: InferRequest, deadline: float | None) -> InferResponse:
        """Run one OIP inference. `request.model_name/model_version` are the backend's."""

    @abc.abstractmethod
    async def predict_raw(self, model: str, version: str, fields: dict[str, bytes],
                          deadline: float | None) -> RawPrediction:
        """Task route: the model's natural input as named byte fields (a raw body arrives as {"body": ...},
        multipart as one field per part) -> the model's own answer, unchanged."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending calls may be cancelled."""
