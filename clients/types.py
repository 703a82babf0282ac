"""Typed results of the zoo client (dataclasses built from the gateway's JSON answers).

Every result keeps the server's full answer in ``raw`` (fields a handler adds later stay reachable) and the
model that produced it in ``model`` (a `ModelInfo`; ``model.random_weights`` is True when the server runs
seeded random weights, whose outputs mean nothing).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from clients.masks import rle_decode

RANDOM_WEIGHTS_KIND = "random-seeded"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered, and with which weights."""

    name: str
    version: str = ""
    weights: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_kind(self) -> str:
        return str(self.weights.get("kind", "unknown"))

    @property
    def random_weights(self) -> bool:
        return self.weights_kind == RANDOM_WEIGHTS_KIND

    @property
    def weights_label(self) -> str:
        """Short human label, e.g. ``RANDOM (seed 0, not trained)`` or ``pretrained: hf://...``."""
        if self.random_weights:
            return f"RANDOM (seed {self.weights.get('seed')}, not trained)"
        source = self.weights.get("source")
        return f"{self.weights_kind}: {source}" if source else self.weights_kind

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> ModelInfo:
        doc = doc or {}
        return cls(str(doc.get("name", "")), str(doc.get("version", "")), dict(doc.get("weights") or {}))


def _box(values: Any) -> Box:
    x0, y0, x1, y1 = (float(v) for v in values)
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Detection:
    """One detected object: COCO label, score in [0, 1], box (x0, y0, x1, y1) in image pixels."""

    label: str
    score: float
    box: Box
    label_id: int = -1

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Detection:
        return cls(str(doc["label"]), float(doc["score"]), _box(doc["box"]), int(doc.get("label_id", -1)))


@dataclass(frozen=True)
class DetectionResult:
    """Detections of one image, best first."""

    detections: list[Detection]
    image_size: tuple[int, int]  # (width, height)
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.detections)

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DetectionResult:
        size = doc.get("image_size") or {}
        return cls([Detection.from_json(d) for d in doc.get("detections", [])],
                   (int(size.get("width", 0)), int(size.get("height", 0))), ModelInfo.from_json(doc.get("model")),
                   doc)


@dataclass(frozen=True)
class QualityResult:
    """Degraded-reference quality of one restoration: higher is better, in [0, 1]."""

    score: float
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> QualityResult:
        return cls(float(doc["score"]), ModelInfo.from_json(doc.get("model")), doc)


def _size(doc: dict[str, Any] | None) -> tuple[int, int]:
    doc = doc or {}
    return int(doc.get("width", 0)), int(doc.get("height", 0))


@dataclass(frozen=True)
class Instance:
    """One segmented object: COCO label, score, box (x0, y0, x1, y1) and its mask as COCO RLE."""

    label: str
    label_id: int
    score: float
    box: Box
    mask_rle: dict[str, Any]  # {"size": [H, W], "counts": str}

    def mask(self) -> np.ndarray:
        """The binary mask, ``[H, W]`` uint8 (1 inside the object), at the image's size."""
        return rle_decode(self.mask_rle)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Instance:
        return cls(str(doc["label"]), int(doc["label_id"]), float(doc["score"]), _box(doc["box"]),
                   dict(doc["mask"]))


@dataclass(frozen=True)
class InstanceSegmentationResult:
    """Instances of one image, best first."""

    instances: list[Instance]
    image_size: tuple[int, int]  # (width, height)
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InstanceSegmentationResult:
        return cls([Instance.from_json(i) for i in doc.get("instances", [])], _size(doc.get("image_size")),
                   ModelInfo.from_json(doc.get("model")), doc)


@dataclass(frozen=True)
class ClassFraction:
    """A class present in a label map: its index (the pixel value), name and share of the pixels."""

    index: int
    label: str
    fraction: float


