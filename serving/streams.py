"""Served video streams: one session per client stream, latest frame wins, a forecast for every frame.

"Towards Streaming Perception" judges a system by what it reports when each frame is shown. A session
(one gRPC call of `zoo.stream.v1.DetectionStream/Stream` or one WebSocket on ``/v1/streams/{model}``) holds:

- a **one-frame slot** (latest frame wins): a frame that arrives while the detector is busy replaces the frame
  waiting in the slot, which is then *dropped*; when the detector frees up it takes the slot's frame
  (*processed*). Nothing is ever queued for the detector, so a slow detector never falls behind the stream;
- a **Kalman forecaster** (`zoo.streaming.KalmanForecaster`) fed with every detector output;
- optionally the **shrinking-tail scheduler** (`zoo.streaming.ShrinkingTailScheduler`, ``streams.shrinking_tail``):
  when the detector frees up it may drop the waiting frame and take the next one on arrival instead.

Every frame is answered exactly once, in frame order, as soon as its fate is known (taken by the detector,
or dropped): the answer is the forecaster's boxes *at that frame* from the latest detector output, tagged with
the frame that output was computed on (``computed_from_frame``, -1 before the first output) and the horizon
(``index - computed_from_frame``). Fates are decided in frame order (only the newest frame can be in the slot),
so answers are in order without holding any back; a frame waits at most until the next frame arrives or the
detector frees up. When the client ends its input, the frame still in the slot is dropped at once: no later
frame could use its detections.

Detector calls are stateless unary calls through the DataPlane (`predict_raw`, the task route's path: the
frame's bytes as the ``image`` field plus ``threshold`` / ``top_k``), each with a deadline; TorchServe batches
them across streams with its dynamic batching. All stream state lives here, in the gateway. A call that is
abandoned (client gone) finishes inside the backend and its answer is discarded; no client stream is ever
forwarded to TorchServe as a stream.

Bounds: ``max_sessions`` sessions (429 / RESOURCE_EXHAUSTED beyond), one waiting frame and one frame at the
detector per session, at most ``max_tracks`` tracks, at most ``max_unsent_answers`` answers the client has not
read (then the session stops reading frames: backpressure), sessions idle for ``idle_timeout_s`` expire
(504 / DEADLINE_EXCEEDED), and a closed or cancelled client stream frees its session at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from serving.config import ConfigError, ModelRoute
from serving.dataplane import Call, DataPlane
from serving.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    HandlerStatusError,
    InvalidInput,
    PayloadTooLarge,
    as_gateway_error,
)
from serving.metrics import GatewayMetrics
from zoo.streaming.forecast import KalmanForecaster
from zoo.streaming.schedule import ShrinkingTailScheduler

logger = logging.getLogger(__name__)

PROCESSED = "processed"
DROPPED = "dropped"
ROUTE_LABEL = "stream"  # zoo_gateway_requests_total{route="stream"}: one count per session


class TooManyStreams(HandlerStatusError):
    """The gateway holds `max_sessions` stream sessions already: 429 / RESOURCE_EXHAUSTED."""

    def __init__(self, message: str) -> None:
        super().__init__(429, message)


class NotADetector(InvalidInput):
    """The model's answer has no detections: it cannot be streamed."""


