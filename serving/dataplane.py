"""The DataPlane: everything the front-ends (REST, gRPC, the video streams) do, independent of the wire format.

Every request takes ONE observation path, `DataPlane.serve`: the in-flight count and gauge, error
classification and one final observation (status, latency, request and response bytes); `admit` decides
access (401 vs 403), routes the public name through the `ModelRepository` and checks the request's size
(413); the call record (`Call`) carries the deadline; backend calls keep the backend metrics. Front-ends only
translate the wire format to `serving.types` objects and `serving.errors` exceptions back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from serving.backends.base import Backend, RawPrediction
from serving.config import GatewayConfig, ModelRoute
from serving.errors import (
    Forbidden,
    GatewayError,
    PayloadTooLarge,
    Unauthenticated,
    as_gateway_error,
)
from serving.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving.repository import ModelRepository
from serving.types import InferRequest, InferResponse

logger = logging.getLogger(__name__)

SERVER_NAME = "zoo-gateway"
SERVER_VERSION = "0.1.0"
# the protocol extensions that work here (server metadata lists exactly these)
EXTENSIONS = ["binary_tensor_data", "classification", "model_stream_infer", "zoo_task_routes"]
CLIENT_GONE = 499  # status recorded for a request (or stream session) whose client went away

Reply = TypeVar("Reply")


def api_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The client's API key: ``Authorization: Bearer <key>``, else ``x-api-key: <key>`` (REST headers and gRPC
    metadata alike); None when neither is given."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key or None


@dataclass(slots=True)
class Call:
    """One request as the data plane observes it: filled in as it is understood, observed once when it ends."""

    protocol: str  # "rest" or "grpc" (metrics label)
    label: str  # metrics route label: infer, predict, stream_infer, model_metadata, model_ready, stream, ...
    request_bytes: int | None = None
    client_timeout_s: float | None = None  # the client's own deadline (gRPC), when it set one
    timed: bool = True  # False for a stream session: counted once, no duration or sizes (it is a session)
    model: str = UNKNOWN_MODEL  # metrics label: the route's public name once routed
    version: str = ""
    name: str = ""  # the public name the client used (a route's own name or an alias)
    route: ModelRoute | None = None
    max_request_bytes: int | None = None  # the size limit; the route's once routed
    status: int = 200
    response_bytes: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def check_size(self, size: int, *, so_far: bool = False) -> None:
        """PayloadTooLarge (413) naming size and limit when `size` bytes are over the limit. `so_far`: the
        body is still arriving, `size` is what has come in until now."""
        limit = self.max_request_bytes
        if limit is not None and size > limit:
            what = f"at least {size}" if so_far else str(size)
            raise PayloadTooLarge(f"request of {what} bytes is over the limit of {limit} bytes")

    def deadline(self) -> float:
        """Absolute monotonic deadline from now: the route's limit, or the client's own if sooner."""
        assert self.route is not None, "deadline() of a call that is not routed"
        budget = self.route.deadline_s
        if self.client_timeout_s is not None:
            budget = min(budget, self.client_timeout_s)
        return time.monotonic() + budget


class InFlight:
    """Counts requests being handled (every front-end), so shutdown can wait for them to finish."""

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
    def __init__(self, config: GatewayConfig, backends: dict[str, Backend], metrics: GatewayMetrics,
                 repository: ModelRepository | None = None) -> None:
        self.config = config
        self.backends = backends
        self.metrics = metrics
        self.repository = repository if repository is not None else ModelRepository(config, backends)
        self.in_flight = InFlight()

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        if self.repository.discovers:
            await self.repository.refresh()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()

    # --- the observation path --------------------------------------------------------------------
    async def serve(self, call: Call, work: Callable[[Call], Awaitable[Reply]],
                    on_error: Callable[[GatewayError], Reply], size_of: Callable[[Reply], int | None]) -> Reply:
        """Run one request: counted in flight (and in the gauge) while `work` runs, any failure classified
        (a GatewayError, answered with `on_error`; a client gone: 499), then observed once. `work` may set
        `call.status` for an answer that is not 200 without being an error (a 503 readiness answer)."""
        gauge = self.metrics.in_flight.labels(call.protocol)
        gauge.inc()
        try:
            with self.in_flight:
                try:
                    reply = await work(call)
                except asyncio.CancelledError:
                    call.status = CLIENT_GONE
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is answered with its error
                    if not isinstance(exc, GatewayError):
                        logger.exception("unexpected error in %s %s (%s)", call.protocol, call.label, call.model)
                    error = as_gateway_error(exc)
                    call.status = error.http_status
                    reply = on_error(error)
            call.response_bytes = size_of(reply)
            return reply
        finally:
            gauge.dec()
            self.observe(call)

    def observe(self, call: Call) -> None:
        """The one place a request (or stream session) is written to the request metrics."""
        if call.timed:
            self.metrics.observe_request(call.model, call.version, call.protocol, call.label, call.status,
                                         time.perf_counter() - call.started, call.request_bytes,
                                         call.response_bytes)
        else:
            self.metrics.count_request(call.model, call.version, call.protocol, call.label, call.status)

    async def admit(self, call: Call, key: str | None, name: str, version: str = "") -> ModelRoute:
        """Authorise `key` for model `name`, route it (discovering unknown names), and refuse a request of
        known size that is over the route's limit. Fills in the call's route, names and limit."""
        self.authorize(key, name)
        route = await self.repository.resolve(name)
        call.route, call.name, call.model, call.version = route, name, route.public_name, version
        call.max_request_bytes = route.max_request_bytes
        if call.request_bytes is not None:
            call.check_size(call.request_bytes)
        return route

    # --- access ------------------------------------------------------------------------------------
    def authorize(self, key: str | None, model: str | None = None) -> None:
        """No/unknown key: Unauthenticated (401). Known key not allowed for `model`: Forbidden (403).
        A key allowed any public name of a route (its own or an alias) may use the route under all of them.
        A restricted key gets 403 for an unknown model too, so keys cannot probe which models exist."""
        if not self.config.auth_enabled:
            return
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        found = self.config.lookup_key(key)
        if found is None:
            raise Unauthenticated("unknown API key")
        if model is not None and not any(found.allows(name) for name in self.repository.names_of(model)):
            raise Forbidden(f"API key '{found.name}' is not allowed to use model '{model}'")

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

    async def model_metadata(self, route: ModelRoute, version: str = "", name: str = "") -> dict[str, Any]:
        """The backend's metadata under the public name `name` (default: the route's own)."""
        meta = await self.backends[route.backend].model_metadata(route.model, version)
        return {**meta, "name": name or route.public_name}

    # --- backend calls (backend metrics) -------------------------------------------------------------
    async def infer(self, route: ModelRoute, request: InferRequest, deadline: float) -> InferResponse:
        """OIP inference on `route`; `request.model_name` is the public name the client used, and the answer
        carries it back."""
        backend = self.backends[route.backend]
        started = time.perf_counter()
        try:
            response = await backend.infer(dataclasses.replace(request, model_name=route.model), deadline)
        except Exception as exc:
            self._count_error(backend, exc)
            raise
        finally:
            self.metrics.observe_backend(route.public_name, backend.name, time.perf_counter() - started)
        response.model_name = request.model_name
        response.model_version = request.model_version or response.model_version
        response.id = request.id
        return response

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

    def _count_error(self, backend: Backend, exc: Exception) -> None:
        kind = exc.kind if isinstance(exc, GatewayError) else "backend_error"
        self.metrics.backend_errors.labels(backend.name, kind).inc()
