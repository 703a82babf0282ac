"""Turning what users hold (a path, bytes, a PIL image, a numpy array, a file object) into request bytes.

Images already encoded (a file, bytes) are sent as they are, so the server decodes exactly the user's
file; PIL images and numpy arrays are encoded losslessly as PNG. Arrays must be uint8, HxW or HxWx3/4
(RGB/RGBA): anything else is refused here rather than guessed (a float array could be 0-1 or 0-255).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Any  # Any: PIL.Image / ndarray
VideoLike = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


def read_file_like(value: Any, what: str) -> bytes | None:
    """Bytes of a path / bytes / binary file object; None if `value` is none of those."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{what}: no such file: {path}")
        data = path.read_bytes()
    elif hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{what}: the file object must be opened in binary mode")
        data = bytes(data)
    else:
        return None
    if not data:
        raise ValueError(f"{what} is empty")
    return data


def image_bytes(image: ImageLike, what: str = "image") -> bytes:
    """Encoded image bytes for a path, bytes, binary file, PIL image or uint8 numpy array."""
    data = read_file_like(image, what)
    if data is not None:
        return data
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # noqa: N806
    if Image is not None and isinstance(image, Image.Image):
        return _png(image)
    if hasattr(image, "__array_interface__") or type(image).__module__ == "numpy":
        import numpy as np
        from PIL import Image

        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise TypeError(f"{what}: numpy images must be uint8 (0-255), got {array.dtype}; "
                            "convert with (x * 255).round().astype(np.uint8) if yours is 0-1 float")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise ValueError(f"{what}: numpy images must be HxW, HxWx3 (RGB) or HxWx4 (RGBA), got shape "
                             f"{array.shape}")
        return _png(Image.fromarray(array))
    raise TypeError(f"{what}: expected a path, bytes, a binary file, a PIL image or a numpy array, "
                    f"got {type(image).__name__}")


def video_bytes(video: VideoLike, what: str = "video") -> bytes:
    """Encoded video bytes (mp4, webm, avi ...) for a path, bytes or binary file."""
    data = read_file_like(video, what)
    if data is None:
        raise TypeError(f"{what}: expected a path, bytes or a binary file, got {type(video).__name__}")
    return data


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
