"""Video -> faces -> aligned 32-frame clips -> FTCN scores, in steps a batching handler can interleave.

``prepare`` (per video: decode, detect, track, plan clips) -> ``score`` (clips of *several* videos rendered
and run through the model in chunks of at most ``max_batch`` clips) -> ``summarize`` (per video JSON).
:func:`analyze_video` chains them for one video.

Faithful to the official ``test_on_raw_video.py`` (yinglinzheng/FTCN) except where noted:

* frames: every decoded frame, full resolution (official: the first 768 frames; here up to the video
  limits of :mod:`zoo.video`, downscaled only if the frame memory budget requires it);
* faces: MTCNN boxes and its 5 landmarks (official: RetinaFace boxes, 5 points averaged from a 68-point
  landmark model -- eye centres, nose tip, mouth corners: the same semantics). Detection runs on a copy
  downscaled to ``detect_max_side`` (and optionally every ``detect_every``-th frame, boxes and landmarks
  interpolated in between) for speed; crops are cut from the full-resolution frames;
* tracks: see :mod:`zoo.faces.tracking` (any start/end, one track per face, short gaps bridged);
* crops/alignment: identical (:mod:`zoo.faces.align`);
* windows: official stride 1; default here ``stride=16`` (each frame still in one or two windows; pass 1 for
  the official dense evaluation). Short tracks are mirror-padded as officially;
* scores: a clip's fake probability is ``sigmoid(logit)`` (the official head ends in a sigmoid). A track's
  score is the mean over its clips, a frame's the mean over the clips containing it (counted per occurrence,
  as officially). The video score is the **max over tracks** by default (one forged face makes the video
  fake); ``aggregate="mean"`` gives the official mean over all clips of all tracks (identical for a single
  face). No face -> no score (``None``), never a guess.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoo.faces.align import CROP_SCALE, clip_transform, crop_box, warp_clip
from zoo.faces.mtcnn import DEFAULT_THRESHOLDS, MTCNN
from zoo.faces.tracking import Track, link_tracks, plan_windows
from zoo.faces.weights import ensure_mtcnn_weights
from zoo.ftcn import normalize_clips
from zoo.video import Video, VideoLimits, decode_video

AGGREGATES = ("max", "mean")


@dataclass(frozen=True)
class PipelineConfig:
    clip_len: int = 32  # ftcn_tt clip_size
    crop_size: int = 224  # ftcn_tt imsize
    stride: int = 16  # window stride (official: 1)
    # detection
    min_face_size: float = 40.0  # pixels at detection resolution
    detect_max_side: int | None = 640
    detect_every: int = 1
    detect_batch: int = 16
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    # tracking
    iou_threshold: float = 0.5
    start_score: float = 0.8
    max_gap: int = 2
    min_track_frames: int = 8
    max_tracks: int = 10
    # cropping / scoring
    crop_scale: float = CROP_SCALE
    aggregate: str = "max"
    fake_threshold: float = 0.5
    frame_step: int = 1  # temporal sub-sampling at decode (changes what FTCN sees; 1 = every frame)

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.stride < 1 or self.detect_every < 1 or self.frame_step < 1:
            raise ValueError("stride, detect_every and frame_step must be >= 1")


@dataclass
class ClipPlan:
    track: int  # index into PreparedVideo.tracks
    positions: list[int]  # track-relative frame positions, len == clip_len (mirror-padded if short)
    matrix: np.ndarray  # 2x3 image -> crop


@dataclass
class PreparedVideo:
    video: Video
    config: PipelineConfig
    tracks: list[Track]
    crop_boxes: list[np.ndarray]  # per track: (n, 4) int crop boxes (full-resolution frame coordinates)
    clips: list[ClipPlan]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


class FacePipeline:
    """MTCNN + tracking + alignment around an FTCN-style clip model."""

    def __init__(self, detector: MTCNN, device: str | torch.device = "cpu",
                 config: PipelineConfig | None = None) -> None:
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.config = config or PipelineConfig()

    @classmethod
    def from_dir(cls, mtcnn_dir: str | Path, device: str | torch.device = "cpu",
                 **config: Any) -> FacePipeline:
        return cls(MTCNN.from_dir(mtcnn_dir, device), device, PipelineConfig(**config))

    # --- steps ---------------------------------------------------------------------------------------
    def detect(self, frames: np.ndarray, config: PipelineConfig | None = None
               ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(frame index, boxes, landmarks, scores) for each examined frame, in full-resolution coordinates."""
        cfg = config or self.config
        n, height, width = frames.shape[:3]
        examined = list(range(0, n, cfg.detect_every))
        if examined[-1] != n - 1:
            examined.append(n - 1)
        scale = 1.0
        if cfg.detect_max_side and max(height, width) > cfg.detect_max_side:
            scale = cfg.detect_max_side / max(height, width)
        size = (max(12, int(round(height * scale))), max(12, int(round(width * scale))))
        fx, fy = width / size[1], height / size[0]
        self.detector.min_face_size = float(cfg.min_face_size)
        self.detector.thresholds = tuple(cfg.thresholds)
        out = []
        with torch.inference_mode():
            for start in range(0, len(examined), cfg.detect_batch):
                idx = examined[start:start + cfg.detect_batch]
                batch = torch.from_numpy(frames[idx]).to(self.device).permute(0, 3, 1, 2).float()
                if scale < 1.0:
                    batch = F.interpolate(batch, size=size, mode="area")
                for i, faces in zip(idx, self.detector.detect(batch, batch_size=len(idx)), strict=True):
                    boxes = faces.boxes.astype(np.float64) * np.array([fx, fy, fx, fy])
                    marks = faces.landmarks.astype(np.float64) * np.array([fx, fy])
                    out.append((i, boxes, marks, faces.scores.astype(np.float64)))
        return out

    def track(self, detections: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]], n_frames: int,
              config: PipelineConfig | None = None) -> list[Track]:
        cfg = config or self.config
        tracks = link_tracks(
            detections, iou_threshold=cfg.iou_threshold, start_score=cfg.start_score,
            max_gap=cfg.max_gap * cfg.detect_every, min_length=min(cfg.min_track_frames, n_frames),
        )
        if len(tracks) > cfg.max_tracks:  # keep the longest (then earliest) tracks
            keep = sorted(tracks, key=lambda t: (-len(t), t.start))[: cfg.max_tracks]
            tracks = sorted(keep, key=lambda t: t.track_id)
        for i, t in enumerate(tracks):
            t.track_id = i
        return tracks

    def plan(self, video: Video, tracks: list[Track], config: PipelineConfig | None = None
             ) -> tuple[list[np.ndarray], list[ClipPlan]]:
        cfg = config or self.config
        hw = video.frames.shape[1:3]
        boxes = [np.stack([crop_box(b, hw, cfg.crop_scale) for b in t.boxes]) for t in tracks]
        clips = []
        for k, t in enumerate(tracks):
            for positions in plan_windows(len(t), cfg.clip_len, cfg.stride):
                clips.append(ClipPlan(k, positions, clip_transform(t.landmarks[positions], cfg.crop_size)))
        return boxes, clips

    def prepare(self, data: bytes, limits: VideoLimits | None = None, **overrides: Any) -> PreparedVideo:
        """Decode, detect, track and plan the clips of one video (raises ``zoo.video.VideoError``)."""
        cfg = replace(self.config, **overrides) if overrides else self.config
        t0 = time.perf_counter()
        video = decode_video(data, limits=limits, frame_step=cfg.frame_step)
        timings = {"decode": _ms(t0)}
        t0 = time.perf_counter()
        detections = self.detect(video.frames, cfg)
        timings["detect"] = _ms(t0)
        t0 = time.perf_counter()
        tracks = self.track(detections, len(video), cfg)
        boxes, clips = self.plan(video, tracks, cfg)
        timings["track"] = _ms(t0)
        return PreparedVideo(video, cfg, tracks, boxes, clips, timings)

    def render(self, prepared: PreparedVideo, clip: ClipPlan) -> torch.Tensor:
        """One aligned clip: (clip_len, crop, crop, 3) uint8 on the pipeline's device."""
        track = prepared.tracks[clip.track]
        frames = [prepared.video.frames[track.start + p] for p in clip.positions]
        boxes = prepared.crop_boxes[clip.track][clip.positions]
        return warp_clip(frames, boxes, clip.matrix, prepared.config.crop_size, self.device)

    def iter_batches(self, videos: Sequence[PreparedVideo], max_batch: int
                     ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """All clips of all ``videos`` as (refs [(video, clip)], uint8 (B, T, S, S, 3)), <= max_batch each."""
        refs = [(v, c) for v, prepared in enumerate(videos) for c in range(len(prepared.clips))]
        for start in range(0, len(refs), max_batch):
            chunk = refs[start:start + max_batch]
            yield chunk, torch.stack([self.render(videos[v], videos[v].clips[c]) for v, c in chunk])

    def score(self, model: torch.nn.Module, videos: Sequence[PreparedVideo], max_batch: int = 4,
              pad_batches: bool = False) -> list[np.ndarray]:
        """Fake probability of every planned clip of every video (one array per video). `pad_batches`: a
        short last chunk is padded with blank clips to `max_batch` (their logits dropped), so a compiled model
        (CUDA graphs) only ever sees the one batch shape it was warmed up with."""
        probs = [np.zeros(len(p.clips), dtype=np.float64) for p in videos]
        render_s = model_s = 0.0
        with torch.inference_mode():
            t0 = time.perf_counter()
            for refs, clips in self.iter_batches(videos, max(1, max_batch)):
                if clips.is_cuda:  # honest split of the stage timings
                    torch.cuda.synchronize(clips.device)
                t1 = time.perf_counter()
                render_s += t1 - t0
                count = clips.shape[0]
                if pad_batches and count < max_batch:
                    clips = torch.cat([clips, clips.new_zeros((max_batch - count, *clips.shape[1:]))])
                logits = model(normalize_clips(clips))[:count]
                p = torch.sigmoid(logits.float()).reshape(-1).cpu().numpy()
                for (v, c), value in zip(refs, p, strict=True):
                    probs[v][c] = float(value)
                t0 = time.perf_counter()
                model_s += t0 - t1
        for prepared in videos:  # batch-wide totals
            prepared.timings_ms["align_batch"] = round(render_s * 1000, 1)
            prepared.timings_ms["model_batch"] = round(model_s * 1000, 1)
        return probs

    def summarize(self, prepared: PreparedVideo, clip_probs: np.ndarray, samples: int = 5) -> dict[str, Any]:
        """The JSON answer for one video."""
        cfg, video = prepared.config, prepared.video
        inv_scale = 1.0 / video.scale
        tracks_out = []
        by_track: dict[int, list[int]] = {}
        for c, clip in enumerate(prepared.clips):
            by_track.setdefault(clip.track, []).append(c)
        for k, track in enumerate(prepared.tracks):
            clip_ids = by_track.get(k, [])
            sums = np.zeros(len(track))
            counts = np.zeros(len(track))
            for c in clip_ids:
                np.add.at(sums, prepared.clips[c].positions, clip_probs[c])
                np.add.at(counts, prepared.clips[c].positions, 1)
            frame_scores = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            pick = np.unique(np.linspace(0, len(track) - 1, min(samples, len(track))).round().astype(int))
            tracks_out.append({
                "track_id": track.track_id,
                "frames": [int(video.frame_numbers[track.start]), int(video.frame_numbers[track.end])],
                "time_s": [round(float(video.timestamps[track.start]), 3),
                           round(float(video.timestamps[track.end]), 3)],
                "score": float(np.mean(clip_probs[clip_ids])) if clip_ids else None,
                "clips": len(clip_ids),
                "boxes_sample": [
                    {"frame": int(video.frame_numbers[track.start + i]),
                     "box": [round(float(v) * inv_scale, 1) for v in track.boxes[i]]}
                    for i in pick
                ],
                "frame_scores": [None if np.isnan(s) else round(float(s), 5) for s in frame_scores],
            })
        scored = [t["score"] for t in tracks_out if t["score"] is not None]
        if not scored:
            probability, verdict = None, "no_face"
        else:
            probability = max(scored) if cfg.aggregate == "max" else float(np.mean(clip_probs))
            verdict = "fake" if probability >= cfg.fake_threshold else "real"
        return {
            "fake_probability": probability,
            "verdict": verdict,
            "tracks": tracks_out,
            "frames_analyzed": len(video),
            "clips_analyzed": len(prepared.clips),
            "video": video.info(),
            "analysis": {"stride": cfg.stride, "clip_len": cfg.clip_len, "aggregate": cfg.aggregate,
                         "threshold": cfg.fake_threshold, "detect_every": cfg.detect_every,
                         "frame_step": cfg.frame_step},
            "timings_ms": dict(prepared.timings_ms),
        }


def analyze_video(video_bytes: bytes, model: torch.nn.Module, device: str | torch.device = "cpu",
                  stride: int = 16, pipeline: FacePipeline | None = None, max_batch: int = 4,
                  limits: VideoLimits | None = None, **config: Any) -> dict[str, Any]:
    """Score one video end to end (MTCNN weights from :func:`zoo.faces.weights.ensure_mtcnn_weights`)."""
    if pipeline is None:
        pipeline = FacePipeline.from_dir(ensure_mtcnn_weights(), device)
    prepared = pipeline.prepare(video_bytes, limits=limits, stride=stride, **config)
    (probs,) = pipeline.score(model, [prepared], max_batch)
    return pipeline.summarize(prepared, probs)
