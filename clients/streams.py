"""Client of the gateway's served video streams (docs/streaming.md, "Served streams").

    async for result in stream_frames("127.0.0.1:8081", frames, model="detr_resnet50", api_key=key):
        print(result.index, result.status, result.computed_from_frame, len(result.detections))

`target` picks the transport:
- ``"host:port"``: gRPC, `zoo.stream.v1.DetectionStream/Stream` (proto/zoo_stream.proto);
- ``"http://host:port"`` / ``"ws://host:port"`` (or https / wss): the WebSocket route ``/v1/streams/{model}``;
- a `ZooClient` / `AsyncZooClient` (anything with ``.url`` and ``.api_key``): the WebSocket route on its URL
  with its key.

`frames`: an iterable or async iterable of ``(index, capture_time_s, image_bytes)`` (JPEG/PNG bytes; indices
strictly increasing). With ``realtime=True`` each frame is sent at its capture time (relative to the first
frame), as a camera would; otherwise as fast as the iterable yields them. Exactly one `FrameResult` comes back
per frame, in order. The returned object is iterated with ``async for`` or, from synchronous code, with a
plain ``for`` (the stream then runs on a private event-loop thread; `frames` must then be a plain iterable).

Errors are the SDK's `clients.errors` classes (401 AuthenticationError, 403 PermissionDeniedError, 404
NotFoundError, 400 InvalidInputError, 413 PayloadTooLargeError, 503 UnavailableError, 504
DeadlineExceededError for idle expiry), plus `TooManyStreamsError` (429: the gateway's session limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from clients.errors import ZooConnectionError, ZooError, error_for_status
from proto import stream as pb

DEFAULT_MODEL = "detr_resnet50"
GRPC_METHOD = "/zoo.stream.v1.DetectionStream/Stream"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FrameInput = tuple[int, float, bytes]


class TooManyStreamsError(ZooError):
    """429: the gateway holds its maximum number of stream sessions; retry later."""

    code = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class Detection:
    """One object, forecast to the answered frame: box (x1, y1, x2, y2) in that frame's pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    label_id: int = -1
    track_id: int = -1


@dataclass(frozen=True)
class FrameResult:
    """The gateway's answer to one frame."""

    index: int
    capture_time_s: float
    status: str  # "processed": given to the detector; "dropped": replaced by a newer frame first
    computed_from_frame: int  # frame the detections were computed on (-1: no detector output yet)
    horizon_frames: int  # index - computed_from_frame
    detections: list[Detection]
    image_size: tuple[int, int]  # (width, height); (0, 0) before the first detector output
    latency_s: float  # gateway: frame received -> answered
    error: str | None = None  # a detector failure reported since the previous answer
    sent_at: float = 0.0  # client monotonic clock: frame sent
    received_at: float = 0.0  # client monotonic clock: answer received
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def processed(self) -> bool:
        return self.status == "processed"

    @property
    def round_trip_s(self) -> float:
        """Client-side latency: frame sent -> its answer received."""
        return self.received_at - self.sent_at


def stream_frames(target: Any, frames: Iterable[FrameInput] | AsyncIterable[FrameInput],
                  model: str = DEFAULT_MODEL, api_key: str | None = None, *, threshold: float | None = None,
                  top_k: int | None = None, fps: float | None = None, realtime: bool = False) -> FrameStream:
    """Stream `frames` to `model` through the gateway; iterate the result for one `FrameResult` per frame."""
    if not isinstance(target, str):  # an SDK client: its REST URL (WebSocket route) and key
        api_key = api_key if api_key is not None else getattr(target, "api_key", None)
        target = target.url
    return FrameStream(target, frames, model, api_key, threshold, top_k, fps, realtime)


