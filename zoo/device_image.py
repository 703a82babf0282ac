"""Image decode, resize and normalisation as torch ops on the worker's device, PIL as the fallback decoder.

Why: a TorchServe worker that decodes with PIL and resizes on its CPU caps a GPU at what one core decodes
(~66 JPEGs/s at 1216x800). Here a JPEG is decoded by nvjpeg (``torchvision.io.decode_jpeg(device="cuda")``)
when torchvision is importable and the worker is on CUDA; every other case (PNG, CMYK or EXIF-rotated JPEGs,
no torchvision, CPU) decodes with PIL exactly as ``handlers.codec.decode_image`` does. Resizing
(``F.interpolate`` with ``antialias=True``, which follows PIL's filters) and normalisation then run on the
image's device. The results are compared with the PIL path in ``tests/zoo/test_device_image.py`` (bounds in
``RESIZE_TOLERANCE``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

try:  # torchvision is absent on the CPU CI machines: PIL is what they run
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means "no GPU decoder"
    _tv_decode_jpeg = None
    ImageReadMode = None

EXIF_ORIENTATION = 0x0112
# Measured on the bundled photos against PIL (tests/zoo/test_device_image.py): mean |difference| of the
# resized uint8 pixels, in 1/255 units, and the largest single-pixel difference.
RESIZE_TOLERANCE = {"mean_abs": 0.5, "max_abs": 16}


@dataclass(frozen=True)
class EncodedImage:
    """Image bytes whose header was checked (size, format, orientation); pixels not decoded yet."""

    data: bytes
    width: int
    height: int
    format: str  # PIL's format name: "JPEG", "PNG", ...
    mode: str  # PIL's mode from the header: "RGB", "L", "CMYK", ...
    orientation: int = 1  # EXIF orientation; 1 = as stored

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF rotation PIL's decode applies."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def gpu_decoder_available(device: torch.device) -> bool:
    return device.type == "cuda" and _tv_decode_jpeg is not None and torch.cuda.is_available()


def decodes_on_gpu(image: EncodedImage, device: torch.device) -> bool:
    """Whether ``decode`` uses nvjpeg for this image (baseline/progressive YCbCr or grey JPEG, upright)."""
    return (gpu_decoder_available(device) and image.format == "JPEG" and image.mode in ("RGB", "L")
            and image.orientation == 1)


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image -> ``[3, H, W]`` uint8 RGB tensor (CPU)."""
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_pil(image: EncodedImage) -> Image.Image:
    """PIL decode as the handlers' codec does it: EXIF rotation applied, RGB."""
    img = Image.open(io.BytesIO(image.data))
    return ImageOps.exif_transpose(img).convert("RGB")


def decode(image: EncodedImage, device: torch.device) -> Tensor:
    """``[3, H, W]`` uint8 RGB on ``device``: nvjpeg where ``decodes_on_gpu``, else PIL then a copy over.

    A JPEG nvjpeg refuses (an unusual subsampling or marker) goes to PIL too: only PIL's verdict makes an
    image corrupt.
    """
    if decodes_on_gpu(image, device):
        data = torch.frombuffer(bytearray(image.data), dtype=torch.uint8)
        try:
            return _tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    return pil_to_tensor(decode_pil(image)).to(device, non_blocking=True)


# --- resize and normalise ------------------------------------------------------------------------------
def resize(image_u8: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """``[..., 3, H, W]`` uint8 -> uint8 at ``size`` = (height, width), filters as PIL's.

    ``bilinear``/``bicubic`` are antialiased when shrinking (torch's antialias kernels follow PIL's support
    scaling; bicubic with PIL's a = -0.5); ``nearest`` samples pixel centres (``nearest-exact``, as PIL's
    NEAREST). Rounded back to uint8, as PIL's resize of an 8-bit image is.
    """
    if tuple(image_u8.shape[-2:]) == tuple(size):
        return image_u8
    batched = image_u8 if image_u8.dim() == 4 else image_u8[None]
    if mode == "nearest":
        out = F.interpolate(batched, size=size, mode="nearest-exact")
    else:
        x = batched.float()
        out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image_u8.dim() == 4 else out[0]


def normalize(image_u8: Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``[..., 3, H, W]`` uint8 -> ``(x / 255 - mean) / std`` in ``dtype`` (ToTensor then Normalize)."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=dtype, device=image_u8.device).view(shape)
    std_t = torch.tensor(std, dtype=dtype, device=image_u8.device).view(shape)
    return (image_u8.to(dtype) / 255).sub_(mean_t).div_(std_t)


def pad_batch(images: Sequence[Tensor], shape: tuple[int, int], batch: int | None = None
              ) -> tuple[Tensor, Tensor]:
    """Zero-pad ``[3, h, w]`` images bottom/right into ``[batch, 3, H, W]`` plus the mask (True = padding).

    ``batch`` larger than ``len(images)`` adds blank rows (a batch bucket; unmasked, so no attention row is
    all padding), whose outputs callers drop.
    """
    n = batch or len(images)
    first = images[0]
    pixels = torch.zeros((n, first.shape[0], *shape), dtype=first.dtype, device=first.device)
    mask = torch.zeros((n, *shape), dtype=torch.bool, device=first.device)
    mask[: len(images)] = True
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        if h > shape[0] or w > shape[1]:
            raise ValueError(f"image {h}x{w} does not fit the {shape[0]}x{shape[1]} bucket")
        pixels[i, :, :h, :w] = img
        mask[i, :h, :w] = False
    return pixels, mask
