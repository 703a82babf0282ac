"""`ZooClient` (blocking) and `AsyncZooClient` (asyncio): the zoo-gateway from Python.

    from clients import ZooClient
    with ZooClient("http://127.0.0.1:8080", api_key=None) as zoo:
        result = zoo.detect("photo.jpg", threshold=0.5)
        for det in result:
            print(det.label, det.score, det.box)

Two paths to the gateway, chosen for what each does best:

- **Task helpers** (`detect`, `score_quality`, `detect_deepfake`, `segment_instances`, `segment`,
  `translate`, `estimate_disparity`, `predict`) post the model's natural input
  as multipart to the task route ``POST /v1/models/{model}:predict`` and read the handler's JSON into
  dataclasses (`clients.types`).
- **Raw OIP** (`infer`, `model_metadata`, `model_ready`, `ready`, ...) uses the OIP v2 REST routes; request
  bodies are built and answers decoded by tritonclient's own HTTP codec (binary tensor extension), so
  every datatype, BYTES included, round-trips as tritonclient would send it.

Both travel through `clients.transport` (urllib for the blocking client, one aiohttp session for the async
one) on the gateway's single REST URL, which gives both paths the same auth header, per-attempt timeout
and retry policy (503 / connection refused only, honouring ``Retry-After``; never a 4xx). Errors are
`clients.errors.ZooError` subclasses carrying the server's message.

Defaults: the URL comes from ``$ZOO_URL`` (else ``http://127.0.0.1:8080``, where ``make serve`` puts the
gateway), the API key from ``$ZOO_API_KEY``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import numpy as np

from clients.errors import ZooError
from clients.inputs import ImageLike, VideoLike, image_bytes, video_bytes
from clients.streams import stream_frames
from clients.transport import (
    Exchange,
    HttpRequest,
    HttpResponse,
    RetryPolicy,
    multipart_body,
    run_async,
    run_sync,
)
from clients.types import (
    DeepfakeResult,
    DetectionResult,
    DisparityResult,
    InferResult,
    InstanceSegmentationResult,
    ModelMetadata,
    ModelStatus,
    QualityResult,
    SemanticSegmentationResult,
    TranslationResult,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 120.0  # per attempt; CPU FTCN on a long video needs a larger one
HEADER_LENGTH = "Inference-Header-Content-Length"

DETECTION_MODEL = "detr_resnet50"
QUALITY_MODEL = "ckdn_r50"
DEEPFAKE_MODEL = "ftcn_tt"
INSTANCE_MODEL = "condinst_r50"
SEMANTIC_MODEL = "dnl_r50_d8"
TRANSLATION_MODEL = "cut"
STEREO_MODEL = "stereo_from_mono"


def default_url() -> str:
    return os.environ.get("ZOO_URL") or DEFAULT_URL


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def _model_path(model: str, version: str | None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return path + (f"/versions/{quote(version, safe='')}" if version else "")


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _infer_input(name: str, value: Any) -> Any:
    """A tritonclient InferInput (binary data) from bytes / str / list of bytes / numpy array."""
    from tritonclient.http import InferInput
    from tritonclient.utils import np_to_triton_dtype

    if isinstance(value, (bytes, bytearray, memoryview)):
        array = np.array([bytes(value)], dtype=object)
    elif isinstance(value, str):
        array = np.array([value.encode("utf-8")], dtype=object)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (bytes, bytearray)) for v in value):
        array = np.empty(len(value), dtype=object)
        array[:] = [bytes(v) for v in value]
    else:
        array = np.asarray(value)
    if array.dtype.kind in "OSU":
        flat = [e.encode("utf-8") if isinstance(e, str) else e for e in array.reshape(-1).tolist()]
        if not all(isinstance(e, (bytes, bytearray)) for e in flat):
            raise TypeError(f"input '{name}': BYTES elements must be bytes or str")
        shape = array.shape
        array = np.empty(len(flat), dtype=object)
        array[:] = [bytes(e) for e in flat]
        array = array.reshape(shape)
        datatype = "BYTES"
    else:
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise TypeError(f"input '{name}': numpy dtype {array.dtype} has no OIP datatype")
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _infer_result(response: HttpResponse) -> InferResult:
    from tritonclient.http import InferenceServerClient

    length = response.headers.get(HEADER_LENGTH.lower())
    result = InferenceServerClient.parse_response_body(response.body, header_length=int(length) if length else None,
                                                       content_encoding=response.headers.get("content-encoding"))
    doc = result.get_response()
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in doc.get("outputs", [])}
    return InferResult(str(doc.get("model_name", "")), str(doc.get("model_version", "")), outputs,
                       str(doc.get("id", "")), dict(doc.get("parameters") or {}))


class _Requests:
    """Builds every exchange (request + how to read its answer) once, for both clients."""

    def __init__(self, api_key: str | None) -> None:
        self.headers = {"User-Agent": "zoo-client/0.1"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> HttpRequest:
        return HttpRequest(method, path, body, {**self.headers, **(headers or {})})

    # task route
    def predict(self, model: str, fields: Mapping[str, bytes | str], version: str | None,
                parse: Any = None) -> Exchange:
        body, ctype = multipart_body({k: v for k, v in fields.items() if v is not None})
        path = f"/v1/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
        return Exchange(self._request("POST", path + ":predict", body, {"Content-Type": ctype}),
                        parse or (lambda r: r.json()))

    def detect(self, image: ImageLike, model: str, threshold: float | None, top_k: int | None,
               version: str | None) -> Exchange:
        fields: dict[str, bytes | str | None] = {
            "image": image_bytes(image),
            "threshold": None if threshold is None else _param(threshold),
            "top_k": None if top_k is None else _param(top_k),
        }
        return self.predict(model, fields, version, lambda r: DetectionResult.from_json(r.json()))

    def score_quality(self, restored: ImageLike, degraded: ImageLike, model: str,
                      version: str | None) -> Exchange:
        fields = {"restored": image_bytes(restored, "restored"), "degraded": image_bytes(degraded, "degraded")}
        return self.predict(model, fields, version, lambda r: QualityResult.from_json(r.json()))

    def detect_deepfake(self, video: VideoLike, model: str, params: Mapping[str, Any],
                        version: str | None) -> Exchange:
        fields: dict[str, bytes | str | None] = {"video": video_bytes(video)}
        fields.update({k: None if v is None else _param(v) for k, v in params.items()})
        return self.predict(model, fields, version, lambda r: DeepfakeResult.from_json(r.json()))

    def segment_instances(self, image: ImageLike, model: str, threshold: float | None,
                          version: str | None) -> Exchange:
        fields = {"image": image_bytes(image), "threshold": None if threshold is None else _param(threshold)}
        return self.predict(model, fields, version, lambda r: InstanceSegmentationResult.from_json(r.json()))

    def segment(self, image: ImageLike, model: str, version: str | None) -> Exchange:
        return self.predict(model, {"image": image_bytes(image)}, version,
                            lambda r: SemanticSegmentationResult.from_json(r.json()))

    def translate(self, image: ImageLike, model: str, params: Mapping[str, Any], version: str | None) -> Exchange:
        fields: dict[str, bytes | str | None] = {"image": image_bytes(image)}
        fields.update({k: None if v is None else _param(v) for k, v in params.items()})
        return self.predict(model, fields, version, lambda r: TranslationResult.from_json(r.json()))

    def estimate_disparity(self, left: ImageLike, right: ImageLike, model: str, dtype: str | None,
                           version: str | None) -> Exchange:
        fields = {"left": image_bytes(left, "left"), "right": image_bytes(right, "right"), "dtype": dtype}
        return self.predict(model, fields, version, lambda r: DisparityResult.from_json(r.json()))

    # OIP
    def infer(self, model: str, inputs: Mapping[str, Any], outputs: Iterable[str] | None,
              parameters: Mapping[str, Any] | None, version: str | None, request_id: str) -> Exchange:
        from tritonclient.http import InferenceServerClient, InferRequestedOutput

        if not inputs:
            raise ValueError("infer needs at least one input")
        tensors = [_infer_input(name, value) for name, value in inputs.items()]
        requested = [InferRequestedOutput(name, binary_data=True) for name in outputs] if outputs else None
        body, json_size = InferenceServerClient.generate_request_body(
            tensors, outputs=requested, request_id=request_id, parameters=dict(parameters or {}) or None)
        headers = {"Content-Type": "application/json"}
        if json_size is not None:
            headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(json_size)}
        return Exchange(self._request("POST", _model_path(model, version) + "/infer", body, headers),
                        _infer_result)

    def model_metadata(self, model: str, version: str | None) -> Exchange:
        return Exchange(self._request("GET", _model_path(model, version)),
                        lambda r: ModelMetadata.from_json(r.json()))

    def model_ready(self, model: str, version: str | None) -> Exchange:
        return Exchange(self._request("GET", _model_path(model, version) + "/ready"),
                        lambda r: r.status == 200 and bool(r.json().get("ready")), ok_statuses=(200, 503),
                        retry=False)

    def ready(self) -> Exchange:
        return Exchange(self._request("GET", "/v2/health/ready"),
                        lambda r: r.status == 200 and bool(r.json().get("ready")), ok_statuses=(200, 503),
                        retry=False)

    def live(self) -> Exchange:
        return Exchange(self._request("GET", "/v2/health/live"), lambda r: bool(r.json().get("live")),
                        retry=False)

    def server_metadata(self) -> Exchange:
        return Exchange(self._request("GET", "/v2"), lambda r: r.json())

    def model_index(self) -> Exchange:
        return Exchange(self._request("POST", "/v2/repository/index", b"", {"Content-Type": "application/json"}),
                        lambda r: [(str(m["name"]), m.get("state") == "READY") for m in r.json()])


def _deepfake_params(stride: int | None, threshold: float | None, aggregate: str | None,
                     detect_every: int | None, max_duration_s: float | None) -> dict[str, Any]:
    return {"stride": stride, "threshold": threshold, "aggregate": aggregate, "detect_every": detect_every,
            "max_duration_s": max_duration_s}


class ZooClient:
    """Blocking client. Thread-safe (each call opens its own connection); use one per process.

    ``retry``: a `RetryPolicy` (default: up to 4 attempts, 0.5 s doubling, at least Retry-After);
    ``timeout_s``: per attempt, overridable per call.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy | None = None) -> None:
        self.url = normalize_url(url or default_url())
        self.api_key = api_key if api_key is not None else os.environ.get("ZOO_API_KEY") or None
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._requests = _Requests(self.api_key)

    def __enter__(self) -> ZooClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (connections are per call); here for symmetry with AsyncZooClient."""

    def _run(self, exchange: Exchange, timeout_s: float | None = None) -> Any:
        return run_sync(exchange, self.url, timeout_s or self.timeout_s, self.retry)

    # --- task helpers ---------------------------------------------------------------------------------
    def detect(self, image: ImageLike, *, model: str = DETECTION_MODEL, threshold: float | None = None,
               top_k: int | None = None, version: str | None = None,
               timeout_s: float | None = None) -> DetectionResult:
        """Objects in one image (path, bytes, binary file, PIL image or uint8 numpy array).
        `threshold` (score cut, server default 0.7) and `top_k` (most detections, default 100)."""
        return self._run(self._requests.detect(image, model, threshold, top_k, version), timeout_s)

    def score_quality(self, restored: ImageLike, degraded: ImageLike, *, model: str = QUALITY_MODEL,
                      version: str | None = None, timeout_s: float | None = None) -> QualityResult:
        """Degraded-reference quality of `restored` (a restoration of `degraded`): higher is better."""
        return self._run(self._requests.score_quality(restored, degraded, model, version), timeout_s)

    def detect_deepfake(self, video: VideoLike, *, model: str = DEEPFAKE_MODEL, stride: int | None = None,
                        threshold: float | None = None, aggregate: str | None = None,
                        detect_every: int | None = None, max_duration_s: float | None = None,
                        version: str | None = None, timeout_s: float | None = None) -> DeepfakeResult:
        """Fake / real / no_face verdict for a video (path, bytes or binary file), with per-face tracks."""
        params = _deepfake_params(stride, threshold, aggregate, detect_every, max_duration_s)
        return self._run(self._requests.detect_deepfake(video, model, params, version), timeout_s)

    def segment_instances(self, image: ImageLike, *, model: str = INSTANCE_MODEL, threshold: float | None = None,
                          version: str | None = None, timeout_s: float | None = None) -> InstanceSegmentationResult:
        """Objects of one image with their masks (COCO RLE; `Instance.mask()` decodes one). `threshold`: the
        lowest score kept (server default 0: every instance the model returns)."""
        return self._run(self._requests.segment_instances(image, model, threshold, version), timeout_s)

    def segment(self, image: ImageLike, *, model: str = SEMANTIC_MODEL, version: str | None = None,
                timeout_s: float | None = None) -> SemanticSegmentationResult:
        """A class per pixel of one image: a palette PNG label map and the share of each class present."""
        return self._run(self._requests.segment(image, model, version), timeout_s)

    def translate(self, image: ImageLike, *, model: str = TRANSLATION_MODEL, format: str | None = None,
                  quality: int | None = None, preprocess: str | None = None, version: str | None = None,
                  timeout_s: float | None = None) -> TranslationResult:
        """One image translated to the model's target domain. `format` png (server default) or jpeg, `quality`
        for JPEG, `preprocess` resize (default: the model's square size) or none (the image's own size)."""
        params = {"format": format, "quality": quality, "preprocess": preprocess}
        return self._run(self._requests.translate(image, model, params, version), timeout_s)

    def estimate_disparity(self, left: ImageLike, right: ImageLike, *, model: str = STEREO_MODEL,
                           dtype: str | None = None, version: str | None = None,
                           timeout_s: float | None = None) -> DisparityResult:
        """Disparity of the left view of a rectified stereo pair (equal sizes); `dtype` float32 (server
        default) or float16."""
        return self._run(self._requests.estimate_disparity(left, right, model, dtype, version), timeout_s)

    def predict(self, model: str, fields: Mapping[str, bytes | str], *, version: str | None = None,
                timeout_s: float | None = None) -> Any:
        """Any model's task route: multipart `fields` (bytes as files, str as values) -> its JSON answer."""
        return self._run(self._requests.predict(model, fields, version), timeout_s)

    def stream(self, frames: Iterable[Any], model: str = DETECTION_MODEL, *, threshold: float | None = None,
               top_k: int | None = None, fps: float | None = None, realtime: bool = False) -> Any:
        """One `FrameResult` per frame, in order, over the gateway's bidirectional stream (its WebSocket route
        on this client's URL; see `clients.streams`). Iterate it with ``for`` (or ``async for``).

        `frames`: images (path, bytes, PIL, numpy; frame i captured at i / `fps`) or ``(index,
        capture_time_s, image)`` tuples. `realtime`: send each frame at its capture time, as a camera would."""
        return _stream(self, frames, model, threshold, top_k, fps, realtime)

    # --- raw OIP --------------------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, Any], *, outputs: Iterable[str] | None = None,
              parameters: Mapping[str, Any] | None = None, version: str | None = None, request_id: str = "",
              timeout_s: float | None = None) -> InferResult:
        """OIP v2 inference. `inputs`: name -> bytes / str (one BYTES element), list of bytes, or a numpy
        array (any OIP datatype). Returns numpy outputs by name (BYTES as object arrays of bytes)."""
        return self._run(self._requests.infer(model, inputs, outputs, parameters, version, request_id),
                         timeout_s)

    def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        return self._run(self._requests.model_metadata(model, version))

    def model_ready(self, model: str, version: str | None = None) -> bool:
        return self._run(self._requests.model_ready(model, version))

    def ready(self) -> bool:
        """The whole server (every backend) is ready."""
        return self._run(self._requests.ready())

    def live(self) -> bool:
        return self._run(self._requests.live())

    def server_metadata(self) -> dict[str, Any]:
        return self._run(self._requests.server_metadata())

    def models(self, metadata: bool = True) -> list[ModelStatus]:
        """Every model this key may use, with readiness and (unless `metadata` is False) its metadata."""
        rows = []
        for name, ready in self._run(self._requests.model_index()):
            meta, error = None, None
            if metadata:
                try:
                    meta = self.model_metadata(name)
                except ZooError as exc:
                    error = exc.message
            rows.append(ModelStatus(name, ready, meta, error))
        return rows


