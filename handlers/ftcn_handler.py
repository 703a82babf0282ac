"""FTCN+TT deepfake video detection: a video in, fake probabilities per face track and per video out.

Input: the video file as the raw body, a multipart field ``video``, JSON ``{"video": "<base64>"}``, or an
input named ``video`` (the gateway's OIP BYTES inputs arrive under their names). Optional parameters (JSON
fields or multipart fields): ``stride`` (window stride, 1 = official dense evaluation, default 16),
``threshold`` (verdict threshold, default 0.5), ``aggregate`` (``max`` over tracks, default, or the official
``mean`` over all clips), ``detect_every`` (run the face detector on every k-th frame, default 1) and
``max_duration_s`` (may only lower the server's limit).

Each request is decoded, its faces detected (MTCNN, weights shipped inside the archive under ``mtcnn/``),
tracked and planned into aligned 32-frame clips in ``decode`` (so a bad video is that request's 4xx); all
clips of all requests of a TorchServe batch then go through FTCN together in chunks of at most
``ZOO_FTCN_CLIP_BATCH`` clips (default 8 on GPU, 2 on CPU). See ``zoo/faces/pipeline.py`` for the
pipeline and how it follows the official ``test_on_raw_video.py``.

Answer: ``{"fake_probability": float | null, "verdict": "fake" | "real" | "no_face", "tracks": [{"track_id",
"frames": [first, last], "time_s", "score", "clips", "boxes_sample", "frame_scores"}], "frames_analyzed",
"clips_analyzed", "video", "analysis", "timings_ms", "batch_size", "model"}``. No face: 200 with verdict
``no_face`` and a null probability. Not a video / nothing decodable: 400 / 422; too long: 413.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from handlers.base import ZooHandler
from handlers.codec import RequestError, as_bytes, number_param, request_fields
from zoo.faces.pipeline import AGGREGATES, FacePipeline, PreparedVideo
from zoo.faces.weights import ARCHIVE_DIR, check_dir
from zoo.video import VideoError, VideoLimits

VIDEO_FIELDS = ("video", "body", "data", "file", "input")
PARAMS = ("stride", "threshold", "aggregate", "detect_every", "max_duration_s")


class FtcnHandler(ZooHandler):
    """Video -> MTCNN faces -> tracks -> aligned clips (batched across requests) -> FTCN -> JSON."""

    def setup(self, model_dir: Path) -> None:
        folder = model_dir / ARCHIVE_DIR
        problems = check_dir(folder)
        if problems:
            raise RuntimeError(
                f"the {self.entry.name} archive lacks valid MTCNN weights in {ARCHIVE_DIR}/ "
                f"({'; '.join(problems)}); rebuild it from an entry declaring "
                "assets=('zoo.faces.weights:mar_assets',)"
            )
        self.pipeline = FacePipeline.from_dir(folder, self.device)
        default_batch = 8 if self.device.type == "cuda" else 2
        self.max_clip_batch = int(os.environ.get("ZOO_FTCN_CLIP_BATCH") or default_batch)
        self.limits = VideoLimits.from_env()

    # --- request parsing ---------------------------------------------------------------------------
    def video_and_params(self, request: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        fields = request_fields(request)  # a JSON body's fields are merged in
        params: dict[str, Any] = {k: fields[k] for k in PARAMS if k in fields}
        name = next((n for n in VIDEO_FIELDS if n in fields), None)
        if name is None:
            binary = [k for k, v in fields.items() if isinstance(v, (bytes, bytearray)) and k not in PARAMS]
            if len(binary) != 1:
                raise RequestError("no video in the request: send the video file as the body, a "
                                   "multipart field 'video', or JSON {\"video\": \"<base64>\"}")
            name = binary[0]
        unknown = sorted(set(fields) - {name, *PARAMS})
        if unknown:
            raise RequestError(f"unknown fields: {unknown}; allowed: video, {', '.join(PARAMS)}")
        value = fields[name]
        if not isinstance(value, (bytes, bytearray, str)):
            raise RequestError(f"'{name}' must be video bytes or a base64 string, got {type(value).__name__}")
        params = {k: (v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v)
                  for k, v in params.items()}
        return as_bytes(value, name), params

    # --- the four steps ----------------------------------------------------------------------------
    def decode(self, request: dict[str, Any], index: int) -> PreparedVideo:
        data, params = self.video_and_params(request)
        cfg = self.pipeline.config
        aggregate = str(params.get("aggregate") or cfg.aggregate).strip().lower()
        if aggregate not in AGGREGATES:
            raise RequestError(f"'aggregate' must be one of {list(AGGREGATES)}, got {aggregate!r}")
        limit = self.limits.max_duration_s
        limits = replace(self.limits, max_duration_s=float(
            number_param(params, "max_duration_s", limit, 0.04, limit)))
        try:
            return self.pipeline.prepare(
                data,
                limits=limits,
                stride=int(number_param(params, "stride", cfg.stride, 1, cfg.clip_len * 4, integer=True)),
                fake_threshold=float(number_param(params, "threshold", cfg.fake_threshold, 0.0, 1.0)),
                detect_every=int(number_param(params, "detect_every", cfg.detect_every, 1, 16, integer=True)),
                aggregate=aggregate,
            )
        except VideoError as exc:
            raise RequestError(exc.message, exc.status) from None

    def batch(self, items: list[PreparedVideo]) -> list[PreparedVideo]:
        return items

    def predict(self, batch: list[PreparedVideo]) -> Any:
        return self.pipeline.score(self.model, batch, self.max_clip_batch)

    def encode(self, output: Any, items: list[PreparedVideo]) -> list[dict[str, Any]]:
        return [
            {**self.pipeline.summarize(item, probs), "batch_size": len(items), "model": self.model_info()}
            for item, probs in zip(items, output, strict=True)
        ]
