"""Decode uploaded videos (bytes) to RGB frames with PyAV, refusing what is not a video or too long.

Any container/codec FFmpeg reads works (MP4/H.264, WebM/VP8/VP9, AVI/MJPEG, MOV, MKV, ...). Limits are
checked against the container's declared duration before decoding and again against every decoded frame's
timestamp and count, so a lying header cannot push past them:

* not a video (unrecognised bytes, a still image, no video stream) -> :class:`VideoError` 400;
* a video stream but no decodable frame -> 422;
* longer than ``max_duration_s`` or more than ``max_frames`` frames -> 413.

Decoded frames are kept in memory, so a budget (``max_frame_bytes``, default 2 GiB) bounds them: when the
estimated frames would not fit, every frame is downscaled by one factor chosen up front (reported as
``Video.scale``; coordinates are mapped back with it). ``max_side`` downscales further on request, and
``frame_step`` keeps every k-th frame (note this changes the temporal statistics FTCN looks at).
Defaults come from ``ZOO_VIDEO_MAX_SECONDS``, ``ZOO_VIDEO_MAX_FRAMES`` and ``ZOO_VIDEO_MAX_FRAME_BYTES``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_DURATION_S = 60.0
DEFAULT_MAX_FRAMES = 1800
DEFAULT_MAX_FRAME_BYTES = 2 * 1024**3
# demuxers that read single images; such bytes are pictures, not videos
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif_pipe",
                  "pgm_pipe", "ppm_pipe", "pam_pipe", "jpegls_pipe", "j2k_pipe", "svg_pipe", "qoi_pipe")


class VideoError(ValueError):
    """A client error about the uploaded video, with the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_frames: int = DEFAULT_MAX_FRAMES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    @classmethod
    def from_env(cls) -> VideoLimits:
        def num(name: str, default: float) -> float:
            raw = os.environ.get(name)
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {raw!r}")
            return value

        return cls(
            max_duration_s=num("ZOO_VIDEO_MAX_SECONDS", DEFAULT_MAX_DURATION_S),
            max_frames=int(num("ZOO_VIDEO_MAX_FRAMES", DEFAULT_MAX_FRAMES)),
            max_frame_bytes=int(num("ZOO_VIDEO_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES)),
        )


@dataclass
class Video:
    """Decoded frames (T, H, W, 3) uint8 RGB and their timing."""

    frames: np.ndarray
    timestamps: np.ndarray  # (T,) seconds from the first decoded frame
    frame_numbers: np.ndarray  # (T,) index of each kept frame in the decoded stream (frame_step aware)
    fps: float  # frames per second of the *kept* frames
    width: int  # original (coded) size
    height: int
    scale: float  # frames are the original scaled by this factor (1.0: full resolution)
    codec: str
    container: str

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def duration_s(self) -> float:
        if len(self) == 0:
            return 0.0
        return float(self.timestamps[-1] - self.timestamps[0]) + (1.0 / self.fps if self.fps > 0 else 0.0)

    def info(self) -> dict[str, object]:
        return {
            "frames": len(self),
            "fps": round(self.fps, 3),
            "duration_s": round(self.duration_s, 3),
            "width": self.width,
            "height": self.height,
            "analysis_scale": round(self.scale, 4),
            "codec": self.codec,
            "container": self.container,
        }


def _stream_duration(container: object, stream: object) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return None


def decode_video(
    data: bytes,
    limits: VideoLimits | None = None,
    frame_step: int = 1,
    max_side: int | None = None,
) -> Video:
    """Decode every ``frame_step``-th frame of the first video stream of ``data`` (see module docstring)."""
    import av

    limits = limits or VideoLimits.from_env()
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if not data:
        raise VideoError("the video is empty: send an MP4, WebM, AVI, MOV or MKV file")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"not a recognised video container ({type(exc).__name__}: {exc})") from None
    try:
        fmt = container.format.name or ""
        if any(name in _IMAGE_FORMATS for name in fmt.split(",")):
            raise VideoError(f"the upload is a still image ({fmt}), not a video")
        if not container.streams.video:
            raise VideoError(f"the {fmt} file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        declared_fps = float(rate) if rate else 0.0
        duration = _stream_duration(container, stream)
        if duration is not None and duration > limits.max_duration_s + 0.5 / max(declared_fps, 1.0):
            raise VideoError(
                f"the video lasts {duration:.1f} s, above the limit of {limits.max_duration_s:g} s",
                status=413,
            )
        declared_frames = int(stream.frames or 0)
        if declared_frames > limits.max_frames * 1.05 + 1 and frame_step == 1:
            raise VideoError(
                f"the video has {declared_frames} frames, above the limit of {limits.max_frames}", status=413
            )

        # one downscale factor for all frames, so the kept frames fit the memory budget
        estimate = declared_frames or (int(math.ceil(duration * declared_fps)) if duration and declared_fps
                                       else limits.max_frames)
        estimate = max(1, min(estimate, limits.max_frames) // frame_step)
        scale = 1.0
        if width and height:
            per_frame = width * height * 3
            if estimate * per_frame > limits.max_frame_bytes:
                scale = math.sqrt(limits.max_frame_bytes / (estimate * per_frame))
            if max_side and max(width, height) * scale > max_side:
                scale = max_side / max(width, height)

        frames: list[np.ndarray] = []
        times: list[float] = []
        numbers: list[int] = []
        decoded = 0
        first_time: float | None = None
        error: str | None = None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else decoded / (declared_fps or 25.0)
                if first_time is None:
                    first_time = t
                if t - first_time > limits.max_duration_s:
                    raise VideoError(
                        f"the video lasts more than {limits.max_duration_s:g} s (frame {decoded} is at "
                        f"{t - first_time:.1f} s)", status=413
                    )
                if decoded >= limits.max_frames:
                    raise VideoError(f"the video has more than {limits.max_frames} frames", status=413)
                if decoded % frame_step == 0:
                    if scale < 1.0:
                        w = max(2, int(round(frame.width * scale)))
                        h = max(2, int(round(frame.height * scale)))
                        array = frame.reformat(width=w, height=h, format="rgb24",
                                               interpolation="AREA").to_ndarray()
                    else:
                        array = frame.to_ndarray(format="rgb24")
                    if frames and array.shape != frames[0].shape:
                        # a mid-stream resolution change: resize to the first frame's size
                        array = frame.reformat(width=frames[0].shape[1], height=frames[0].shape[0],
                                               format="rgb24", interpolation="AREA").to_ndarray()
                    if (len(frames) + 1) * array.nbytes > limits.max_frame_bytes * 1.25:
                        raise VideoError(
                            "the decoded video does not fit the frame memory budget "
                            f"({limits.max_frame_bytes / 2**30:.1f} GiB); send a shorter or smaller video",
                            status=413,
                        )
                    frames.append(array)
                    times.append(t - first_time)
                    numbers.append(decoded)
                decoded += 1
        except VideoError:
            raise
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"  # keep what decoded before the corruption
        if not frames:
            detail = f" ({error})" if error else ""
            raise VideoError(f"the {fmt} file has a {codec} video stream but no decodable frames{detail}",
                             status=422)
    finally:
        container.close()

    stamps = np.asarray(times, dtype=np.float64)
    if len(stamps) > 1 and stamps[-1] > stamps[0]:
        fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    else:
        fps = declared_fps / frame_step if declared_fps else 0.0
    height_out, width_out = frames[0].shape[:2]
    if not (width and height):
        width, height = width_out, height_out
    return Video(
        frames=np.stack(frames),
        timestamps=stamps,
        frame_numbers=np.asarray(numbers, dtype=np.int64),
        fps=float(fps),
        width=width,
        height=height,
        scale=width_out / width,
        codec=codec,
        container=fmt,
    )


def encode_video(frames: np.ndarray, fps: float = 25.0, codec: str = "libx264", container: str = "mp4",
                 pix_fmt: str | None = None, options: dict[str, str] | None = None) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames to video bytes (tests, benchmarks and examples)."""
    import fractions

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        if options:
            stream.options = options
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
