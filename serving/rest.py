"""REST front-end (aiohttp): Open Inference Protocol v2 + task routes + metrics + OpenAPI.

Every route is in `ROUTES` (method, path, handler, protected, summary): the router and the OpenAPI
document are both built from it. Health, metrics and the OpenAPI document are open; every metadata and
inference route needs an API key (``Authorization: Bearer <key>`` or ``x-api-key: <key>``) when keys are
configured. Errors are ``{"error": "<message>"}`` with the status from `serving.errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from serving.backend_metrics import BackendStateCollector
from serving.config import ModelRoute
from serving.dataplane import Call, DataPlane, api_key
from serving.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    Unauthenticated,
    as_gateway_error,
    error_for_status,
)
from serving.types import InferRequest

logger = logging.getLogger(__name__)

PROTOCOL = "rest"
HEADER_LENGTH = "Inference-Header-Content-Length"
CHUNK = 1 << 20
JSON = "application/json"
REPOSITORY_INDEX_MAX_BYTES = 1 << 16


def api_key_from(headers: Any) -> str | None:
    return api_key(headers.get("Authorization"), headers.get("x-api-key"))


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with Content-Type exactly ``application/json`` (no charset parameter: KServe's SDK
    reads an error's message only under exactly that type; JSON is UTF-8 by definition)."""
    return web.Response(body=json.dumps(doc).encode(), status=status,
                        headers={"Content-Type": JSON, **(headers or {})})