class AsyncZooClient:
    """asyncio client with the same methods as `ZooClient` (awaitable). One aiohttp session, opened on
    first use; close it with ``await client.close()`` or ``async with AsyncZooClient(...) as zoo``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy | None = None) -> None:
        self.url = normalize_url(url or default_url())
        self.api_key = api_key if api_key is not None else os.environ.get("ZOO_API_KEY") or None
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._requests = _Requests(self.api_key)
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncZooClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            import aiohttp  # a session belongs to one event loop: a new loop (another asyncio.run) gets its own

            self._session, self._loop = aiohttp.ClientSession(trust_env=True), loop
        return self._session

    async def _run(self, exchange: Exchange, timeout_s: float | None = None) -> Any:
        return await run_async(exchange, self._get_session(), self.url, timeout_s or self.timeout_s, self.retry)

    # --- task helpers ---------------------------------------------------------------------------------
    async def detect(self, image: ImageLike, *, model: str = DETECTION_MODEL, threshold: float | None = None,
                     top_k: int | None = None, version: str | None = None,
                     timeout_s: float | None = None) -> DetectionResult:
        return await self._run(self._requests.detect(image, model, threshold, top_k, version), timeout_s)

    async def score_quality(self, restored: ImageLike, degraded: ImageLike, *, model: str = QUALITY_MODEL,
                            version: str | None = None, timeout_s: float | None = None) -> QualityResult:
        return await self._run(self._requests.score_quality(restored, degraded, model, version), timeout_s)

    async def detect_deepfake(self, video: VideoLike, *, model: str = DEEPFAKE_MODEL, stride: int | None = None,
                              threshold: float | None = None, aggregate: str | None = None,
                              detect_every: int | None = None, max_duration_s: float | None = None,
                              version: str | None = None, timeout_s: float | None = None) -> DeepfakeResult:
        params = _deepfake_params(stride, threshold, aggregate, detect_every, max_duration_s)
        return await self._run(self._requests.detect_deepfake(video, model, params, version), timeout_s)

    async def segment_instances(self, image: ImageLike, *, model: str = INSTANCE_MODEL,
                                threshold: float | None = None, version: str | None = None,
                                timeout_s: float | None = None) -> InstanceSegmentationResult:
        return await self._run(self._requests.segment_instances(image, model, threshold, version), timeout_s)

    async def segment(self, image: ImageLike, *, model: str = SEMANTIC_MODEL, version: str | None = None,
                      timeout_s: float | None = None) -> SemanticSegmentationResult:
        return await self._run(self._requests.segment(image, model, version), timeout_s)

    async def translate(self, image: ImageLike, *, model: str = TRANSLATION_MODEL, format: str | None = None,
                        quality: int | None = None, preprocess: str | None = None, version: str | None = None,
                        timeout_s: float | None = None) -> TranslationResult:
        params = {"format": format, "quality": quality, "preprocess": preprocess}
        return await self._run(self._requests.translate(image, model, params, version), timeout_s)

    async def estimate_disparity(self, left: ImageLike, right: ImageLike, *, model: str = STEREO_MODEL,
                                 dtype: str | None = None, version: str | None = None,
                                 timeout_s: float | None = None) -> DisparityResult:
        return await self._run(self._requests.estimate_disparity(left, right, model, dtype, version), timeout_s)

    async def predict(self, model: str, fields: Mapping[str, bytes | str], *, version: str | None = None,
                      timeout_s: float | None = None) -> Any:
        return await self._run(self._requests.predict(model, fields, version), timeout_s)

    def stream(self, frames: Iterable[Any] | AsyncIterable[Any], model: str = DETECTION_MODEL, *,
               threshold: float | None = None, top_k: int | None = None, fps: float | None = None,
               realtime: bool = False) -> AsyncIterator[Any]:
        """Like `ZooClient.stream`, iterated with ``async for``; `frames` may be an async iterable."""
        return _stream(self, frames, model, threshold, top_k, fps, realtime)

    # --- raw OIP --------------------------------------------------------------------------------------
    async def infer(self, model: str, inputs: Mapping[str, Any], *, outputs: Iterable[str] | None = None,
                    parameters: Mapping[str, Any] | None = None, version: str | None = None,
                    request_id: str = "", timeout_s: float | None = None) -> InferResult:
        return await self._run(self._requests.infer(model, inputs, outputs, parameters, version, request_id),
                               timeout_s)

    async def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        return await self._run(self._requests.model_metadata(model, version))

    async def model_ready(self, model: str, version: str | None = None) -> bool:
        return await self._run(self._requests.model_ready(model, version))

    async def ready(self) -> bool:
        return await self._run(self._requests.ready())

    async def live(self) -> bool:
        return await self._run(self._requests.live())

    async def server_metadata(self) -> dict[str, Any]:
        return await self._run(self._requests.server_metadata())

    async def models(self, metadata: bool = True) -> list[ModelStatus]:
        index = await self._run(self._requests.model_index())

        async def row(name: str, ready: bool) -> ModelStatus:
            if not metadata:
                return ModelStatus(name, ready)
            try:
                return ModelStatus(name, ready, await self.model_metadata(name))
            except ZooError as exc:
                return ModelStatus(name, ready, None, exc.message)

        return list(await asyncio.gather(*(row(name, ready) for name, ready in index)))


STREAM_FPS = 30.0  # capture rate assumed for bare images when no fps is given


def _as_frame(item: Any, position: int, fps: float | None) -> tuple[int, float, bytes]:
    if isinstance(item, tuple) and len(item) == 3:
        index, capture_time_s, image = item
        return int(index), float(capture_time_s), image_bytes(image, f"frame {index}")
    return position, position / (fps or STREAM_FPS), image_bytes(item, f"frame {position}")


def _frame_tuples(frames: Any, fps: float | None) -> Any:
    """`frames` as the ``(index, capture_time_s, image bytes)`` items `stream_frames` sends, lazily."""
    if hasattr(frames, "__aiter__"):
        async def converted() -> AsyncIterator[tuple[int, float, bytes]]:
            position = 0
            async for item in frames:
                yield _as_frame(item, position, fps)
                position += 1

        return converted()
    return (_as_frame(item, position, fps) for position, item in enumerate(frames))


def _stream(client: ZooClient | AsyncZooClient, frames: Any, model: str, threshold: float | None,
            top_k: int | None, fps: float | None, realtime: bool) -> Any:
    return stream_frames(client, _frame_tuples(frames, fps), model=model, threshold=threshold, top_k=top_k,
                         fps=fps, realtime=realtime)