class FrameStream:
    """`async for` (or `for`) over the per-frame results of one stream session."""

    def __init__(self, target: str, frames: Any, model: str, api_key: str | None, threshold: float | None,
                 top_k: int | None, fps: float | None, realtime: bool) -> None:
        self.target = target
        self.frames = frames
        self.model = model
        self.api_key = api_key
        self.options = {"threshold": threshold, "top_k": top_k, "fps": fps}
        self.realtime = realtime
        self._agen: AsyncIterator[FrameResult] | None = None

    @property
    def transport(self) -> str:
        return "websocket" if "://" in self.target else "grpc"

    def __aiter__(self) -> AsyncIterator[FrameResult]:
        if self._agen is None:
            self._agen = _grpc_stream(self) if self.transport == "grpc" else _ws_stream(self)
        return self._agen

    async def __anext__(self) -> FrameResult:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        if self._agen is not None:
            await self._agen.aclose()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[FrameResult]:
        """Synchronous iteration: the stream runs on its own event loop in a helper thread."""
        out: queue.Queue[tuple[str, Any]] = queue.Queue()
        started = threading.Event()
        holder: dict[str, Any] = {}

        async def main() -> None:
            holder["loop"], holder["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            try:
                async for result in self.__aiter__():
                    out.put(("result", result))
                out.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                out.put(("error", exc))

        thread = threading.Thread(target=asyncio.run, args=(main(),), name="zoo-stream", daemon=True)
        thread.start()
        started.wait()
        try:
            while True:
                kind, value = out.get()
                if kind == "result":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            if thread.is_alive():
                # the loop may finish between the check and the call: nothing left to cancel then
                with contextlib.suppress(RuntimeError):
                    holder["loop"].call_soon_threadsafe(holder["task"].cancel)
                thread.join(10)


async def _frames(frames: Any) -> AsyncIterator[FrameInput]:
    if hasattr(frames, "__aiter__"):
        async for item in frames:
            yield item
    else:
        for item in frames:
            yield item


async def _paced(stream: FrameStream, sent: dict[int, float]) -> AsyncIterator[FrameInput]:
    """The frames, each at its capture time when `realtime`; records when each was sent."""
    start = first = None
    async for index, capture_time_s, image in _frames(stream.frames):
        if stream.realtime:
            now = time.monotonic()
            if start is None:
                start, first = now, capture_time_s
            delay = start + (capture_time_s - first) - now
            if delay > 0:
                await asyncio.sleep(delay)
        sent[int(index)] = time.monotonic()
        yield int(index), float(capture_time_s), bytes(image)


def _result(doc: dict[str, Any], sent: dict[int, float], raw: Any = None) -> FrameResult:
    index = int(doc["index"])
    size = doc.get("image_size") or {}
    dets = [Detection(str(d.get("label", d.get("label_id", ""))), float(d["score"]),
                      tuple(float(v) for v in d["box"]), int(d.get("label_id", -1)), int(d.get("track_id", -1)))
            for d in doc.get("detections") or []]
    return FrameResult(index, float(doc.get("capture_time_s", 0.0)), str(doc["status"]),
                       int(doc["computed_from_frame"]), int(doc["horizon_frames"]), dets,
                       (int(size.get("width", 0)), int(size.get("height", 0))), float(doc.get("latency_s", 0.0)),
                       doc.get("error") or None, sent.pop(index, 0.0), time.monotonic(),
                       raw if raw is not None else doc)


def _error(status: int, message: str, retry_after: Any = None, url: str | None = None) -> ZooError:
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except (TypeError, ValueError):
        retry_after_s = None
    if status == 429:
        return TooManyStreamsError(message, status=429, retry_after_s=retry_after_s, url=url)
    return error_for_status(status, message, retry_after_s=retry_after_s, url=url)


# --- gRPC ----------------------------------------------------------------------------------------------
_GRPC_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


async def _grpc_stream(stream: FrameStream) -> AsyncIterator[FrameResult]:
    import grpc

    metadata = (("authorization", f"Bearer {stream.api_key}"),) if stream.api_key else ()
    opener = pb.StreamFrame()
    opener.config.model = stream.model
    for name, value in stream.options.items():
        if value is not None:
            setattr(opener.config, name, value)
    sent: dict[int, float] = {}
    async with grpc.aio.insecure_channel(stream.target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]) as channel:
        call = channel.stream_stream(GRPC_METHOD, request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=pb.FrameResult.FromString)(metadata=metadata)

        async def write() -> None:
            # frames only once the session is admitted (initial metadata): grpc.aio turns a write that races
            # with the server ending the call into INTERNAL, which would hide a refusal's real status
            await call.initial_metadata()
            if call.done():
                return
            async for index, capture, image in _paced(stream, sent):
                if call.done():
                    return
                await call.write(pb.StreamFrame(index=index, capture_time_s=capture, image=image))
            await call.done_writing()

        writer: asyncio.Task | None = None
        try:
            await call.write(opener)  # config-only: admission (or refusal) comes before any frame
            writer = asyncio.create_task(write())
            async for reply in call:
                yield _result(_reply_doc(reply), sent, reply)
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                raise writer.exception()  # e.g. the frames iterable failed
        except grpc.aio.AioRpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())
            code = exc.code().name
            status = int(trailing.get("zoo-http-status") or _GRPC_STATUS.get(code, 500))
            raise _error(status, exc.details() or code, trailing.get("retry-after"), stream.target) from None
        finally:
            if writer is not None:
                writer.cancel()
            call.cancel()


