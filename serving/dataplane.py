"""The DataPlane: everything the front-ends (REST, gRPC, the video streams) do, independent of the wire format.

Every request takes ONE observation path, `DataPlane.serve`: the in-flight count and gauge, error
classification and one final observation (status, latency, request and response bytes); `admit` decides
access (401 vs 403), routes the public name through the `ModelRepository` and checks the request's size
(413); the call record (`Call`) carries the deadline; backend calls keep the backend metrics. Front-ends only
translate the wire format to `serving.types` objects and `serving.errors` exceptions back.

Overload: each model has a `ModelQueue` in front of its backend: at most `max_concurrency` calls are sent at
once, at most `max_queue` more wait here (one more is shed at once: 503 Overloaded + Retry-After), and a
waiting call whose deadline passes is answered 504 without ever being sent. This queue is the last place
work can be cancelled: a call handed to TorchServe runs to completion there (its queue cannot be purged).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from serving.backends.base import Backend, RawPrediction, time_left
from serving.config import ApiKey, GatewayConfig, ModelRoute
from serving.errors import (
    DeadlineExceeded,
    Forbidden,
    GatewayError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
    as_gateway_error,
)
from serving.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving.repository import ModelRepository
from serving.triton_schema import DEFAULT_VERSION, Statistics
from serving.types import InferRequest, InferResponse

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("zoo.access")

SERVER_NAME = "zoo-gateway"
SERVER_VERSION = "0.1.0"
# the protocol extensions that work here (server metadata lists exactly these)
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_stream_infer", "statistics",
              "zoo_task_routes"]
CLIENT_GONE = 499  # status recorded for a request (or stream session) whose client went away
# A version path segment: digits or a version name; never a path ("/", "%", "..") that could reach another
# model in a backend's own API.
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")
OTHER_VERSION = "_other"  # metrics label of a version not (yet) seen answering: bounded cardinality
MAX_VERSION_LABELS = 1000
READY_CACHE_S = 1.0  # /v2/health/ready asks every model at most this often
INFERENCE_LABELS = frozenset({"infer", "stream_infer", "predict"})  # calls counted in the model statistics

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
    request_id: str = ""
    key_name: str = ""  # the API key's name (never the key), for the access log
    error: str = ""  # the error kind, for the access log
    started: float = field(default_factory=time.perf_counter)
    backend_started: float | None = None  # perf_counter when the backend call began (model statistics)
    backend_s: float | None = None  # the backend call's duration once it answered
    queue_s: float = 0.0  # time waiting for a slot in the model's queue (the gateway's scheduling queue)
    batch_size: int = 1  # items in an OIP request (its inputs' leading dimension)

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


def check_version(version: str) -> None:
    """InvalidInput unless `version` is "" or a plain version (digits or a name of letters, digits, ._-)."""
    if version and (not VERSION_PATTERN.fullmatch(version) or ".." in version):
        raise InvalidInput(f"invalid model version {version[:80]!r}: expected digits or a version name "
                           "(letters, digits, '.', '_', '-')")


class ModelQueue:
    """One model's backend calls: at most `limit` at once, at most `max_queue` waiting (more: Overloaded), and a
    waiting call never outlives its deadline (DeadlineExceeded, never sent to the backend)."""

    def __init__(self, name: str, limit: int, max_queue: int, retry_after_s: int,
                 metrics: GatewayMetrics | None = None) -> None:
        self.name = name
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self.admitted = 0  # sent or waiting: the per-model load signal autoscalers read
        self._slots = asyncio.Semaphore(limit)
        self._in_flight_gauge = metrics.model_in_flight.labels(name) if metrics else None
        self._queued_gauge = metrics.model_queued.labels(name) if metrics else None

    def _publish(self) -> None:
        if self._in_flight_gauge is not None and self._queued_gauge is not None:
            self._in_flight_gauge.set(self.admitted)
            self._queued_gauge.set(self.waiting)

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float | None) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise Overloaded(f"model '{self.name}' is overloaded: {self.waiting} requests already waiting",
                             retry_after_s=self.retry_after_s)
        self.admitted += 1
        try:
            if self._slots.locked():
                self.waiting += 1
                self._publish()
                try:
                    await asyncio.wait_for(self._slots.acquire(), time_left(deadline, f"model '{self.name}'"))
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(f"model '{self.name}': deadline exceeded while queued in the gateway "
                                           "(never sent to the backend)") from None
                finally:
                    self.waiting -= 1
            else:
                await self._slots.acquire()
            self._publish()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self.admitted -= 1
            self._publish()


class DataPlane:
    def __init__(self, config: GatewayConfig, backends: dict[str, Backend], metrics: GatewayMetrics,
                 repository: ModelRepository | None = None) -> None:
        self.config = config
        self.backends = backends
        self.metrics = metrics
        self.repository = repository if repository is not None else ModelRepository(config, backends)
        self.in_flight = InFlight()
        self.statistics = Statistics()  # Triton-schema model statistics (REST /stats, gRPC ModelStatistics)
        self._queues: dict[str, ModelQueue] = {}
        self._versions: set[tuple[str, str]] = set()  # (model, version) pairs seen answering: metrics labels
        self._ready: tuple[float, bool] = (-READY_CACHE_S, False)

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
                    call.status, call.error = error.http_status, error.kind
                    reply = on_error(error)
            call.response_bytes = size_of(reply)
            return reply
        finally:
            gauge.dec()
            self.observe(call)

    def observe(self, call: Call) -> None:
        """The one place a request (or stream session) is written to the request metrics, the access log and,
        for an inference that reached a model, the model statistics."""
        version = self._version_label(call)
        seconds = time.perf_counter() - call.started
        if call.label in INFERENCE_LABELS and call.route is not None and call.status != CLIENT_GONE:
            before = None if call.backend_started is None else call.backend_started - call.started
            self.statistics.record(call.model, call.version, ok=call.status < 400, total_s=seconds,
                                   backend_s=call.backend_s, before_backend_s=before, queue_s=call.queue_s,
                                   batch_size=call.batch_size)
        if call.timed:
            self.metrics.observe_request(call.model, version, call.protocol, call.label, call.status,
                                         seconds, call.request_bytes, call.response_bytes)
        else:
            self.metrics.count_request(call.model, version, call.protocol, call.label, call.status)
        if self.config.access_log and access_logger.isEnabledFor(logging.INFO):
            access_logger.info(json.dumps({
                "request_id": call.request_id, "protocol": call.protocol, "route": call.label,
                "model": call.model, "version": version, "status": call.status, "error": call.error,
                "latency_ms": round(seconds * 1000, 3), "request_bytes": call.request_bytes,
                "response_bytes": call.response_bytes, "key": call.key_name}))

    def _version_label(self, call: Call) -> str:
        """The version as a metrics label: only versions that answered once (bounded), others `_other`."""
        if not call.version:
            return ""
        seen = (call.model, call.version)
        if seen in self._versions:
            return call.version
        if call.status < 400 and call.route is not None and len(self._versions) < MAX_VERSION_LABELS:
            self._versions.add(seen)
            return call.version
        return OTHER_VERSION

    async def admit(self, call: Call, key: str | None, name: str, version: str = "") -> ModelRoute:
        """Authorise `key` for model `name`, route it (discovering unknown names), and refuse a request of
        known size that is over the route's limit. Fills in the call's route, names and limit."""
        found = self.authorize(key, name)
        call.key_name = found.name if found is not None else ""
        check_version(version)
        route = await self.repository.resolve(name)
        call.route, call.name, call.model, call.version = route, name, route.public_name, version
        call.max_request_bytes = route.max_request_bytes
        if call.request_bytes is not None:
            call.check_size(call.request_bytes)
        return route

    # --- access ------------------------------------------------------------------------------------
    def authorize(self, key: str | None, model: str | None = None) -> ApiKey | None:
        """No/unknown key: Unauthenticated (401). Known key not allowed for `model`: Forbidden (403).
        A key allowed any public name of a route (its own or an alias) may use the route under all of them.
        A restricted key gets 403 for an unknown model too, so keys cannot probe which models exist."""
        if not self.config.auth_enabled:
            return None
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        found = self.config.lookup_key(key)
        if found is None:
            raise Unauthenticated("unknown API key")
        if model is not None and not any(found.allows(name) for name in self.repository.names_of(model)):
            raise Forbidden(f"API key '{found.name}' is not allowed to use model '{model}'")
        return found

    # --- health and metadata -----------------------------------------------------------------------
    async def live(self) -> bool:
        return True  # this process answers; backend health is readiness

    async def ready(self) -> bool:
        """Every backend up and every served model with a live worker (Triton's strict readiness): a pod that
        cannot serve one of its models is taken out of rotation. Cached for READY_CACHE_S (probes are cheap)."""
        checked, ready = self._ready
        if time.monotonic() - checked < READY_CACHE_S:
            return ready
        ready = await self._check_ready()
        self._ready = (time.monotonic(), ready)
        return ready

    async def _check_ready(self) -> bool:
        for backend in self.backends.values():
            if not await backend.ready():
                return False

        async def model_ready(route: ModelRoute) -> bool:
            try:
                return await self.model_ready(route)
            except GatewayError:
                return False

        return all(await asyncio.gather(*(model_ready(route) for route in self.repository.routes())))

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    async def model_ready(self, route: ModelRoute, version: str = "") -> bool:
        return await self.backends[route.backend].model_ready(route.model, version)

    async def model_metadata(self, route: ModelRoute, version: str = "", name: str = "") -> dict[str, Any]:
        """The backend's metadata under the public name `name` (default: the route's own)."""
        meta = await self.backends[route.backend].model_metadata(route.model, version)
        return {**meta, "name": name or route.public_name}

    async def model_config(self, route: ModelRoute, version: str = "", name: str = "") -> dict[str, Any]:
        """Triton's model config (REST form) under the public name `name` (default: the route's own)."""
        config = await self.backends[route.backend].model_config(route.model, version)
        return {**config, "name": name or route.public_name}

    def model_statistics(self, key: str | None, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton's statistics (REST form) of model `name` (already admitted) or, with no name, of every model
        this key may use; a model's versions are those it was asked for (none yet: the default)."""
        if name:
            names = [name]
        else:
            names = [route.public_name for route in self.allowed_routes(key)]
        stats = []
        for model in names:
            versions = [version] if name and version else (self.statistics.versions_of(model) or [DEFAULT_VERSION])
            stats.extend(self.statistics.report(model, v) for v in versions)
        return {"model_stats": stats}

    def allowed_routes(self, key: str | None) -> list[ModelRoute]:
        """The routes this key may use (all of them without auth)."""
        self.authorize(key)
        allowed = []
        for route in self.repository.routes():
            try:
                self.authorize(key, route.public_name)
            except Forbidden:
                continue
            allowed.append(route)
        return allowed

    async def repository_index(self, key: str | None, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: the models this key may use, each READY or UNAVAILABLE."""
        allowed = self.allowed_routes(key)

        async def state(route: ModelRoute) -> str:
            try:
                return "READY" if await self.model_ready(route) else "UNAVAILABLE"
            except GatewayError:
                return "UNAVAILABLE"

        states = await asyncio.gather(*(state(route) for route in allowed))
        return [{"name": route.public_name, "state": s, "reason": ""}
                for route, s in zip(allowed, states, strict=True) if s == "READY" or not ready_only]

    # --- backend calls (backend metrics) -------------------------------------------------------------
    async def infer(self, route: ModelRoute, request: InferRequest, deadline: float,
                    call: Call | None = None) -> InferResponse:
        """OIP inference on `route`; `request.model_name` is the public name the client used, and the answer
        carries it back. `call`: the request's record, which gets the backend timing and batch size."""
        backend = self.backends[route.backend]
        if request.has_json_text():  # JSON BYTES data: base64 where the model's input is binary
            request = request.with_base64_decoded(await backend.binary_inputs(route.model, request.model_version))
        if call is not None:
            call.batch_size = request.batch_size()
        async with self._backend_call(backend, route, deadline, call):
            response = await backend.infer(dataclasses.replace(request, model_name=route.model), deadline)
        response.model_name = request.model_name
        response.model_version = request.model_version or response.model_version
        response.id = request.id
        return response

    async def predict_raw(self, route: ModelRoute, version: str, fields: dict[str, bytes],
                          deadline: float, call: Call | None = None) -> RawPrediction:
        backend = self.backends[route.backend]
        async with self._backend_call(backend, route, deadline, call):
            return await backend.predict_raw(route.model, version, fields, deadline)

    @contextlib.asynccontextmanager
    async def _backend_call(self, backend: Backend, route: ModelRoute, deadline: float,
                            call: Call | None) -> AsyncIterator[None]:
        """One backend call, the same for OIP and task routes: a slot in the model's queue, then the call timed
        into the backend metrics (and the request's record) and its failure counted by kind."""
        queued = time.perf_counter()
        async with self._queue(route).slot(deadline):
            started = time.perf_counter()
            if call is not None:
                call.backend_started = started
                call.queue_s = started - queued
            try:
                yield
            except Exception as exc:
                self._count_error(backend, exc)
                raise
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.observe_backend(route.public_name, backend.name, elapsed)
                if call is not None:
                    call.backend_s = elapsed

    def _queue(self, route: ModelRoute) -> ModelQueue:
        queue = self._queues.get(route.public_name)
        if queue is None:
            queue = self._queues[route.public_name] = ModelQueue(
                route.public_name, route.max_concurrency, route.max_queue, self.config.retry_after_s, self.metrics)
        return queue

    def _count_error(self, backend: Backend, exc: Exception) -> None:
        kind = exc.kind if isinstance(exc, GatewayError) else "backend_error"
        self.metrics.backend_errors.labels(backend.name, kind).inc()
