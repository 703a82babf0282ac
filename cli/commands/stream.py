"""`zoo stream MODEL VIDEO`: play a video through the gateway as a live stream, write it annotated."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_URL = "127.0.0.1:8081"  # `zoo serve`'s gateway gRPC port
DESCRIPTION = """\
Plays VIDEO as a live stream through the gateway's served streams (docs/streaming.md, "Served streams"):
frame i is decoded (PyAV), JPEG-encoded and sent at i/FPS seconds, as a camera would. The gateway answers
every frame with detections forecast to that frame from the latest detector output (frames that arrive while
the detector is busy are dropped, not queued). With --out, each frame is written with its answer drawn on it
(boxes, label, score, track id; a header line with the frame's status and the frame the detections were
computed on). Prints a summary: frames, processed, dropped, mean forecast horizon, mean latency.

--url host:port streams over gRPC (zoo.stream.v1.DetectionStream), http://host:port over the WebSocket
route. A camera is read from its V4L2 device path (e.g. /dev/video0); the word 'camera' alone is refused:
headless hosts have no camera, so the device must be named.
"""
COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
          (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def open_source(source: str, fps: float) -> Any:
    """A PyAV input container for a video file or a V4L2 device path."""
    import av

    if source in ("camera", "webcam"):
        raise ValueError("reading a camera needs its device path, e.g. `zoo stream MODEL /dev/video0` (PyAV's "
                         "v4l2 input); headless hosts have no camera: pass a video file instead")
    if source.startswith("/dev/"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"no such camera device: {source}")
        return av.open(source, format="v4l2", options={"framerate": f"{fps:g}"})
    if not os.path.exists(source):
        raise FileNotFoundError(f"no such video: {source}")
    try:
        return av.open(source)
    except (av.error.FFmpegError, ValueError) as exc:
        raise ValueError(f"cannot open {source} as a video: {exc}") from None


def annotate(image: Any, result: Any) -> Any:
    """The frame with its answer drawn on it (a copy)."""
    from PIL import ImageDraw

    image = image.copy()
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 200))
    for det in result.detections:
        color = COLORS[det.track_id % len(COLORS)] if det.track_id >= 0 else COLORS[0]
        draw.rectangle(det.box, outline=color, width=width)
        draw.text((det.box[0] + 2, det.box[1] + 1), f"{det.label} {det.score:.2f} #{det.track_id}", fill=color)
    source = "no detector output yet" if result.computed_from_frame < 0 else (
        f"from frame {result.computed_from_frame} (+{result.horizon_frames})")
    draw.text((3, 2), f"frame {result.index} {result.status}, {source}", fill=(255, 255, 255))
    return image


class VideoWriter:
    """Annotated frames -> H.264 (libx264, else MPEG-4 Part 2) in the container of the file's suffix."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self._out: Any = None
        self._stream: Any = None

    def write(self, image: Any) -> None:
        import fractions

        import av

        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = av.open(str(self.path), mode="w")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self._stream = self._out.add_stream(codec, rate=fractions.Fraction(self.fps).limit_denominator(1000))
            # yuv420p needs even sides: pad odd ones by a pixel
            self._stream.width = image.width + image.width % 2
            self._stream.height = image.height + image.height % 2
            self._stream.pix_fmt = "yuv420p"
        if image.size != (self._stream.width, self._stream.height):
            from PIL import Image

            canvas = Image.new("RGB", (self._stream.width, self._stream.height))
            canvas.paste(image, (0, 0))
            image = canvas
        frame = av.VideoFrame.from_image(image.convert("RGB"))
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> None:
        if self._out is not None:
            for packet in self._stream.encode():
                self._out.mux(packet)
            self._out.close()
            self._out = None