def _reply_doc(reply: Any) -> dict[str, Any]:
    return {
        "index": reply.index, "capture_time_s": reply.capture_time_s,
        "status": {1: "processed", 2: "dropped"}.get(reply.status, "unspecified"),
        "computed_from_frame": reply.computed_from_frame, "horizon_frames": reply.horizon_frames,
        "detections": [{"box": [d.x1, d.y1, d.x2, d.y2], "score": d.score, "label_id": d.label_id,
                        "label": d.label, "track_id": d.track_id} for d in reply.detections],
        "image_size": {"width": reply.image_width, "height": reply.image_height},
        "latency_s": reply.latency_s, "error": reply.error or None,
    }


# --- WebSocket -----------------------------------------------------------------------------------------
def ws_url(base: str, model: str, options: dict[str, Any]) -> str:
    base = base.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http):]
    query = urlencode({k: v for k, v in options.items() if v is not None})
    return f"{base}/v1/streams/{quote(model, safe='')}" + (f"?{query}" if query else "")


async def _ws_stream(stream: FrameStream) -> AsyncIterator[FrameResult]:
    import aiohttp

    url = ws_url(stream.target, stream.model, stream.options)
    headers = {"Authorization": f"Bearer {stream.api_key}"} if stream.api_key else {}
    sent: dict[int, float] = {}
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers, max_msg_size=MAX_MESSAGE_BYTES)
        except aiohttp.WSServerHandshakeError as exc:
            raise await _handshake_error(session, url, headers, exc) from None
        except aiohttp.ClientError as exc:
            raise ZooConnectionError(f"cannot open the stream at {url}: {exc}", url=url) from None

        async def write() -> None:
            async for index, capture, image in _paced(stream, sent):
                await ws.send_str(json.dumps({"index": index, "capture_time_s": capture}))
                await ws.send_bytes(image)
            await ws.send_str('{"end": true}')

        writer = asyncio.create_task(write())
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                doc = json.loads(msg.data)
                if "index" not in doc and "error" in doc:
                    raise _error(int(doc.get("status", 500)), str(doc["error"]), url=url)
                yield _result(doc, sent)
            code = ws.close_code or 1000
            if code >= 4000:
                raise _error(code - 4000, f"the gateway closed the stream with code {code}", url=url)
            if code not in (1000, 1001):
                raise ZooConnectionError(f"the stream closed abnormally (code {code})", url=url)
        finally:
            writer.cancel()
            await ws.close()


async def _handshake_error(session: Any, url: str, headers: dict[str, str], exc: Any) -> ZooError:
    """The gateway refuses an upgrade with a JSON error body that aiohttp does not keep: ask again plainly."""
    http_url = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    message = f"WebSocket upgrade refused with HTTP {exc.status}"
    try:
        async with session.get(http_url, headers=headers) as resp:
            if resp.status == exc.status:
                message = (await resp.json(content_type=None)).get("error", message)
    except Exception:  # noqa: BLE001 - best effort: the status alone is the error
        pass
    return _error(exc.status, message, (exc.headers or {}).get("Retry-After"), url)
