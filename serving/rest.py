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
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError

from serving.backend_metrics import BackendStateCollector
from serving.config import ModelRoute
from serving.dataplane import VERSION_PATTERN, Call, DataPlane, api_key
from serving.errors import (
    ClientGone,
    GatewayError,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    Unauthenticated,
    as_gateway_error,
    error_for_status,
)
from serving.types import DATATYPES, MAX_DIMS, InferRequest, InferResponse

logger = logging.getLogger(__name__)

PROTOCOL = "rest"
HEADER_LENGTH = "Inference-Header-Content-Length"
CHUNK = 1 << 20
JSON = "application/json"
REPOSITORY_INDEX_MAX_BYTES = 1 << 16
REQUEST_ID = "X-Request-ID"
# Bodies above this are parsed and rendered in a worker thread, so the event loop (liveness, every other
# request) never waits for one request's JSON.
OFF_LOOP_BYTES = 256 * 1024


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
        self._state_refresh: asyncio.Future | None = None
        self._state_refreshed = 0.0

    # --- plumbing ---------------------------------------------------------------------------------
    def _wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        metered = route.label not in ("health", "metrics", "openapi")

        async def handle(request: web.Request) -> web.StreamResponse:
            if not metered:
                try:
                    return await route.handler(self, request, Call(PROTOCOL, route.label))
                except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                    return error_response(exc)
            request_id = request.headers.get(REQUEST_ID, "")[:128] or uuid.uuid4().hex

            async def work(call: Call) -> web.StreamResponse:
                try:
                    response = await route.handler(self, request, call)
                except web.HTTPException as exc:  # aiohttp's own (413 over client_max_size, 400 ...)
                    raise error_for_status(exc.status, exc.text or exc.reason) from None
                call.status = response.status
                return response

            response = await self.dp.serve(Call(PROTOCOL, route.label, request_id=request_id), work,
                                           error_response, body_size)
            response.headers[REQUEST_ID] = request_id
            return response

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

    async def _read_body(self, request: web.Request, call: Call) -> bytes:
        """The whole body, streamed in and counted as it comes: refused (413) before reading when Content-Length
        is over the call's limit, and as soon as it passes the limit (a compressed body counts inflated, and may
        inflate to at most `max_decompressed_bytes`). A body that stalls for `body_timeout_s` is 408; a client
        that goes away mid-upload is ClientGone (499)."""
        length = request.content_length
        if length is not None:
            call.check_size(length)
        encoded = request.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        inflate_limit = self.dp.config.max_decompressed_bytes if encoded else None
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await self._read_chunk(request)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                call.check_size(size, so_far=True)
                if inflate_limit is not None and size > inflate_limit:
                    raise PayloadTooLarge(f"compressed request inflates to more than {inflate_limit} bytes")
        except GatewayError:
            if encoded:
                skip_draining(request)
            raise
        body = b"".join(chunks)
        call.request_bytes = len(body)
        return body

    async def _read_chunk(self, request: web.Request) -> bytes:
        """One chunk of the body (b"" at its end), with the body read timeout and transport errors mapped."""
        try:
            async with asyncio.timeout(self.dp.config.body_timeout_s):
                return await request.content.readany()
        except TimeoutError:
            raise RequestTimeout(f"request body stalled: nothing received for {self.dp.config.body_timeout_s:g}s")\
                from None
        except ConnectionResetError:
            raise ClientGone("client went away while sending the request body") from None
        except http_exceptions.HttpProcessingError as exc:  # a short body, bad chunking ...
            raise InvalidInput(f"malformed request body: {exc.message or type(exc).__name__}") from None
        except RequestPayloadError as exc:  # a broken gzip stream (aiohttp wraps the parser's error)
            raise InvalidInput(f"malformed request body: {str(exc).splitlines()[-1].strip() or exc}") from None

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
            except (ValueError, AssertionError, RuntimeError, http_exceptions.HttpProcessingError,
                    RequestPayloadError) as exc:
                raise InvalidInput(f"malformed multipart body: {exc}") from None  # aiohttp's parser on a broken body
            except ConnectionResetError:
                raise ClientGone("client went away while sending the request body") from None
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
        """Prometheus exposition. The backend questions behind it are asked at most every `metrics_cache_s`
        (concurrent scrapes share one refresh), and the text is rendered off the event loop. With API keys
        on, a scrape without a valid key gets no series that name a model (`server.metrics_anonymous`:
        redacted, the default; or 401 with `refused`; or everything with `full`), so no one learns model
        names here that a restricted key could not probe."""
        config = self.dp.config
        full = True
        if config.auth_enabled and config.metrics_anonymous != "full":
            try:
                self.dp.authorize(api_key_from(request.headers))
            except Unauthenticated:
                if config.metrics_anonymous == "refused":
                    raise
                full = False
        await self._refresh_backend_state()
        body, content_type = await asyncio.to_thread(self.metrics.exposition)
        if not full:
            body = without_model_series(body)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _refresh_backend_state(self) -> None:
        stale = time.monotonic() - self._state_refreshed > self.dp.config.metrics_cache_s
        if self._state_refresh is None or (self._state_refresh.done() and stale):
            self._state_refreshed = time.monotonic()
            self._state_refresh = asyncio.ensure_future(self.backend_state.refresh())
        await asyncio.shield(self._state_refresh)

    async def openapi(self, request: web.Request, call: Call) -> web.Response:
        """The routes, plus one typed inference path per model the caller's key may use (none without a valid
        key when keys are configured: the document itself is open)."""
        return json_response(openapi_document(await self._served_metadata(api_key_from(request.headers))))

    async def _served_metadata(self, key: str | None) -> list[dict[str, Any]]:
        try:
            routes = self.dp.allowed_routes(key)
        except GatewayError:
            return []

        async def metadata(route: ModelRoute) -> dict[str, Any] | None:
            try:
                return await self.dp.model_metadata(route)
            except GatewayError:
                return None  # a model its backend cannot describe now is left out

        found = await asyncio.gather(*(metadata(route) for route in routes))
        return [meta for meta in found if meta is not None]

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

    async def model_config(self, request: web.Request, call: Call) -> web.Response:
        """Triton's model config (``GET /v2/models/{m}[/versions/{v}]/config``), derived from the registry's
        declared tensors and the backend's batching and instances (see serving/triton_schema.py)."""
        route = await self._admit(request, call)
        return json_response(await self.dp.model_config(route, call.version, call.name))

    async def model_statistics(self, request: web.Request, call: Call) -> web.Response:
        """Triton's statistics of one model (version), or of every model this key may use."""
        key = api_key_from(request.headers)
        if "model" in request.match_info:
            await self._admit(request, call)
            return json_response(self.dp.model_statistics(key, call.model, call.version))
        return json_response(self.dp.model_statistics(key))

    async def repository_index(self, request: web.Request, call: Call) -> web.Response:
        """Triton's repository index (``POST /v2/repository/index``): the models this key may use, each
        READY or UNAVAILABLE, so clients (``zoo models``) can list what the gateway serves. The body is empty
        (tritonclient sends none) or a JSON object whose optional boolean ``ready`` keeps only ready models;
        anything else is 400, as Triton answers it and as the OpenAPI document says."""
        key = api_key_from(request.headers)
        self.dp.authorize(key)
        call.max_request_bytes = REPOSITORY_INDEX_MAX_BYTES
        body = await self._read_body(request, call)
        ready_only = False
        if body.strip():
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):
                doc = None
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise InvalidInput("repository index body must be empty or a JSON object like {\"ready\": true}")
            ready_only = doc.get("ready", False)
        return json_response(await self.dp.repository_index(key, ready_only))

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
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        if json_bytes > self.dp.config.max_json_bytes:
            raise PayloadTooLarge(f"JSON part of {json_bytes} bytes is over the limit of "
                                  f"{self.dp.config.max_json_bytes} bytes: send large tensors as binary data "
                                  f"({HEADER_LENGTH})")
        infer_request = await off_loop(len(body), InferRequest.from_rest, body, header_length, call.name,
                                       call.version)
        response = await self.dp.infer(route, infer_request, call.deadline(), call)
        out, out_header = await off_loop(len(body), render_response, response, infer_request)
        headers = {"Content-Type": JSON if out_header is None else "application/octet-stream"}
        if out_header is not None:
            headers[HEADER_LENGTH] = str(out_header)
        return web.Response(body=out, headers=headers)

    async def predict(self, request: web.Request, call: Call) -> web.Response:
        route = await self._admit(request, call)
        fields = await self._read_fields(request, call)
        result = await self.dp.predict_raw(route, call.version, fields, call.deadline(), call)
        return web.Response(body=result.body, headers={"Content-Type": result.content_type, **result.headers})


