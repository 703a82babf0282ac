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

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import RequestError, as_bytes
from handlers.fields import UPLOAD_ALIASES, CheckedFields, Field
from zoo.faces.pipeline import AGGREGATES, FacePipeline, PreparedVideo
from zoo.faces.weights import ARCHIVE_DIR, check_dir
from zoo.tensors import TensorData
from zoo.video import VideoError, VideoLimits

WARMUP_FRAME = (480, 640)  # (height, width) of the blank frames MTCNN sees in the warm-up


class FtcnHandler(ZooHandler):
    """Video -> MTCNN faces -> tracks -> aligned clips (batched across requests) -> FTCN -> JSON."""

    BATCH_SIZE_IN_ANSWER = True

    def setup(self, model_dir: Path) -> None:
        folder = model_dir / ARCHIVE_DIR
        problems = check_dir(folder)
        if problems:
            raise RuntimeError(
                f"the {self.entry.name} archive lacks valid MTCNN weights in {ARCHIVE_DIR}/ "
                f"({'; '.join(problems)}); rebuild it from an entry declaring "
                "assets=('zoo.faces.weights:mar_assets',)"
            )
        # the clips the pipeline cuts are the ones this archive's model takes (config_overrides may shrink them)
        self.pipeline = FacePipeline.from_dir(folder, self.device, clip_len=int(self.config["clip_len"]),
                                              crop_size=int(self.config["image_size"]))
        default_batch = 8 if self.device.type == "cuda" else 2
        self.max_clip_batch = int(os.environ.get("ZOO_FTCN_CLIP_BATCH") or default_batch)
        self.limits = VideoLimits.from_env()

    # --- request fields: limits come from the face pipeline's config and the server's video limits ----------
    def fields(self) -> tuple[Field, ...]:
        cfg, limit = self.pipeline.config, self.limits.max_duration_s
        return (
            Field("video", "bytes", required=True, aliases=UPLOAD_ALIASES, any_name=True),
            Field("stride", "integer", default=cfg.stride, bounds=(1, cfg.clip_len * 4)),
            Field("threshold", "number", default=cfg.fake_threshold, bounds=(0.0, 1.0)),
            Field("aggregate", "choice", default=cfg.aggregate, choices=tuple(AGGREGATES)),
            Field("detect_every", "integer", default=cfg.detect_every, bounds=(1, 16)),
            Field("max_duration_s", "number", default=limit, bounds=(0.04, limit)),  # may only lower the limit
        )

    def video_and_params(self, request: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """The video's bytes and the parameters as sent (text or JSON values, not yet checked)."""
        picked = self.request_spec.pick(request)
        params = {name: value for name, value in picked.raw.items() if name != "video"}
        return as_bytes(picked.raw["video"], picked.arrived_as["video"], "video"), params

    # --- the four steps ----------------------------------------------------------------------------
    def decode_fields(self, fields: CheckedFields) -> PreparedVideo:
        try:
            return self.pipeline.prepare(
                fields["video"],
                limits=replace(self.limits, max_duration_s=fields["max_duration_s"]),
                stride=fields["stride"],
                fake_threshold=fields["threshold"],
                detect_every=fields["detect_every"],
                aggregate=fields["aggregate"],
            )
        except VideoError as exc:
            raise RequestError(exc.message, exc.status) from None

    def batch(self, items: list[PreparedVideo]) -> list[PreparedVideo]:
        return items

    def predict(self, batch: list[PreparedVideo]) -> Any:
        # compiled: every chunk padded to the warmed-up clip batch (one graph); eager: no wasted compute
        return self.pipeline.score(self.model, batch, self.max_clip_batch, pad_batches=self.runtime.compile)

    def encode(self, output: Any, items: list[PreparedVideo]) -> list[dict[str, Any]]:
        return [self.pipeline.summarize(item, probs) for item, probs in zip(items, output, strict=True)]

    def warmup(self) -> None:
        """A full clip batch through FTCN and a few blank frames through MTCNN (its P/R/O-nets' first calls on the
        device), so the first video is not the one paying for kernel selection and allocation."""
        cfg = self.pipeline.config
        clips = torch.zeros((self.max_clip_batch, 3, cfg.clip_len, cfg.crop_size, cfg.crop_size), device=self.device)
        self.model(clips)
        self.pipeline.detect(np.zeros((2, WARMUP_FRAME[0], WARMUP_FRAME[1], 3), dtype=np.uint8))

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        tracks = answer["tracks"]

        def probability(value: float | None) -> float:
            return float("nan") if value is None else value

        return {
            "fake_probability": np.asarray([probability(answer["fake_probability"])], dtype=np.float32),
            "verdict": [answer["verdict"].encode()],
            "track_ids": np.asarray([t["track_id"] for t in tracks], dtype=np.int32),
            "track_scores": np.asarray([probability(t["score"]) for t in tracks], dtype=np.float32),
            "track_frames": np.asarray([t["frames"] for t in tracks], dtype=np.int32).reshape(-1, 2),
            "track_clips": np.asarray([t["clips"] for t in tracks], dtype=np.int32),
            "frames_analyzed": np.asarray([answer["frames_analyzed"]], dtype=np.int32),
            "clips_analyzed": np.asarray([answer["clips_analyzed"]], dtype=np.int32),
        }
