"""WebSocket front-end of the served video streams (for browsers): ``GET /v1/streams/{model}`` (upgrade).

Same session semantics as the gRPC service (serving/streams.py). Before the upgrade the request is
authorised and admitted like any route: ``Authorization: Bearer <key>`` / ``x-api-key`` headers, or the
``api_key`` query parameter (browsers cannot set headers on a WebSocket); refusals are plain HTTP answers
(401, 403, 404, 400 for bad options, 429 for too many sessions, 503 when shutting down). Options are query
parameters: ``threshold``, ``top_k``, ``fps``.

Client -> server, per frame, either
  1. a text message ``{"index": 7, "capture_time_s": 0.2333}`` followed by ONE binary message: the JPEG/PNG
     bytes (no base64 overhead), or
  2. one text message ``{"index": 7, "capture_time_s": 0.2333, "image": "<base64 JPEG/PNG>"}``;
then ``{"end": true}`` once there are no more frames (the server answers what is due and closes with 1000).
Closing the socket instead ends the session at once (answers not yet sent are discarded).

Server -> client: one text message per frame, in frame order (`FrameAnswer.to_json`):
  ``{"index", "capture_time_s", "status": "processed"|"dropped", "computed_from_frame", "horizon_frames",
  "detections": [{"box": [x1, y1, x2, y2], "score", "label_id", "label", "track_id"}], "image_size":
  {"width", "height"}, "latency_s", "error"}``.
A session that ends on an error sends ``{"error": "<message>", "status": <http status>}`` last and closes with
code 4000 + status (4400 bad frame, 4413 frame too large, 4504 idle expiry, 4503 shutdown, ...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
from typing import Any

from aiohttp import WSMsgType, web

from serving.dataplane import CLIENT_GONE
from serving.errors import GatewayError, InvalidInput, PayloadTooLarge, as_gateway_error
from serving.rest import api_key_from, error_response
from serving.streams import Frame, StreamManager, StreamOptions, StreamSession

logger = logging.getLogger(__name__)

PROTOCOL = "rest"  # the REST port; zoo_gateway_requests_total{route="stream"} tells sessions apart
PATH = "/v1/streams/{model}"
CLOSE_REASON_BYTES = 120  # a WebSocket close reason is at most 123 bytes


def _number(query: Any, name: str, cast: type) -> Any:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        out = cast(value)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be a{'n integer' if cast is int else ' number'}, "
                           f"got {value!r}") from None
    return out


def options_from_query(model: str, query: Any) -> StreamOptions:
    return StreamOptions(model=model, threshold=_number(query, "threshold", float),
                         top_k=_number(query, "top_k", int), fps=_number(query, "fps", float))


def _header(doc: Any) -> tuple[int, float]:
    if not isinstance(doc, dict):
        raise InvalidInput("a text message must be a JSON object: {\"index\", \"capture_time_s\"[, \"image\"]} "
                           "or {\"end\": true}")
    index = doc.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise InvalidInput(f"frame 'index' must be an integer, got {index!r}")
    capture = doc.get("capture_time_s", 0.0)
    if isinstance(capture, bool) or not isinstance(capture, (int, float)) or not math.isfinite(capture):
        raise InvalidInput(f"frame {index}: 'capture_time_s' must be a number, got {capture!r}")
    return index, float(capture)


class StreamWebSocket:
    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        key = api_key_from(request.headers) or request.query.get("api_key") or None
        try:
            session = await self.manager.open(model, key, options_from_query(model, request.query), PROTOCOL)
        except GatewayError as exc:
            return error_response(exc)
        if not web.WebSocketResponse().can_prepare(request).ok:  # a plain GET sees the refusal an upgrade would
            session.close(400)
            return error_response(InvalidInput(f"{request.path} is a WebSocket route: connect with an "
                                               "'Upgrade: websocket' request"))
        limit = session.max_frame_bytes
        ws = web.WebSocketResponse(max_msg_size=limit * 4 // 3 + 4096)  # a base64 frame in JSON fits
        status = CLIENT_GONE
        writer: asyncio.Task | None = None
        try:
            await ws.prepare(request)
            writer = asyncio.create_task(self._write(ws, session))
            await self._read(ws, session)
            if not writer.done() and session.finished:  # the server is closing: let the writer finish
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), 10.0)
            if writer.done() and not writer.cancelled():
                status = writer.result()
            # else the client closed first: what is not sent is discarded (writer cancelled below)
        except Exception as exc:  # noqa: BLE001 - whatever happens, the session is freed below
            if not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
                logger.exception("stream session %d failed", session.id)
            raise
        finally:
            if writer is not None and not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            session.close(status)
        return ws

    @staticmethod
    async def _read(ws: web.WebSocketResponse, session: StreamSession) -> None:
        """Frames in, until the client closes, the server closes (session over) or a bad message."""
        header: tuple[int, float] | None = None
        async for msg in ws:
            try:
                if msg.type == WSMsgType.TEXT:
                    if header is not None:
                        raise InvalidInput(f"frame {header[0]}: expected its binary image message, got text")
                    try:
                        doc = json.loads(msg.data)
                    except json.JSONDecodeError as exc:
                        raise InvalidInput(f"text message is not JSON: {exc}") from None
                    if isinstance(doc, dict) and doc.get("end") is True:
                        session.end_input()
                        continue
                    index, capture = _header(doc)
                    if "image" not in doc:
                        header = (index, capture)
                        continue
                    if not isinstance(doc["image"], str):
                        raise InvalidInput(f"frame {index}: 'image' must be a base64 string")
                    try:
                        image = base64.b64decode(doc["image"], validate=True)
                    except (binascii.Error, ValueError):
                        raise InvalidInput(f"frame {index}: 'image' is not valid base64") from None
                    await session.push(Frame(index, capture, image))
                elif msg.type == WSMsgType.BINARY:
                    if header is None:
                        raise InvalidInput("binary message without its JSON header "
                                           "({\"index\", \"capture_time_s\"} as a text message first)")
                    index, capture = header
                    header = None
                    await session.push(Frame(index, capture, msg.data))
                elif msg.type == WSMsgType.ERROR:
                    exc = ws.exception()
                    if "too big" in str(exc).lower():
                        raise PayloadTooLarge(f"a message is over the limit of {ws._max_msg_size} bytes")
                    return
            except GatewayError as exc:
                session.fail(exc)  # the writer sends what is due, then the error, then closes

    @staticmethod
    async def _write(ws: web.WebSocketResponse, session: StreamSession) -> int:
        """Answers out; returns the session's status (200, or the error's)."""
        try:
            async for answer in session.answers():
                await ws.send_str(json.dumps(answer.to_json(), separators=(",", ":")))
                session.sent(answer)
        except GatewayError as exc:
            err = as_gateway_error(exc)
            session.close(err.http_status)  # freed before the client sees the end
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"error": err.message, "status": err.http_status}))
                await ws.close(code=4000 + err.http_status,
                               message=err.message.encode()[:CLOSE_REASON_BYTES])
            return err.http_status
        except (ConnectionError, RuntimeError):  # the socket went away under us
            return CLIENT_GONE
        session.close(200)
        await ws.close()
        return 200