async def stream_video(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from clients.streams import stream_frames

    container = open_source(args.source, args.fps)
    video = container.streams.video[0]
    total = int(video.frames or 0) or None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    decoded = container.decode(video)
    kept: dict[int, Any] = {}  # frames waiting for their answer (for --out)

    def next_frame(index: int) -> tuple[int, float, bytes] | None:
        if args.max_frames and index >= args.max_frames:
            return None
        frame = next(decoded, None)
        if frame is None:
            return None
        image = frame.to_image()
        if args.out:
            kept[index] = image
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=args.jpeg_quality)
        return index, index / args.fps, buf.getvalue()

    async def frames() -> Any:
        index = 0
        while (item := await asyncio.to_thread(next_frame, index)) is not None:
            yield item
            index += 1

    writer = VideoWriter(args.out, args.fps) if args.out else None
    stats: dict[str, Any] = {"frames": 0, "processed": 0, "dropped": 0, "detector_outputs_used": 0}
    horizons: list[int] = []
    latencies: list[float] = []
    round_trips: list[float] = []
    outputs: set[int] = set()
    started = time.monotonic()
    bar = tqdm(total=total, unit="frame", desc=f"stream {args.model}", disable=args.quiet or None,
               file=sys.stderr)
    try:
        async for result in stream_frames(args.url, frames(), args.model, args.api_key, threshold=args.threshold,
                                          top_k=args.top_k, fps=args.fps, realtime=True):
            stats["frames"] += 1
            stats[result.status] = stats.get(result.status, 0) + 1
            if result.computed_from_frame >= 0:
                horizons.append(result.horizon_frames)
                outputs.add(result.computed_from_frame)
            latencies.append(result.latency_s)
            round_trips.append(result.round_trip_s)
            if result.error:
                bar.write(f"frame {result.index}: {result.error}")
            if writer is not None:
                writer.write(annotate(kept.pop(result.index), result))
            bar.update(1)
    finally:
        bar.close()
        container.close()
        if writer is not None:
            writer.close()

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    stats.update({
        "detector_outputs_used": len(outputs),
        "mean_horizon_frames": mean(horizons),
        "frames_without_output": stats["frames"] - len(horizons),
        "mean_latency_s": mean(latencies),
        "mean_round_trip_s": mean(round_trips),
        "wall_s": round(time.monotonic() - started, 3),
        "fps": args.fps,
        "out": str(args.out) if args.out else None,
    })
    return stats


def run(args: argparse.Namespace) -> int:
    from clients.errors import ZooError

    if not args.fps > 0 or not math.isfinite(args.fps):
        raise ValueError("--fps must be a positive number")
    args.url = args.url or os.environ.get("ZOO_STREAM_URL") or DEFAULT_URL
    args.api_key = args.api_key or os.environ.get("ZOO_API_KEY") or None
    try:
        stats = asyncio.run(stream_video(args))
    except ZooError as exc:
        print(f"zoo stream: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    horizon = stats["mean_horizon_frames"]
    latency = stats["mean_latency_s"]
    print(f"{stats['frames']} frames in {stats['wall_s']:.1f} s at {args.fps:g} fps: {stats['processed']} processed, "
          f"{stats['dropped']} dropped; {stats['detector_outputs_used']} detector outputs used")
    print(f"mean forecast horizon: {'n/a' if horizon is None else f'{horizon:.2f} frames'} "
          f"({stats['frames_without_output']} frames answered before the first output); "
          f"mean latency: {'n/a' if latency is None else f'{latency * 1000:.1f} ms'} in the gateway, "
          f"{(stats['mean_round_trip_s'] or 0) * 1000:.1f} ms round trip")
    if stats["out"]:
        print(f"annotated video: {stats['out']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stream", help="play a video through the gateway as a live stream (forecast "
                                             "detections per frame)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="detection model, e.g. detr_resnet50")
    p.add_argument("source", help="video file, or a V4L2 camera device path such as /dev/video0")
    p.add_argument("--url", default=None,
                   help=f"gateway: host:port for gRPC, http://host:port for the WebSocket route "
                        f"(default $ZOO_STREAM_URL, else {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="API key (default: $ZOO_API_KEY)")
    p.add_argument("--fps", type=float, default=30.0, help="play rate: frame i is sent at i/FPS s (default 30)")
    p.add_argument("--out", type=Path, default=None, help="write the annotated video here (e.g. annotated.mp4)")
    p.add_argument("--threshold", type=float, default=None, help="detector score threshold (model default)")
    p.add_argument("--top-k", type=int, default=None, help="at most this many detections per frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames sent (default 90)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
