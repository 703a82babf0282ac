"""`zoo samples DIR`: write small sample inputs for the flagship models (no download: scikit-image's
bundled public-domain / CC0 photos).

- ``astronaut.jpg`` (Eileen Collins, NASA, public domain, 512x512) and ``cat.jpg`` (scikit-image's
  "chelsea", CC0, cropped to 300x300): photos for detection (square: DETR resizes the short side to 800 px,
  so square photos are its cheapest);
- ``degraded.png`` / ``restored.png``: a degraded-reference quality pair made from scikit-image's
  "coffee": the degraded input is the photo at 1/4 resolution, JPEG-compressed at quality 15 and scaled
  back up; the "restoration" is that image sharpened with an unsharp mask (a stand-in for a restoration
  model's output, not a real one);
- ``face.mp4``: 32 frames (1.28 s at 25 fps, 320x256, H.264) of a slow zoom and pan over the astronaut's
  face: one FTCN clip, so a deepfake verdict takes one model pass. It is a moving real photo, not a
  forgery.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, ImageFilter

FACE_VIDEO_SIZE = (320, 256)
FACE_VIDEO_FRAMES = 32
FACE_VIDEO_FPS = 25.0

SAMPLES = {
    "astronaut.jpg": "photo for detection (NASA, public domain)",
    "cat.jpg": "photo for detection (scikit-image 'chelsea', CC0)",
    "degraded.png": "quality pair: the degraded input (1/4 scale, JPEG q15, upscaled)",
    "restored.png": "quality pair: its 'restoration' (unsharp mask; a stand-in, not a real model)",
    "face.mp4": "32-frame video of a real face under a slow zoom/pan (one FTCN clip)",
}


def _skimage_data() -> ModuleType:
    try:
        from skimage import data
    except ImportError:
        raise RuntimeError("zoo samples needs scikit-image (its bundled photos): "
                           "pip install 'zoo-gateway[samples]' (or scikit-image)") from None
    return data


def face_video_frames(photo: np.ndarray, n: int = FACE_VIDEO_FRAMES,
                      size: tuple[int, int] = FACE_VIDEO_SIZE) -> np.ndarray:
    """(n, H, W, 3) uint8 frames looking at the astronaut's face: zoom 1 -> 1.12, a small pan."""
    img = Image.fromarray(photo)
    width, height = size
    frames = []
    for t in range(n):
        zoom = 1.0 + 0.004 * t
        cx, cy = 226.0 - 0.5 * t, 146.0 + 0.25 * t  # the face sits near (226, 146) in the 512x512 photo
        # output (u, v) samples the photo at (cx + (u - W/2) / zoom, cy + (v - H/2) / zoom)
        coeffs = (1 / zoom, 0.0, cx - width / 2 / zoom, 0.0, 1 / zoom, cy - height / 2 / zoom)
        frames.append(np.asarray(img.transform(size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)))
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 in MP4 (yuv420p, crf 18): plays everywhere."""
    import fractions

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def degrade(photo: Image.Image) -> Image.Image:
    small = photo.resize((photo.width // 4, photo.height // 4), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=15)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(photo.size, Image.Resampling.BICUBIC)


def write_samples(directory: str | Path) -> dict[str, Path]:
    """Write every sample into `directory` (created if needed); returns {file name: path}."""
    data = _skimage_data()
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in SAMPLES}
    Image.fromarray(data.astronaut()).save(paths["astronaut.jpg"], quality=92)
    cat = Image.fromarray(data.chelsea())  # 451x300; square crop on the face: DETR's cheapest shape
    cat.crop((75, 0, 375, 300)).save(paths["cat.jpg"], quality=92)
    degraded = degrade(Image.fromarray(data.coffee()))
    degraded.save(paths["degraded.png"])
    degraded.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=2)).save(paths["restored.png"])
    paths["face.mp4"].write_bytes(encode_mp4(face_video_frames(data.astronaut()), FACE_VIDEO_FPS))
    return paths


def run(args: argparse.Namespace) -> int:
    paths = write_samples(args.directory)
    for name, path in paths.items():
        print(f"{str(path):<40} {SAMPLES[name]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("samples", help="write sample images and a face video to try the models on",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="where to write the samples (created if missing)")
    p.set_defaults(func=run)