def error_response(exc: BaseException) -> web.Response:
    err = as_gateway_error(exc)
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    if isinstance(err, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="zoo-gateway"'
    return json_response({"error": err.message}, status=err.http_status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """aiohttp's own errors (an unknown route, a method a route does not take, ...) as JSON errors too:
    tritonclient and KServe's SDK parse every error body as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no route {request.method} {request.path}; the routes are listed at /openapi.json"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed or 'none'}"
        else:
            message = exc.text or exc.reason
        response = error_response(error_for_status(exc.status, message))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def body_size(response: web.StreamResponse) -> int | None:
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, (bytes, bytearray)) else None


Handler = Callable[["RestApi", web.Request, Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    label: str  # metrics route label
    protected: bool
    summary: str


class RestApi:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane
        self.metrics = dataplane.metrics
        # backend up / model ready / worker gauges, asked for at scrape time (see serving/backend_metrics.py)
        self.backend_state = BackendStateCollector(dataplane)
        self.metrics.registry.register(self.backend_state)

    # --- plumbing ---------------------------------------------------------------------------------
    def _wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        metered = route.label not in ("health", "metrics", "openapi")

        async def handle(request: web.Request) -> web.StreamResponse:
            if not metered:
                try:
                    return await route.handler(self, request, Call(PROTOCOL, route.label))
                except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                    return error_response(exc)

            async def work(call: Call) -> web.StreamResponse:
                try:
                    response = await route.handler(self, request, call)
                except web.HTTPException as exc:  # aiohttp's own (413 over client_max_size, 400 ...)
                    raise error_for_status(exc.status, exc.text or exc.reason) from None
                call.status = response.status
                return response

            return await self.dp.serve(Call(PROTOCOL, route.label), work, error_response, body_size)

        return handle

    def application(self) -> web.Application:
        # aiohttp's own cap is the largest limit; per-model limits are checked on top of it
        app = web.Application(client_max_size=self.dp.config.largest_request_bytes, middlewares=[json_errors])
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._wrap(route))
        return app

    async def _admit(self, request: web.Request, call: Call) -> ModelRoute:
        return await self.dp.admit(call, api_key_from(request.headers), request.match_info["model"],
                                   request.match_info.get("version", ""))

    @staticmethod
    async def _read_body(request: web.Request, call: Call) -> bytes:
        """The whole body, refusing (413) before reading it when Content-Length is over the call's limit."""
        length = request.content_length
        if length is not None:
            call.check_size(length)
            body = await request.read()
        else:  # chunked: count as it streams in
            buf = bytearray()
            async for chunk in request.content.iter_chunked(CHUNK):
                buf += chunk
                call.check_size(len(buf), so_far=True)
            body = bytes(buf)
        call.check_size(len(body))  # a compressed body can inflate past its Content-Length
        call.request_bytes = len(body)
        return body

    async def _read_fields(self, request: web.Request, call: Call) -> dict[str, bytes]:
        """Task-route input: multipart parts by name, else the raw body as ``body``; query params too."""
        if request.content_length is not None:
            call.check_size(request.content_length)
        fields: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            total = 0
            try:
                reader = await request.multipart()
                index = 0
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise InvalidInput("nested multipart bodies are not supported")
                    buf = bytearray()
                    while chunk := await part.read_chunk(CHUNK):
                        buf += chunk
                        total += len(chunk)
                        call.check_size(total, so_far=True)
                    fields[part.name or f"part{index}"] = bytes(buf)
                    index += 1
            except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's parser on a broken body
                raise InvalidInput(f"malformed multipart body: {exc}") from None
            call.request_bytes = total
        else:
            fields["body"] = await self._read_body(request, call)
        for key, value in request.query.items():
            fields.setdefault(key, value.encode("utf-8"))
        return fields

    # --- health, metrics, openapi ------------------------------------------------------------------
    async def live(self, request: web.Request, call: Call) -> web.Response:
        return json_response({"live": await self.dp.live()})

    async def ready(self, request: web.Request, call: Call) -> web.Response:
        ready = await self.dp.ready()
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics_route(self, request: web.Request, call: Call) -> web.Response:
        await self.backend_state.refresh()
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request, call: Call) -> web.Response:
        return json_response(openapi_document())

    # --- metadata -------------------------------------------------------------------------------------
    async def server_metadata(self, request: web.Request, call: Call) -> web.Response:
        self.dp.authorize(api_key_from(request.headers))
        return json_response(self.dp.server_metadata())

    async def model_metadata(self, request: web.Request, call: Call) -> web.Response:
        route = await self._admit(request, call)
        return json_response(await self.dp.model_metadata(route, call.version, call.name))

    async def model_ready(self, request: web.Request, call: Call) -> web.Response:
        route = await self._admit(request, call)
        ready = await self.dp.model_ready(route, call.version)
        return json_response({"name": call.name, "ready": ready}, status=200 if ready else 503)

    async def repository_index(self, request: web.Request, call: Call) -> web.Response:
        """Triton's repository index (``POST /v2/repository/index``): the models this key may use, each
        READY or UNAVAILABLE, so clients (``zoo models``) can list what the gateway serves. An optional JSON
        body ``{"ready": true}`` keeps only ready models; any other body is ignored."""
        key = api_key_from(request.headers)
        self.dp.authorize(key)
        call.max_request_bytes = REPOSITORY_INDEX_MAX_BYTES
        body = await self._read_body(request, call)
        ready_only = False
        if body.lstrip().startswith(b"{"):
            try:
                ready_only = bool(json.loads(body).get("ready", False))
            except (ValueError, AttributeError):
                raise InvalidInput("repository index body must be a JSON object like {\"ready\": true}") from None
        allowed = []
        for route in self.dp.repository.routes():
            try:
                self.dp.authorize(key, route.public_name)
            except Forbidden:
                continue
            allowed.append(route)

        async def state(route: Any) -> str:
            try:
                return "READY" if await self.dp.model_ready(route) else "UNAVAILABLE"
            except GatewayError:
                return "UNAVAILABLE"

        states = await asyncio.gather(*(state(route) for route in allowed))
        index = [{"name": route.public_name, "state": s, "reason": ""}
                 for route, s in zip(allowed, states, strict=True) if s == "READY" or not ready_only]
        return json_response(index)

    # --- inference ------------------------------------------------------------------------------------
    async def infer(self, request: web.Request, call: Call) -> web.Response:
        route = await self._admit(request, call)
        body = await self._read_body(request, call)
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            try:
                header_length = int(header_length)
            except ValueError:
                raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        infer_request = InferRequest.from_rest(body, header_length, call.name, call.version)
        response = await self.dp.infer(route, infer_request, call.deadline())
        out, out_header = response.to_rest(infer_request.binary_output)
        headers = {"Content-Type": JSON if out_header is None else "application/octet-stream"}
        if out_header is not None:
            headers[HEADER_LENGTH] = str(out_header)
        return web.Response(body=out, headers=headers)

    async def predict(self, request: web.Request, call: Call) -> web.Response:
        route = await self._admit(request, call)
        fields = await self._read_fields(request, call)
        result = await self.dp.predict_raw(route, call.version, fields, call.deadline())
        return web.Response(body=result.body, headers={"Content-Type": result.content_type, **result.headers})


M = "/v2/models/{model}"
MV = "/v2/models/{model}/versions/{version}"
ROUTES: list[Route] = [
    Route("GET", "/v2/health/live", RestApi.live, "health", False, "Server liveness"),
    Route("GET", "/v2/health/ready", RestApi.ready, "health", False, "Server readiness (all backends)"),
    Route("GET", "/v2", RestApi.server_metadata, "server_metadata", True, "Server metadata"),
    Route("GET", M, RestApi.model_metadata, "model_metadata", True, "Model metadata"),
    Route("GET", MV, RestApi.model_metadata, "model_metadata", True, "Model metadata (one version)"),
    Route("GET", f"{M}/ready", RestApi.model_ready, "model_ready", True, "Model readiness"),
    Route("GET", f"{MV}/ready", RestApi.model_ready, "model_ready", True, "Model readiness (one version)"),
    Route("POST", "/v2/repository/index", RestApi.repository_index, "repository_index", True,
          "Models this key may use, READY or UNAVAILABLE (Triton's repository index)"),
    Route("POST", f"{M}/infer", RestApi.infer, "infer", True, "Inference (OIP v2, JSON or binary tensors)"),
    Route("POST", f"{MV}/infer", RestApi.infer, "infer", True, "Inference on one version"),
    Route("POST", "/v1/models/{model}:predict", RestApi.predict, "predict", True,
          "Task route: the model's natural input (image bytes, multipart, JSON) -> its JSON answer"),
    Route("POST", "/v1/models/{model}/versions/{version}:predict", RestApi.predict, "predict", True,
          "Task route on one version"),
    Route("GET", "/metrics", RestApi.metrics_route, "metrics", False, "Prometheus metrics"),
    Route("GET", "/openapi.json", RestApi.openapi, "openapi", False, "This OpenAPI document"),
]


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3 description of every route in `ROUTES`."""
    error = {"description": "error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in ("model", "version") if "{" + name + "}" in route.path]
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}"
                           .replace("{", "").replace("}", "").replace(":", "_"),
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        }
        if route.protected:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            op["responses"].update({"401": error, "403": error, "404": error})
        if route.method == "POST":
            op["responses"].update({"400": error, "413": error, "500": error, "503": error, "504": error})
            if route.label == "infer":
                op["requestBody"] = {"required": True, "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                                 "description": f"JSON header of {HEADER_LENGTH} bytes, "
                                                                "then binary tensors"}}}
            elif route.label == "repository_index":
                op["requestBody"] = {"required": False, "content": {
                    JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}
            else:
                op["requestBody"] = {"required": True, "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                    JSON: {"schema": {"type": "object"}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "zoo-gateway", "version": "0.1.0",
                 "description": "Open Inference Protocol v2 and task routes in front of TorchServe"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Tensor": tensor,
                "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"}, "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"type": "object"}}}},
            },
        },
    }