# ---------------------------------------------------------------------------------------------------
# Settings and options
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSettings:
    """The gateway YAML's ``streams:`` section."""

    max_sessions: int = 64
    idle_timeout_s: float = 30.0  # no frame for this long: the session expires
    max_tracks: int = 100  # detections kept per output (= forecaster tracks); also top_k's ceiling
    shrinking_tail: bool = False  # let ShrinkingTailScheduler decide whether to wait for the next frame
    default_fps: float = 30.0  # nominal frame rate when the client gives none (scheduling only)
    detector_deadline_s: float | None = None  # per detector call; None: the model route's deadline_s
    max_frame_bytes: int = 16 * 1024 * 1024  # per frame (the route's max_request_bytes applies too)
    max_consecutive_errors: int = 3  # detector failures in a row that end the session
    max_unsent_answers: int = 64  # answers not yet read by the client before reading frames pauses

    @classmethod
    def from_config(cls, doc: dict[str, Any] | None) -> StreamSettings:
        doc = dict(doc or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise ConfigError(f"streams: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, value in doc.items():
            if name == "shrinking_tail":
                if not isinstance(value, bool):
                    raise ConfigError("streams.shrinking_tail must be true or false")
                values[name] = value
                continue
            if name == "detector_deadline_s" and value is None:
                values[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"streams.{name} must be a positive number, got {value!r}")
            integer = name in ("max_sessions", "max_tracks", "max_frame_bytes", "max_consecutive_errors",
                               "max_unsent_answers")
            if integer and int(value) != value:
                raise ConfigError(f"streams.{name} must be an integer, got {value!r}")
            values[name] = int(value) if integer else float(value)
        return cls(**values)


@dataclass(frozen=True)
class StreamOptions:
    """What one client asks for when it opens a stream."""

    model: str
    threshold: float | None = None  # detector score threshold (None: the model's default)
    top_k: int | None = None  # detections per output (None: max_tracks)
    fps: float | None = None  # nominal frame rate (None: settings.default_fps)

    def validate(self, settings: StreamSettings) -> StreamOptions:
        if not self.model:
            raise InvalidInput("a stream needs a model name")
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise InvalidInput(f"threshold must be in [0, 1], got {self.threshold}")
        if self.top_k is not None and not 1 <= self.top_k <= settings.max_tracks:
            raise InvalidInput(f"top_k must be in [1, {settings.max_tracks}], got {self.top_k}")
        if self.fps is not None and not (math.isfinite(self.fps) and 0.0 < self.fps <= 1000.0):
            raise InvalidInput(f"fps must be in (0, 1000], got {self.fps}")
        return self


# ---------------------------------------------------------------------------------------------------
# Frames, detections, answers
# ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Frame:
    index: int
    capture_time_s: float
    image: bytes
    received_at: float = 0.0  # gateway monotonic clock, set by the session


@dataclass(slots=True)
class Detections:
    """One detector output: boxes (x1, y1, x2, y2) in pixels of a (width, height) frame."""

    boxes_xyxy: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64
    image_size: tuple[int, int]
    names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def top(self, k: int) -> Detections:
        """The k best by score (the forecaster's track bound)."""
        if len(self) <= k:
            return self
        keep = np.argsort(-self.scores, kind="stable")[:k]
        return Detections(self.boxes_xyxy[keep], self.scores[keep], self.labels[keep], self.image_size,
                          self.names)


def parse_detections(body: bytes, model: str) -> Detections:
    """A detection handler's JSON answer (DETR: ``{"detections": [{"box": [x1, y1, x2, y2], "score",
    "label_id", "label"}, ...], "image_size": {"width", "height"}, ...}``) as arrays."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    dets = doc.get("detections") if isinstance(doc, dict) else None
    size = doc.get("image_size") if isinstance(doc, dict) else None
    if not isinstance(dets, list) or not isinstance(size, dict):
        raise NotADetector(f"model '{model}' did not answer with detections (expected {{\"detections\": [...], "
                           "\"image_size\": {...}}); streams need a detection model such as detr_resnet50")
    try:
        width, height = int(size["width"]), int(size["height"])
        boxes = np.asarray([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4)
        scores = np.asarray([d["score"] for d in dets], dtype=np.float32).reshape(-1)
        labels = np.asarray([d["label_id"] for d in dets], dtype=np.int64).reshape(-1)
        names = {int(d["label_id"]): str(d.get("label", d["label_id"])) for d in dets}
    except (KeyError, TypeError, ValueError) as exc:
        raise NotADetector(f"model '{model}' answered detections in an unknown layout: {exc!r}") from None
    return Detections(boxes, scores, labels, (width, height), names)


@dataclass(slots=True)
class FrameAnswer:
    """The answer to one frame: detections forecast to it, and where they came from."""

    index: int
    capture_time_s: float
    status: str  # PROCESSED or DROPPED
    computed_from_frame: int  # -1: no detector output yet
    horizon_frames: int
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    names: dict[int, str]
    image_size: tuple[int, int]  # (0, 0) before the first output
    received_at: float
    answered_at: float
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.answered_at - self.received_at

    def detections(self) -> list[dict[str, Any]]:
        return [
            {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5), "label_id": int(label),
             "label": self.names.get(int(label), str(int(label))), "track_id": int(track)}
            for box, score, label, track in zip(self.boxes_xyxy, self.scores, self.labels, self.track_ids,
                                                strict=True)
        ]

    def to_json(self) -> dict[str, Any]:
        """The WebSocket message for this frame (docs/streaming.md)."""
        return {
            "index": self.index,
            "capture_time_s": self.capture_time_s,
            "status": self.status,
            "computed_from_frame": self.computed_from_frame,
            "horizon_frames": self.horizon_frames,
            "detections": self.detections(),
            "image_size": {"width": self.image_size[0], "height": self.image_size[1]},
            "latency_s": round(self.latency_s, 6),
            "error": self.error or None,
        }


Detect = Callable[[bytes, dict[str, bytes]], Awaitable[Detections]]


class BackendDetector:
    """Stateless detector calls through the DataPlane (the task route's path), one deadline each."""

    def __init__(self, dataplane: DataPlane, route: ModelRoute, deadline_s: float | None) -> None:
        self.dp = dataplane
        self.route = route
        self.deadline_s = deadline_s or route.deadline_s

    async def __call__(self, image: bytes, params: dict[str, bytes]) -> Detections:
        raw = await self.dp.predict_raw(self.route, "", {"image": image, **params},
                                        time.monotonic() + self.deadline_s)
        return parse_detections(raw.body, self.route.public_name)


# ---------------------------------------------------------------------------------------------------
# One session
# ---------------------------------------------------------------------------------------------------
_session_ids = itertools.count(1)
_EMPTY_BOXES = np.zeros((0, 4), np.float32)
_EMPTY_F = np.zeros(0, np.float32)
_EMPTY_I = np.zeros(0, np.int64)


class StreamSession:
    """State of one client stream. Front-ends call `push` per frame, `end_input` when the client half-closes,
    iterate `answers()` and call `sent(answer)` after writing each, and `close(status)` when done."""

    def __init__(self, model: str, detect: Detect, settings: StreamSettings, options: StreamOptions,
                 metrics: GatewayMetrics | None = None, protocol: str = "grpc",
                 clock: Callable[[], float] = time.monotonic,
                 on_close: Callable[[StreamSession, int], None] | None = None,
                 max_frame_bytes: int | None = None) -> None:
        self.id = next(_session_ids)
        self.model = model
        self.protocol = protocol
        self.settings = settings
        self.options = options
        self._detect = detect
        self._clock = clock
        self._on_close = on_close
        self.max_frame_bytes = min(settings.max_frame_bytes, max_frame_bytes or settings.max_frame_bytes)
        self.fps = options.fps or settings.default_fps
        self.forecaster = KalmanForecaster()
        self.scheduler = ShrinkingTailScheduler(self.fps) if settings.shrinking_tail else None
        top_k = options.top_k or settings.max_tracks
        self._params = {"top_k": str(top_k).encode()}
        if options.threshold is not None:
            self._params["threshold"] = repr(float(options.threshold)).encode()
        self._pending: Frame | None = None  # the one-frame slot
        self._wake = asyncio.Event()  # slot filled (or session over)
        self._answers: deque[FrameAnswer] = deque()
        self._answer_ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._finished = False  # no more answers will be produced
        self._error: GatewayError | None = None  # why the session ended early (raised by answers())
        self._input_done = False
        self._closed = False
        self._detector: asyncio.Task | None = None
        self._detector_idle = True  # the detector loop waits for a frame (or has not started: no work yet)
        self._claimed: Frame | None = None  # taken by `push` for an idle detector, not yet started
        self._take_next = False  # the scheduler chose to wait: the next frame is taken on arrival
        self._output_frame: int | None = None  # frame the latest detector output was computed on
        self._image_size = (0, 0)
        self._names: dict[int, str] = {}
        self._note = ""  # detector failure to report in the next answer
        self._failures = 0
        self.last_index = -1
        self.last_activity = clock()
        self.received = self.processed = self.dropped = 0
        if metrics is not None:
            self._m_frames = {o: metrics.stream_frames.labels(model, o) for o in ("received", PROCESSED, DROPPED)}
            self._m_horizon = metrics.stream_horizon.labels(model)
            self._m_latency = metrics.stream_frame_latency.labels(model)
        else:
            self._m_frames = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._detector = asyncio.create_task(self._run_detector(), name=f"stream-{self.id}-detector")

    @property
    def finished(self) -> bool:
        return self._finished

    def _finish(self, error: GatewayError | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self._error = error
        if self._pending is not None:  # never answered (the session is over) but counted: dropped
            self._pending = None
            self.dropped += 1
            if self._m_frames is not None:
                self._m_frames[DROPPED].inc()
        if self._detector is not None and self._detector is not asyncio.current_task():
            self._detector.cancel()  # an abandoned backend call finishes (and is discarded) in the backend
        self._wake.set()
        self._answer_ready.set()
        self._space.set()

    def fail(self, error: GatewayError) -> None:
        """End the session with `error` (answers already produced are still delivered first)."""
        self._finish(error)

    def close(self, status: int = 200) -> None:
        """Free the session (idempotent). `status` is what the session counts as in the request metrics."""
        if self._closed:
            return
        self._closed = True
        self._finish(self._error)
        self._answers.clear()
        if self._on_close is not None:
            self._on_close(self, status)

    # --- input ---------------------------------------------------------------------------------------
    async def push(self, frame: Frame) -> None:
        """A frame from the client: it takes the slot, dropping (and answering) the frame waiting there."""
        received_at = self._clock()
        if self._input_done:
            raise InvalidInput("frame received after the end of the stream")
        if self._finished:
            if self._error is not None:
                raise self._error
            return
        if frame.index < 0 or frame.index <= self.last_index:
            raise InvalidInput(f"frame index {frame.index} must be greater than the previous one "
                               f"({self.last_index}) and >= 0")
        if not frame.image:
            raise InvalidInput(f"frame {frame.index} has no image bytes")
        if len(frame.image) > self.max_frame_bytes:
            raise PayloadTooLarge(f"frame {frame.index} has {len(frame.image)} bytes, over the limit of "
                                  f"{self.max_frame_bytes} bytes per frame")
        self.last_index = frame.index
        self.last_activity = received_at
        while len(self._answers) >= self.settings.max_unsent_answers and not self._finished:
            self._space.clear()  # the client does not read its answers: stop reading its frames
            await self._space.wait()
        if self._finished:
            return
        frame.received_at = received_at
        self.received += 1
        if self._m_frames is not None:
            self._m_frames["received"].inc()
        if self._pending is not None:
            self._drop(self._pending)
        self._pending = frame
        if self._detector_idle and self._claimed is None:
            # the detector waits for work: it takes this frame now (even if another arrives before it runs)
            self._claimed = self._claim()
        self._wake.set()

    def end_input(self) -> None:
        """The client sent its last frame: the frame still waiting is dropped (no later frame could use its
        detections) and the session ends once every answer is delivered."""
        self._input_done = True
        if self._pending is not None:
            frame, self._pending = self._pending, None
            self._drop(frame)
        self._finish()

    # --- output --------------------------------------------------------------------------------------
    async def answers(self) -> AsyncIterator[FrameAnswer]:
        """Answers in frame order; ends when the session is over, raising the error it ended with."""
        while True:
            if self._answers:
                answer = self._answers.popleft()
                if len(self._answers) < self.settings.max_unsent_answers:
                    self._space.set()
                yield answer
                continue
            if self._finished:
                if self._error is not None:
                    raise self._error
                return
            self._answer_ready.clear()
            await self._answer_ready.wait()

    def sent(self, answer: FrameAnswer) -> None:
        """The front-end wrote `answer` to the client: record its end-to-end latency."""
        if self._m_frames is not None:
            self._m_latency.observe(self._clock() - answer.received_at)

    # --- fates ---------------------------------------------------------------------------------------
    def _drop(self, frame: Frame) -> None:
        self.dropped += 1
        if self._m_frames is not None:
            self._m_frames[DROPPED].inc()
        self._answer(frame, DROPPED)

    def _take(self, frame: Frame) -> None:
        self.processed += 1
        if self._m_frames is not None:
            self._m_frames[PROCESSED].inc()
        self._answer(frame, PROCESSED)

    def _answer(self, frame: Frame, status: str) -> None:
        if self._output_frame is None:
            boxes, scores, labels, ids = _EMPTY_BOXES, _EMPTY_F, _EMPTY_I, _EMPTY_I
            computed_from, horizon = -1, 0
        else:
            ltwh, scores, labels = self.forecaster.forecast(frame.index, image_size=self._image_size)
            ids = self.forecaster.last_track_ids
            boxes = np.concatenate([ltwh[:, :2], ltwh[:, :2] + ltwh[:, 2:]], axis=1).astype(np.float32)
            computed_from = self._output_frame
            horizon = frame.index - computed_from
            if self._m_frames is not None:
                self._m_horizon.observe(horizon)
        self._answers.append(FrameAnswer(
            frame.index, frame.capture_time_s, status, computed_from, horizon, boxes, scores, labels, ids,
            self._names, self._image_size, frame.received_at, self._clock(), self._note))
        self._note = ""
        self._answer_ready.set()

    # --- the detector loop ---------------------------------------------------------------------------
    def _should_wait(self, frame: Frame) -> bool:
        """Shrinking tail: drop the waiting frame and take the next one on arrival? The stream clock is the
        waiting frame's index plus the fraction of a frame interval since it arrived."""
        assert self.scheduler is not None
        since = min(max(self._clock() - frame.received_at, 0.0) * self.fps, 0.999)
        fidx, _start = self.scheduler.decide((frame.index + since) / self.fps)
        return fidx != frame.index

    def _claim(self) -> Frame | None:
        """The detector is free: take the slot's frame (answered as processed) or, when the shrinking-tail
        scheduler says to wait for the next frame, drop it (the next one is then taken on arrival)."""
        frame = self._pending
        if frame is None:
            return None
        if self.scheduler is not None:
            if self._take_next:
                self._take_next = False
                self.scheduler.last_frame = frame.index
            elif self._should_wait(frame):
                self._pending = None
                self._drop(frame)
                self._take_next = True
                return None
        self._pending = None
        self._take(frame)
        return frame

    async def _run_detector(self) -> None:
        while not self._finished:
            frame, self._claimed = self._claimed, None
            if frame is None:
                frame = self._claim()
            if frame is None:
                self._detector_idle = True
                self._wake.clear()
                await self._wake.wait()
                continue
            self._detector_idle = False
            started = self._clock()
            try:
                detections = await self._detect(frame.image, self._params)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in-band; repeated failures end the stream
                err = as_gateway_error(exc)
                if isinstance(err, NotADetector):
                    self.fail(err)
                    return
                self._failures += 1
                self._note = f"detector failed on frame {frame.index}: {err.message}"
                logger.info("stream %d (%s): %s", self.id, self.model, self._note)
                if self._failures >= self.settings.max_consecutive_errors:
                    err.message = (f"the detector failed on {self._failures} frames in a row; last: "
                                   f"{err.message}")
                    err.args = (err.message,)
                    self.fail(err)
                    return
                continue
            if self.scheduler is not None:
                self.scheduler.observe(self._clock() - started)
            self._failures = 0
            self._absorb(frame.index, detections.top(self.settings.max_tracks))

    def _absorb(self, frame_index: int, detections: Detections) -> None:
        """Feed one detector output to the forecaster (boxes as [l, t, w, h])."""
        xyxy = detections.boxes_xyxy
        ltwh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        self.forecaster.update(frame_index, ltwh, detections.scores, detections.labels)
        self._output_frame = frame_index
        self._image_size = detections.image_size
        if len(detections):  # the tracks are the last non-empty output's detections
            self._names = detections.names


# ---------------------------------------------------------------------------------------------------
# All sessions of one gateway
# ---------------------------------------------------------------------------------------------------
class StreamManager:
    """Opens sessions (auth, routing, limits), expires idle ones, ends them all on shutdown."""

    def __init__(self, dataplane: DataPlane, settings: StreamSettings | None = None,
                 detector_factory: Callable[[ModelRoute], Detect] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dp = dataplane
        self.metrics: GatewayMetrics = dataplane.metrics
        self.settings = settings or StreamSettings()
        self._detector_factory = detector_factory or (
            lambda route: BackendDetector(dataplane, route, self.settings.detector_deadline_s))
        self._clock = clock
        self.sessions: dict[int, StreamSession] = {}
        self._calls: dict[int, Call] = {}  # session id -> its record in the request metrics
        self._sweeper: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="stream-idle-sweeper")

    async def open(self, model: str, api_key: str | None, options: StreamOptions, protocol: str) -> StreamSession:
        """A new session, or a GatewayError: 401/403 (key), 404 (model), 400 (options), 429 (too many),
        503 (shutting down). Admitted by the data plane like any request; a session counts once in the
        request metrics when it closes, a refusal at once."""
        call = Call(protocol, ROUTE_LABEL, timed=False)
        try:
            route = await self.dp.admit(call, api_key, model)
            options.validate(self.settings)
            if self._closing:
                raise BackendUnavailable("the gateway is shutting down")
            if len(self.sessions) >= self.settings.max_sessions:
                raise TooManyStreams(f"the gateway already holds {len(self.sessions)} stream sessions (its "
                                     f"limit, streams.max_sessions); retry later")
        except GatewayError as exc:
            call.status = exc.http_status
            self.dp.observe(call)
            raise
        session = StreamSession(route.public_name, self._detector_factory(route), self.settings, options,
                                self.metrics, protocol, self._clock, self._closed, route.max_request_bytes)
        self.sessions[session.id] = session
        self._calls[session.id] = call
        self.metrics.streams_active.labels(session.model).inc()
        session.start()
        self.start()
        return session

    def _closed(self, session: StreamSession, status: int) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.streams_active.labels(session.model).dec()
            call = self._calls.pop(session.id)
            call.status = status
            self.dp.observe(call)

    async def _sweep(self) -> None:
        idle = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            now = self._clock()
            for session in list(self.sessions.values()):
                if not session.finished and now - session.last_activity > idle:
                    session.fail(DeadlineExceeded(
                        f"stream session expired: no frame for {now - session.last_activity:.1f} s "
                        f"(streams.idle_timeout_s = {idle:g})"))

    async def shutdown(self) -> None:
        """Refuse new sessions and end the open ones (503 / UNAVAILABLE) so the servers can stop."""
        self._closing = True
        for session in list(self.sessions.values()):
            session.fail(BackendUnavailable("the gateway is shutting down", retry_after_s=None))
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