@dataclass(frozen=True)
class SemanticSegmentationResult:
    """A label map: ``label_map_png`` is a palette PNG whose pixel values are class indices."""

    label_map_png: bytes
    class_fractions: list[ClassFraction]  # the classes present, most pixels first
    dataset: str
    image_size: tuple[int, int]  # (width, height)
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def label_map(self) -> np.ndarray:
        """``[H, W]`` uint8 class index per pixel."""
        with Image.open(io.BytesIO(self.label_map_png)) as img:
            return np.asarray(img)

    def palette(self) -> np.ndarray:
        """``[256, 3]`` uint8: the colour of each class index, as the PNG shows it."""
        with Image.open(io.BytesIO(self.label_map_png)) as img:
            flat = img.getpalette() or []
        return np.asarray((flat + [0] * 768)[:768], dtype=np.uint8).reshape(256, 3)

    def colorized(self) -> Image.Image:
        """The label map in the dataset's colours (RGB)."""
        with Image.open(io.BytesIO(self.label_map_png)) as img:
            return img.convert("RGB")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SemanticSegmentationResult:
        fractions = [ClassFraction(int(c["index"]), str(c["label"]), float(c["fraction"]))
                     for c in doc.get("class_fractions", [])]
        return cls(base64.b64decode(doc["label_map_png"]), fractions, str(doc.get("dataset", "")),
                   _size(doc.get("image_size")), ModelInfo.from_json(doc.get("model")), doc)


@dataclass(frozen=True)
class TranslationResult:
    """A translated image: its encoded bytes (``format`` png or jpeg) and sizes."""

    image_bytes: bytes
    format: str
    image_size: tuple[int, int]  # (width, height) of the translated image
    input_size: tuple[int, int]
    direction: str
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def image(self) -> Image.Image:
        """The translated image, decoded (RGB)."""
        with Image.open(io.BytesIO(self.image_bytes)) as img:
            return img.convert("RGB")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TranslationResult:
        return cls(base64.b64decode(doc["image"]), str(doc.get("format", "")), _size(doc.get("image_size")),
                   _size(doc.get("input_size")), str(doc.get("direction", "")),
                   ModelInfo.from_json(doc.get("model")), doc)


