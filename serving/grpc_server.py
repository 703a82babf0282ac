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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from proto import OIP_SERVICE, oip, serialize
from serving.dataplane import Call, DataPlane, api_key
from serving.errors import GatewayError, InvalidInput, as_gateway_error
from serving.types import InferRequest

logger = logging.getLogger(__name__)

PROTOCOL = "grpc"
STREAM_WINDOW = 16


class Malformed:
    """A request message that did not parse: the RPC answers INVALID_ARGUMENT naming why (gRPC itself would
    answer UNKNOWN for a deserializer that raises)."""

    def __init__(self, error: Exception) -> None:
        self.error = InvalidInput(f"malformed protobuf message: {error}")


def lenient(message_cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
            return Malformed(exc)

    return parse


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

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, request_cls: Any) -> grpc.RpcMethodHandler:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    await abort(context, request.error)
                return await fn(request, context)

            return grpc.unary_unary_rpc_method_handler(
                checked, request_deserializer=lenient(request_cls), response_serializer=serialize)

        return grpc.method_handlers_generic_handler(OIP_SERVICE, {
            "ServerLive": unary(self.ServerLive, oip.ServerLiveRequest),
            "ServerReady": unary(self.ServerReady, oip.ServerReadyRequest),
            "ServerMetadata": unary(self.ServerMetadata, oip.ServerMetadataRequest),
            "ModelReady": unary(self.ModelReady, oip.ModelReadyRequest),
            "ModelMetadata": unary(self.ModelMetadata, oip.ModelMetadataRequest),
            "ModelInfer": unary(self.ModelInfer, oip.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.ModelStreamInfer, request_deserializer=lenient(oip.ModelInferRequest),
                response_serializer=serialize),
        })

    # --- health and metadata -------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return oip.ServerLiveResponse(live=await self.dp.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return oip.ServerReadyResponse(ready=await self.dp.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            self.dp.authorize(api_key_from(context))
            return oip.ServerMetadataResponse(**self.dp.server_metadata())

        return await self._unary(Call(PROTOCOL, "server_metadata"), context, work)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            route = await self.dp.admit(call, api_key_from(context), request.name, request.version)
            return oip.ModelReadyResponse(ready=await self.dp.model_ready(route, request.version))

        return await self._unary(Call(PROTOCOL, "model_ready"), context, work)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            route = await self.dp.admit(call, api_key_from(context), request.name, request.version)
            meta = await self.dp.model_metadata(route, request.version, call.name)

            def tensors(items: list[dict[str, Any]]) -> list[Any]:
                return [oip.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t.get("shape", [])) for t in items]

            return oip.ModelMetadataResponse(
                name=meta["name"], versions=meta.get("versions", []), platform=meta.get("platform", ""),
                inputs=tensors(meta.get("inputs", [])), outputs=tensors(meta.get("outputs", [])))

        return await self._unary(Call(PROTOCOL, "model_metadata"), context, work)

    # --- inference -------------------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        key = api_key_from(context)

        async def work(call: Call) -> Any:
            return await self._infer(request, key, call)

        call = Call(PROTOCOL, "infer", request_bytes=request.ByteSize(), client_timeout_s=context.time_remaining(),
                    request_id=request.id[:128])
        return await self._unary(call, context, work)

    async def _infer(self, request: Any, key: str | None, call: Call) -> Any:
        route = await self.dp.admit(call, key, request.model_name, request.model_version)
        infer_request = InferRequest.from_grpc(request)
        response = await self.dp.infer(route, infer_request, call.deadline())
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
        """One request of a stream: answered in-band, its error too, so the stream goes on."""
        async def work(call: Call) -> Any:
            if isinstance(msg, Malformed):
                raise msg.error
            return oip.ModelStreamInferResponse(infer_response=await self._infer(msg, key, call))

        def in_band(error: GatewayError) -> Any:
            reply = oip.ModelStreamInferResponse(error_message=error.message)
            if not isinstance(msg, Malformed):
                reply.infer_response.id = msg.id
                reply.infer_response.model_name = msg.model_name
            return reply

        size = None if isinstance(msg, Malformed) else msg.ByteSize()
        call = Call(PROTOCOL, "stream_infer", request_bytes=size)
        return await self.dp.serve(call, work, in_band, _message_size)

    # --- plumbing ------------------------------------------------------------------------------------
    async def _unary(self, call: Call, context: grpc.aio.ServicerContext,
                     work: Callable[[Call], Awaitable[Any]]) -> Any:
        """`work` through the data plane's observation path; a failure aborts the RPC with its status."""
        reply = await self.dp.serve(call, work, _as_failure, _message_size)
        if isinstance(reply, GatewayError):
            await abort(context, reply)
        return reply


def _as_failure(error: GatewayError) -> GatewayError:
    return error  # the RPC is aborted with it once observed


def _message_size(reply: Any) -> int | None:
    return None if isinstance(reply, GatewayError) else reply.ByteSize()


def create_server(dataplane: DataPlane, max_message_bytes: int) -> grpc.aio.Server:
    size = min(max_message_bytes + (1 << 20), 2**31 - 1)
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((InferenceServicer(dataplane).handler(),))
    return server
