"""The DataPlane: everything both front-ends (REST, gRPC) do, independent of the wire format.

Routes public model names to (backend, backend model name) from the config, decides access (401 vs 403),
turns limits into per-request deadlines, calls the backend, and keeps backend metrics. Front-ends only
translate the wire format to `serving.types` objects and `serving.errors` exceptions back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from serving.backends.base import Backend, RawPrediction
from serving.config import GatewayConfig, ModelRoute
from serving.errors import Forbidden, GatewayError, ModelNotFound, Unauthenticated
from serving.metrics import GatewayMetrics
from serving.types import InferRequest, InferResponse

logger = logging.getLogger(__name__)

SERVER_NAME = "zoo-gateway"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_stream_infer", "zoo_task_routes"]


def api_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The client's API key: ``Authorization: Bearer <key>``, else ``x-api-key: <key>`` (REST headers and gRPC
    metadata alike); None when neither is given."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key or None


class InFlight:
    """Counts requests being handled (both front-ends), so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> InFlight:
        self.count += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False


class DataPlane:
    def __init__(self, config: GatewayConfig, backends: dict[str, Backend], metrics: GatewayMetrics) -> None:
        self.config = config
        self.backends = backends
        self.metrics = metrics
        self.in_flight = InFlight()
        self._last_discovery = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        if self.config.discover_models:
            await self._discover()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()

    async def _discover(self) -> None:
        """Default config: serve every model of the default backend under its own name."""
        self._last_discovery = time.monotonic()
        backend = self.backends[self.config.default_backend]
        lister = getattr(backend, "list_models", None)
        if lister is None:
            return
        for name in await lister():
            if name not in self.config.models:
                self.config.add_route(name, backend=self.config.default_backend)

    # --- routing and access ------------------------------------------------------------------------
    def route(self, model: str) -> ModelRoute:
        route = self.config.models.get(model)
        if route is None:
            raise ModelNotFound(f"unknown model '{model}'; served models: "
                                f"{', '.join(sorted(self.config.models)) or 'none'}")
        return route

    async def route_or_discover(self, model: str) -> ModelRoute:
        """`route`, refreshing discovered models (at most once a second) when the name is unknown."""
        if (model not in self.config.models and self.config.discover_models
                and time.monotonic() - self._last_discovery > 1.0):
            await self._discover()
        return self.route(model)

    def authorize(self, key: str | None, model: str | None = None) -> None:
        """No/unknown key: Unauthenticated (401). Known key not allowed for `model`: Forbidden (403).
        A restricted key gets 403 for an unknown model too, so keys cannot probe which models exist."""
        if not self.config.auth_enabled:
            return
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        api_key = self.config.lookup_key(key)
        if api_key is None:
            raise Unauthenticated("unknown API key")
        if model is not None and not api_key.allows(model):
            raise Forbidden(f"API key '{api_key.name}' is not allowed to use model '{model}'")

    def deadline(self, route: ModelRoute, client_timeout_s: float | None = None) -> float:
        """Absolute monotonic deadline: the model's limit, or the client's own if sooner."""
        budget = route.deadline_s if client_timeout_s is None else min(route.deadline_s, client_timeout_s)
        return time.monotonic() + budget

    # --- health and metadata -----------------------------------------------------------------------
    async def live(self) -> bool:
        return True  # this process answers; backend health is readiness

    async def ready(self) -> bool:
        for backend in self.backends.values():
            if not await backend.ready():
                return False
        return True

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    async def model_ready(self, route: ModelRoute, version: str = "") -> bool:
        return await self.backends[route.backend].model_ready(route.model, version)

    async def model_metadata(self, route: ModelRoute, version: str = "") -> dict[str, Any]:
        meta = await self.backends[route.backend].model_metadata(route.model, version)
        return {**meta, "name": route.public_name}

    # --- inference -------------------------------------------------------------------------------
    async def infer(self, route: ModelRoute, request: InferRequest, deadline: float) -> InferResponse:
        backend = self.backends[route.backend]
        started = time.perf_counter()
        try:
            response = await backend.infer(dataclasses.replace(request, model_name=route.model), deadline)
        except Exception as exc:
            self._count_error(backend, exc)
            raise
        finally:
            self.metrics.observe_backend(route.public_name, backend.name, time.perf_counter() - started)
        response.model_name = route.public_name
        response.model_version = request.model_version or response.model_version
        response.id = request.id
        return response

    def _count_error(self, backend: Backend, exc: Exception) -> None:
        kind = exc.kind if isinstance(exc, GatewayError) else "backend_error"
        self.metrics.backend_errors.labels(backend.name, kind).inc()

    async def predict_raw(self, route: ModelRoute, version: str, fields: dict[str, bytes],
                          deadline: float) -> RawPrediction:
        backend = self.backends[route.backend]
        started = time.perf_counter()
        try:
            return await backend.predict_raw(route.model, version, fields, deadline)
        except Exception as exc:
            self._count_error(backend, exc)
            raise
        finally:
            self.metrics.observe_backend(route.public_name, backend.name, time.perf_counter() - started)
