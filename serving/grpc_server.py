"""gRPC front-end (grpc.aio): the OIP v2 service `inference.GRPCInferenceService`, same semantics as REST.

Auth: metadata ``authorization: Bearer <key>`` or ``x-api-key: <key>``; ServerLive/ServerReady are open.
Errors: status codes from `serving.errors`; 503 adds trailing metadata ``retry-after``.
Deadlines: the sooner of the model's limit and the client's own gRPC deadline.

ModelStreamInfer (Triton's bidirectional extension): requests are worked on concurrently (at most
`STREAM_WINDOW` per stream, which then stops reading: backpressure) and answered strictly in arrival order,
each answer carrying its request's id; a failed request is answered in-band with ``error_message`` and the
stream goes on. When the client closes or cancels the stream, work not yet sent to the backend is dropped
and work already sent is left to finish in the backend and discarded (see serving/backends/torchserve.py):
nothing of a dead stream is forwarded as a stream, and no backend call is cancelled mid-flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from proto import OIP_SERVICE, oip, serialize
from serving.dataplane import DataPlane, api_key
from serving.errors import GatewayError, PayloadTooLarge, as_gateway_error
from serving.metrics import UNKNOWN_MODEL
from serving.types import InferRequest

logger = logging.getLogger(__name__)

PROTOCOL = "grpc"
STREAM_WINDOW = 16


def api_key_from(context: grpc.aio.ServicerContext) -> str | None:
    metadata = dict(context.invocation_metadata() or ())
    return api_key(metadata.get("authorization"), metadata.get("x-api-key"))


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    err = as_gateway_error(exc)
    if err.retry_after_s is not None:
        context.set_trailing_metadata((("retry-after", str(err.retry_after_s)),))
    await context.abort(err.grpc_code, err.message)


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane
        self.metrics = dataplane.metrics

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, request_cls: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_cls.FromString, response_serializer=serialize)

        return grpc.method_handlers_generic_handler(OIP_SERVICE, {
            "ServerLive": unary(self.ServerLive, oip.ServerLiveRequest),
            "ServerReady": unary(self.ServerReady, oip.ServerReadyRequest),
            "ServerMetadata": unary(self.ServerMetadata, oip.ServerMetadataRequest),
            "ModelReady": unary(self.ModelReady, oip.ModelReadyRequest),
            "ModelMetadata": unary(self.ModelMetadata, oip.ModelMetadataRequest),
            "ModelInfer": unary(self.ModelInfer, oip.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.ModelStreamInfer, request_deserializer=oip.ModelInferRequest.FromString,
                response_serializer=serialize),
        })

    # --- health and metadata -------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return oip.ServerLiveResponse(live=await self.dp.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return oip.ServerReadyResponse(ready=await self.dp.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def run(call: dict[str, Any]) -> Any:
            self.dp.authorize(api_key_from(context))
            return oip.ServerMetadataResponse(**self.dp.server_metadata())

        return await self._metered("server_metadata", context, run)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def run(call: dict[str, Any]) -> Any:
            route = await self._route(request.name, request.version, context, call)
            return oip.ModelReadyResponse(ready=await self.dp.model_ready(route, request.version))

        return await self._metered("model_ready", context, run)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def run(call: dict[str, Any]) -> Any:
            route = await self._route(request.name, request.version, context, call)
            meta = await self.dp.model_metadata(route, request.version)

            def tensors(items: list[dict[str, Any]]) -> list[Any]:
                return [oip.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t.get("shape", [])) for t in items]

            return oip.ModelMetadataResponse(
                name=meta["name"], versions=meta.get("versions", []), platform=meta.get("platform", ""),
                inputs=tensors(meta.get("inputs", [])), outputs=tensors(meta.get("outputs", [])))

        return await self._metered("model_metadata", context, run)

    # --- inference -------------------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def run(call: dict[str, Any]) -> Any:
            return await self._infer(request, api_key_from(context), context.time_remaining(), call)

        return await self._metered("infer", context, run, request_bytes=request.ByteSize())

    async def _infer(self, request: Any, key: str | None, client_timeout: float | None,
                     call: dict[str, Any]) -> Any:
        self.dp.authorize(key, request.model_name)
        route = await self.dp.route_or_discover(request.model_name)
        call["model"], call["version"] = route.public_name, request.model_version
        size = call["request_bytes"]
        if size > route.max_request_bytes:
            raise PayloadTooLarge(
                f"request of {size} bytes is over the limit of {route.max_request_bytes} bytes")
        infer_request = InferRequest.from_grpc(request)
        infer_request.model_name = route.public_name
        response = await self.dp.infer(route, infer_request, self.dp.deadline(route, client_timeout))
        return response.to_grpc(oip.ModelInferResponse)

    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        key = api_key_from(context)
        try:
            self.dp.authorize(key)
        except GatewayError as exc:
            await abort(context, exc)
        pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(maxsize=STREAM_WINDOW)

        async def read() -> None:
            try:
                async for msg in requests:
                    await pending.put(asyncio.create_task(self._stream_one(msg, key)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a read error, if any
        finally:
            # client gone (or stream over): drop work not yet answered; backend calls already in flight
            # finish in the backend and are discarded there
            reader.cancel()
            while not pending.empty():
                task = pending.get_nowait()
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _stream_one(self, msg: Any, key: str | None) -> Any:
        call: dict[str, Any] = {"model": UNKNOWN_MODEL, "version": "", "request_bytes": msg.ByteSize()}
        started = time.perf_counter()
        status = 200
        gauge = self.metrics.in_flight.labels(PROTOCOL)
        gauge.inc()
        with self.dp.in_flight:
            try:
                reply = oip.ModelStreamInferResponse(infer_response=await self._infer(msg, key, None, call))
            except Exception as exc:  # noqa: BLE001 - answered in-band, the stream goes on
                err = as_gateway_error(exc)
                status = err.http_status
                reply = oip.ModelStreamInferResponse(error_message=err.message)
                reply.infer_response.id = msg.id
                reply.infer_response.model_name = msg.model_name
            finally:
                gauge.dec()
        self.metrics.observe_request(call["model"], call["version"], PROTOCOL, "stream_infer", status,
                                     time.perf_counter() - started, call["request_bytes"], reply.ByteSize())
        return reply

    # --- plumbing ------------------------------------------------------------------------------------
    async def _route(self, model: str, version: str, context: grpc.aio.ServicerContext,
                     call: dict[str, Any]) -> Any:
        self.dp.authorize(api_key_from(context), model)
        route = await self.dp.route_or_discover(model)
        call["model"], call["version"] = route.public_name, version
        return route

    async def _metered(self, label: str, context: grpc.aio.ServicerContext, run: Any,
                       request_bytes: int | None = None) -> Any:
        call: dict[str, Any] = {"model": UNKNOWN_MODEL, "version": "", "request_bytes": request_bytes}
        started = time.perf_counter()
        gauge = self.metrics.in_flight.labels(PROTOCOL)
        gauge.inc()
        reply = None
        error: GatewayError | None = None
        with self.dp.in_flight:
            try:
                reply = await run(call)
            except asyncio.CancelledError:
                error = GatewayError("cancelled by the client")
                raise
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, GatewayError):
                    logger.exception("unexpected error in %s", label)
                error = as_gateway_error(exc)
            finally:
                gauge.dec()
                status = 200 if error is None else (499 if type(error) is GatewayError else error.http_status)
                self.metrics.observe_request(call["model"], call["version"], PROTOCOL, label, status,
                                             time.perf_counter() - started, call["request_bytes"],
                                             reply.ByteSize() if reply is not None else None)
        if error is not None:
            await abort(context, error)
        return reply


def create_server(dataplane: DataPlane, max_message_bytes: int) -> grpc.aio.Server:
    size = min(max_message_bytes + (1 << 20), 2**31 - 1)
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((InferenceServicer(dataplane).handler(),))
    return server