def _array(doc: dict[str, Any]) -> np.ndarray:
    """``{dtype, shape, data: base64 little-endian}`` -> numpy array of that dtype."""
    little = np.dtype(doc["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(doc["data"]), dtype=little).reshape(doc["shape"]).astype(doc["dtype"])


@dataclass(frozen=True)
class DisparityResult:
    """Disparity of the left view in its pixels: left(x, y) shows what right(x - d, y) shows."""

    disparity: np.ndarray  # [H, W] float32 (float16 when asked)
    png16: bytes  # 16-bit PNG of disparity * 256 (KITTI format)
    stats: dict[str, float]
    image_size: tuple[int, int]  # (width, height)
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def disparity_from_png16(self) -> np.ndarray:
        """The 16-bit PNG decoded back to float32 pixels (to 1/256 px)."""
        with Image.open(io.BytesIO(self.png16)) as img:
            return (np.asarray(img, dtype=np.float64) / 256.0).astype(np.float32)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DisparityResult:
        stats = {k: float(v) for k, v in (doc.get("stats") or {}).items()}
        return cls(_array(doc["disparity"]), base64.b64decode(doc["disparity_png16"]), stats,
                   _size(doc.get("image_size")), ModelInfo.from_json(doc.get("model")), doc)


@dataclass(frozen=True)
class BoxSample:
    """A face box of a track at one frame (frame number in the decoded video, box in video pixels)."""

    frame: int
    box: Box


@dataclass(frozen=True)
class Track:
    """One face followed through the video, with its fake probability (None if no clip was scored)."""

    track_id: int
    frames: tuple[int, int]  # first and last frame, inclusive
    time_s: tuple[float, float]
    score: float | None
    clips: int
    boxes_sample: list[BoxSample]
    frame_scores: list[float | None]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Track:
        first, last = doc.get("frames", (0, 0))
        t0, t1 = doc.get("time_s", (0.0, 0.0))
        score = doc.get("score")
        return cls(int(doc["track_id"]), (int(first), int(last)), (float(t0), float(t1)),
                   None if score is None else float(score), int(doc.get("clips", 0)),
                   [BoxSample(int(s["frame"]), _box(s["box"])) for s in doc.get("boxes_sample", [])],
                   [None if s is None else float(s) for s in doc.get("frame_scores", [])])

    def box_at(self, frame: int) -> Box | None:
        """The track's box at `frame`, linearly interpolated between the sampled boxes (None outside)."""
        if not self.boxes_sample or not self.frames[0] <= frame <= self.frames[1]:
            return None
        samples = sorted(self.boxes_sample, key=lambda s: s.frame)
        if frame <= samples[0].frame:
            return samples[0].box
        for a, b in zip(samples, samples[1:], strict=False):
            if a.frame <= frame <= b.frame:
                w = 0.0 if b.frame == a.frame else (frame - a.frame) / (b.frame - a.frame)
                return _box([pa + w * (pb - pa) for pa, pb in zip(a.box, b.box, strict=True)])
        return samples[-1].box


@dataclass(frozen=True)
class DeepfakeResult:
    """Verdict for one video: ``fake`` / ``real`` / ``no_face``, the fake probability and the face tracks."""

    verdict: str
    fake_probability: float | None
    tracks: list[Track]
    frames_analyzed: int
    clips_analyzed: int
    video: dict[str, Any]
    model: ModelInfo
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def is_fake(self) -> bool:
        return self.verdict == "fake"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DeepfakeResult:
        prob = doc.get("fake_probability")
        return cls(str(doc["verdict"]), None if prob is None else float(prob),
                   [Track.from_json(t) for t in doc.get("tracks", [])], int(doc.get("frames_analyzed", 0)),
                   int(doc.get("clips_analyzed", 0)), dict(doc.get("video") or {}),
                   ModelInfo.from_json(doc.get("model")), doc)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    """OIP model metadata plus the zoo's parameters (task, weights label, licence ...)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.parameters.get("task", ""))

    @property
    def weights(self) -> dict[str, Any]:
        return dict(self.parameters.get("weights") or {})

    @property
    def random_weights(self) -> bool:
        if "random_weights" in self.parameters:
            return bool(self.parameters["random_weights"])
        return RANDOM_WEIGHTS_KIND in self.platform

    @property
    def weights_label(self) -> str:
        if not self.weights:
            kind = self.parameters.get("weights_kind")
            return "RANDOM (not trained)" if self.random_weights else str(kind or "unknown")
        return ModelInfo(self.name, "", self.weights).weights_label

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelMetadata:
        def specs(items: Any) -> list[TensorSpec]:
            return [TensorSpec(str(t["name"]), str(t["datatype"]), [int(d) for d in t.get("shape", [])])
                    for t in items or []]

        return cls(str(doc["name"]), [str(v) for v in doc.get("versions") or []], str(doc.get("platform", "")),
                   specs(doc.get("inputs")), specs(doc.get("outputs")), dict(doc.get("parameters") or {}))


@dataclass(frozen=True)
class ModelStatus:
    """One row of `ZooClient.models()`: a served model, its readiness and (when asked) its metadata."""

    name: str
    ready: bool
    metadata: ModelMetadata | None = None
    error: str | None = None  # why the metadata could not be read


@dataclass(frozen=True)
class InferResult:
    """Raw OIP outputs: numpy arrays by name (BYTES outputs are object arrays of ``bytes``)."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def json(self, name: str = "output") -> list[Any]:
        """The BYTES output `name` decoded element-wise as JSON (models that declare no typed outputs answer
        JSON in `output`; zoo models answer typed outputs, read them with `result[name]`)."""
        return [json.loads(bytes(e)) for e in self.outputs[name].reshape(-1)]
