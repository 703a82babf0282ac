"""Request decoding shared by every handler: bodies, multipart parts, JSON, base64, images.

Functions only (TorchServe handler modules must define exactly one class). Everything that can be wrong
with a client's input raises ``RequestError`` with an HTTP status and a message naming the problem;
the handler base turns it into a per-request 4xx instead of failing the batch or the worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.device_image import EXIF_ORIENTATION, EncodedImage
from zoo.device_image import decode as device_decode

# 40 megapixels: a 8K photo fits; a 20000x20000 decompression bomb does not.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8

# Pillow's own bomb guard fires inside Image.open() with a message that hides the size; decode_image()
# checks the header's size against MAX_IMAGE_PIXELS itself before decoding any pixel, so it replaces it.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class ImageRequest:
    """One decoded image request plus its validated per-request parameters.

    ``image`` is a PIL image, or a preprocessed tensor on the worker's device where the handler decodes there.
    """

    image: Image.Image | torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)


class RequestError(Exception):
    """A client error in one request of a batch: becomes that request's HTTP status and JSON message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def request_fields(request: dict[str, Any]) -> dict[str, Any]:
    """Normalise one TorchServe request to {field: value}.

    TorchServe gives a raw body as ``body`` or ``data``; multipart parts and gRPC inputs arrive under their
    own names. A JSON object body is merged into the fields, whether TorchServe parsed it (JSON content type)
    or not (JSON sent as bytes); a body that looks like JSON but does not parse is a 400.
    """
    fields = {k: v for k, v in request.items() if v is not None}
    for key in ("body", "data"):
        as_json = parse_json_body(fields.get(key))
        if as_json is not None:
            fields.pop(key)
            fields.update(as_json)
    return fields


def as_bytes(value: Any, what: str, kind: str = "image") -> bytes:
    """Bytes from a raw part, or from a base64 string inside JSON; ``what`` names the field, ``kind`` its content."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                f"'{what}' is a string but not valid base64 (expected a base64-encoded {kind})"
            ) from None
    raise RequestError(f"'{what}' must be {kind} bytes or a base64 string, got {type(value).__name__}")


def parse_json_body(value: Any) -> dict[str, Any] | None:
    """A JSON object if the body is (or looks like) JSON; None if it is binary payload."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray)):
        head = bytes(value[:64]).lstrip()
        if head[:1] in (b"{", b"["):
            try:
                parsed = json.loads(bytes(value).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(f"body looks like JSON but does not parse: {exc}") from None
            if not isinstance(parsed, dict):
                raise RequestError("JSON body must be an object, e.g. {\"image\": \"<base64>\"}")
            return parsed
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, dict):
            return parsed
    return None


def _open_checked(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """The opened (header-only) image, refusing empty, unrecognised, oversized and tiny inputs."""
    if not data:
        raise RequestError(f"image '{what}' is empty: send JPEG or PNG bytes")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size  # header only: checked before any pixel is decoded
    except UnidentifiedImageError:
        raise RequestError(f"'{what}' is not a recognised image (send JPEG or PNG bytes)") from None
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image '{what}' is too large: {exc}", status=413) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's bytes
        raise RequestError(f"image '{what}' cannot be decoded: {exc}") from None
    if width * height > max_pixels:
        raise RequestError(
            f"image '{what}' is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
            f"{max_pixels / 1e6:.0f} MP",
            status=413,
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise RequestError(f"image '{what}' is {width}x{height}; both sides must be at least {MIN_IMAGE_SIDE} px")
    return img


def decode_image(data: bytes, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode JPEG/PNG/... bytes to an RGB image, refusing empty, corrupt and oversized inputs."""
    img = _open_checked(data, what, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image '{what}' is too large: {exc}", status=413) from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data
        raise RequestError(f"image '{what}' is corrupt: {exc}") from None


def probe_image(data: bytes, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> EncodedImage:
    """The header checks of ``decode_image`` without decoding pixels: for decoding later on the device."""
    img = _open_checked(data, what, max_pixels)
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: PIL's decode would ignore it too
        orientation = 1
    return EncodedImage(data, img.width, img.height, img.format or "", img.mode, orientation)


def decode_on_device(image: EncodedImage, device: torch.device, what: str = "image") -> torch.Tensor:
    """``[3, H, W]`` uint8 on ``device`` (nvjpeg where it applies, else PIL); corrupt pixel data is a 400."""
    try:
        return device_decode(image, device)
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image '{what}' is too large: {exc}", status=413) from None
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data
        raise RequestError(f"image '{what}' is corrupt: {exc}") from None


def image_to_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 RGB array."""
    return np.asarray(img, dtype=np.uint8)