def skip_draining(request: web.Request) -> None:
    """Close the connection after the answer instead of reading (and so inflating) the rest of a refused
    compressed body: aiohttp drains an unread body for up to `lingering_time`, inflating it on the loop."""
    protocol = request.protocol
    if hasattr(protocol, "_lingering_time"):
        protocol._lingering_time = 0


def without_model_series(exposition: bytes) -> bytes:
    """The exposition without the samples that carry a `model` label (for anonymous scrapers)."""
    return b"\n".join(line for line in exposition.split(b"\n") if b'model="' not in line)


async def off_loop(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` inline for a small payload, in a worker thread for a large one (OFF_LOOP_BYTES)."""
    if size < OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def render_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    return response.to_rest(request.binary_output)


M = "/v2/models/{model}"
MV = "/v2/models/{model}/versions/{version}"
ROUTES: list[Route] = [
    Route("GET", "/v2/health/live", RestApi.live, "health", False, "Server liveness"),
    Route("GET", "/v2/health/ready", RestApi.ready, "health", False, "Server readiness (all backends)"),
    Route("GET", "/v2", RestApi.server_metadata, "server_metadata", True, "Server metadata"),
    # before {model}: "stats" is not a model name here
    Route("GET", "/v2/models/stats", RestApi.model_statistics, "model_statistics", True,
          "Statistics of every model this key may use (Triton's statistics extension)"),
    Route("GET", M, RestApi.model_metadata, "model_metadata", True, "Model metadata"),
    Route("GET", MV, RestApi.model_metadata, "model_metadata", True, "Model metadata (one version)"),
    Route("GET", f"{M}/ready", RestApi.model_ready, "model_ready", True, "Model readiness"),
    Route("GET", f"{MV}/ready", RestApi.model_ready, "model_ready", True, "Model readiness (one version)"),
    Route("GET", f"{M}/config", RestApi.model_config, "model_config", True,
          "Model configuration in Triton's model-config schema"),
    Route("GET", f"{MV}/config", RestApi.model_config, "model_config", True, "Model configuration (one version)"),
    Route("GET", f"{M}/stats", RestApi.model_statistics, "model_statistics", True,
          "Model statistics in Triton's schema (the gateway's counters)"),
    Route("GET", f"{MV}/stats", RestApi.model_statistics, "model_statistics", True,
          "Model statistics (one version)"),
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


PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "minLength": 1},
    "version": {"type": "string", "pattern": r"^(?!.*\.\.)" + VERSION_PATTERN.pattern + "$"},
}
IMAGE_RULES = ("The model's natural input: image bytes (JPEG, PNG, ...; at least 8 pixels on each side), a "
               "multipart form with one part per field, or JSON; over the model's size limit: 413.")


def _typed_tensors(tensors: list[dict[str, Any]], request: bool) -> dict[str, Any]:
    """An array schema accepting exactly these declared tensors (name, datatype, shape rank). In a request
    (JSON, so the data is inline) at least one tensor, each with `data` and no negative dimension (a BYTES
    input is handed to the model one element per call: no zero dimension), as the server checks; what JSON
    Schema cannot say (the data's element count is the shape's product) it checks too (400)."""
    items = []
    for t in tensors:
        rank = len(t.get("shape", []))
        dims: dict[str, Any] = {"type": "integer"}
        if request:
            dims["minimum"] = 1 if t["datatype"] == "BYTES" else 0
        props: dict[str, Any] = {
            "name": {"type": "string", "enum": [t["name"]]},
            "datatype": {"type": "string", "enum": [t["datatype"]]},
            "shape": {"type": "array", "items": dims, "minItems": rank, "maxItems": rank,
                      "description": f"declared {t.get('shape', [])}; -1 any"},
            "data": {"type": "array", "items": {}}}
        required = ["name", "datatype", "shape", "data"] if request else ["name", "datatype", "shape"]
        items.append({"type": "object", "required": required, "properties": props})
    schema: dict[str, Any] = {"type": "array", "items": {"oneOf": items} if items else {}}
    if request:
        schema["minItems"] = 1
    return schema


def model_paths(meta: dict[str, Any]) -> dict[str, Any]:
    """The typed inference path of one served model, from its metadata (the registry's declared tensors)."""
    name = meta["name"]
    request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": _typed_tensors(meta.get("inputs", []), request=True),
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {
            "type": "string", "enum": [o["name"] for o in meta.get("outputs", [])]}}}}}}
    response = {"type": "object", "properties": {
        "model_name": {"type": "string"}, "id": {"type": "string"},
        "outputs": _typed_tensors(meta.get("outputs", []), request=False)}}
    error = {"description": "error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {f"/v2/models/{name}/infer": {"post": {
        "summary": f"Inference on {name} (its declared tensors)",
        "operationId": f"infer_{name}",
        "security": [{"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": True, "content": {JSON: {"schema": request}}},
        "responses": {"200": {"description": "the declared outputs, batch dimension first",
                              "content": {JSON: {"schema": response}}},
                      **{code: error for code in ("400", "401", "403", "404", "413", "500", "503", "504")}}}}}


def openapi_document(models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """OpenAPI 3 description of every route in `ROUTES`, plus a typed inference path per model in `models`
    (their OIP metadata)."""
    error = {"description": "error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [{"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS[name]}
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
                op["requestBody"] = {"required": False, "description": "empty, or a JSON object", "content": {
                    JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}
            else:
                op["requestBody"] = {"required": True, "description": IMAGE_RULES, "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                    JSON: {"schema": {"type": "object"}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    for meta in models or ():
        paths.update(model_paths(meta))
    # a tensor of a JSON request: its data inline (binary tensors travel as application/octet-stream)
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "maxItems": MAX_DIMS, "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)}, "parameters": {"type": "object"},
        "data": {"type": "array", "description": "row-major, flat or nested as the shape; as many elements as "
                                                 "the shape's product"}}}
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
                    "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
            },
        },
    }
