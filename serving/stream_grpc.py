"""gRPC front-end of the served video streams: `zoo.stream.v1.DetectionStream/Stream` (proto/zoo_stream.proto).

One call is one session (serving/streams.py). The first message carries the `StreamConfig` (model, options)
and may be config-only (no image): the session is opened, authorised (``authorization: Bearer <key>`` or
``x-api-key`` metadata) and admitted before any frame is sent, so refusals (UNAUTHENTICATED,
PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED for too many sessions) arrive at once;
admission is signalled by initial metadata ``zoo-stream-session: <id>``. Clients should wait for it before
sending frames: grpc.aio marks a call INTERNAL ("Internal error from Core") when a write races with the
server ending the call, which would hide the refusal's real status.
Then one `FrameResult` per frame, in frame order. The client half-closing ends the session once every frame
is answered (status OK); an invalid frame, repeated detector failures, idle expiry (DEADLINE_EXCEEDED) or
gateway shutdown (UNAVAILABLE) end it with that status after the answers already due. Errors carry trailing
metadata ``zoo-http-status`` (the HTTP status of the same error). A client that cancels frees its session at
once; its detector call in flight finishes inside the backend and is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from proto import STREAM_SERVICE, stream
from serving.dataplane import CLIENT_GONE
from serving.errors import GatewayError, as_gateway_error
from serving.grpc_server import api_key_from
from serving.streams import PROCESSED, Frame, FrameAnswer, StreamManager, StreamOptions, StreamSession

logger = logging.getLogger(__name__)

PROTOCOL = "grpc"
METHOD = f"/{STREAM_SERVICE}/Stream"
ADMITTED = "zoo-stream-session"  # initial metadata sent once a session is open (value: its id)
STATUS = {PROCESSED: stream.FrameResult.Status.Value("PROCESSED"),
          "dropped": stream.FrameResult.Status.Value("DROPPED")}


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the error's code; trailing metadata ``zoo-http-status`` tells apart the two
    RESOURCE_EXHAUSTED cases (413 frame too large, 429 too many sessions), ``retry-after`` as elsewhere."""
    err = as_gateway_error(exc)
    trailing = [("zoo-http-status", str(err.http_status))]
    if err.retry_after_s is not None:
        trailing.append(("retry-after", str(err.retry_after_s)))
    context.set_trailing_metadata(tuple(trailing))
    await context.abort(err.grpc_code, err.message)


def options_from_proto(config: Any) -> StreamOptions:
    return StreamOptions(
        model=config.model,
        threshold=config.threshold if config.HasField("threshold") else None,
        top_k=config.top_k if config.HasField("top_k") else None,
        fps=config.fps if config.HasField("fps") else None,
    )


def answer_to_proto(answer: FrameAnswer) -> Any:
    result = stream.FrameResult(
        index=answer.index, capture_time_s=answer.capture_time_s, status=STATUS[answer.status],
        computed_from_frame=answer.computed_from_frame, horizon_frames=answer.horizon_frames,
        image_width=answer.image_size[0], image_height=answer.image_size[1], latency_s=answer.latency_s,
        error=answer.error)
    names = answer.names
    for box, score, label, track in zip(answer.boxes_xyxy.tolist(), answer.scores.tolist(),
                                        answer.labels.tolist(), answer.track_ids.tolist(), strict=True):
        result.detections.add(x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=score, label_id=label,
                              label=names.get(label, str(label)), track_id=track)
    return result


class StreamServicer:
    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(STREAM_SERVICE, {
            "Stream": grpc.stream_stream_rpc_method_handler(
                self.Stream, request_deserializer=stream.StreamFrame.FromString,
                response_serializer=_serialize),
        })

    async def Stream(  # noqa: N802
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        try:
            session = await self.manager.open(first.config.model, api_key_from(context),
                                              options_from_proto(first.config), PROTOCOL)
        except GatewayError as exc:
            await abort(context, exc)
            return
        status = CLIENT_GONE
        error: BaseException | None = None
        reader: asyncio.Task | None = None
        try:
            # admitted: tell the client now (initial metadata), so it sends frames only to an open session
            await context.send_initial_metadata(((ADMITTED, str(session.id)),))
            if first.image:
                await session.push(Frame(first.index, first.capture_time_s, first.image))
            reader = asyncio.create_task(self._read(requests, session))
            async for answer in session.answers():
                yield answer_to_proto(answer)
                session.sent(answer)
            status = 200
        except GatewayError as exc:
            status, error = exc.http_status, exc
        except Exception as exc:  # noqa: BLE001 - a bug here must not leak the session
            logger.exception("stream session %d failed", session.id)
            status, error = 500, exc
        finally:
            # freed before the client sees the end (it may open the next one at once), on every path
            session.close(status)
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        if error is not None:
            await abort(context, as_gateway_error(error))

    @staticmethod
    async def _read(requests: AsyncIterator[Any], session: StreamSession) -> None:
        try:
            async for msg in requests:
                await session.push(Frame(msg.index, msg.capture_time_s, msg.image))
            session.end_input()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad frame (or a broken read) ends the session with it
            session.fail(as_gateway_error(exc))
