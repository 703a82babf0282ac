"""MTCNN face detector with 5-point landmarks, in plain torch (no torchvision, no facenet-pytorch import).

Zhang, Zhang, Li, Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", IEEE SPL 2016 (https://arxiv.org/abs/1604.02878). Three cascaded networks:

* **P-net** (fully convolutional, 12x12 receptive field, stride 2) runs over an image pyramid (scales
  ``12/min_face_size * factor**k``, factor 0.709, down to a 12-pixel short side) and proposes boxes whose
  face probability is >= 0.6; NMS 0.5 per scale, then 0.7 over all scales, then box regression and squaring;
* **R-net** (24x24 crops) rescores them (> 0.7), NMS 0.7, regression, squaring;
* **O-net** (48x48 crops) rescores (> 0.7), regresses boxes and predicts the five landmarks (eye centres,
  nose tip, mouth corners), then NMS 0.7 with the intersection-over-minimum criterion.

Inputs are normalised as ``(x - 127.5) / 128``. Box conventions follow the original (1-based MATLAB)
implementation internally -- P-net cells map to ``floor((2*pos + 1) / scale)`` ..
``floor((2*pos + 12) / scale)``, R/O-net regression is relative to ``x2 - x1 + 1`` -- and outputs are
converted to 0-based pixel coordinates.

Two deliberate differences from the facenet-pytorch port whose weights are used: R/O-net crops outside the
image are zero-padded (as in the original MTCNN) instead of clamped-and-stretched, and crops are area-
resampled through an integral image for all boxes at once (exactly ``adaptive_avg_pool2d`` /
``interpolate(mode="area")`` of the padded crop) instead of one resize call per box.

The weights (``pnet.pt``/``rnet.pt``/``onet.pt``, from the facenet-pytorch 2.6.0 wheel, MIT, converted
there from the authors' Caffe models) use exactly this module's parameter names (``conv1``, ``prelu1``, ...,
``conv4_1``, ``dense5_2``, ``dense6_3``) and are loaded strictly. Their dense layers expect the feature map
flattened in (W, H, C) order -- a leftover of the Caffe conversion -- hence the ``permute(0, 3, 2, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.faces.boxes import batched_nms
from zoo.weights import WeightsError, load_strict

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_FACTOR = 0.709
DEFAULT_MIN_FACE_SIZE = 20
# NMS: P-net per scale, P-net over all scales, R-net, O-net ("min" overlap)
NMS_THRESHOLDS = (0.5, 0.7, 0.7, 0.7)


class PNet(nn.Module):
    """Proposal net: (B, 3, H, W) -> box regression (B, 4, h, w) and face probability (B, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box regression (N, 4) and face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box regression (N, 4), landmarks (N, 10: x1..x5, y1..y5), probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


@dataclass
class FaceDetections:
    """Faces found in one image, highest score first; 0-based pixel coordinates of that image."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    landmarks: np.ndarray  # (n, 5, 2) float32: left eye, right eye, nose, mouth left, mouth right

    def __len__(self) -> int:
        return len(self.scores)

    def scaled(self, factor: float) -> FaceDetections:
        return FaceDetections(self.boxes * factor, self.scores, self.landmarks * factor)


def _normalise(x: Tensor) -> Tensor:
    return (x - 127.5) * 0.0078125


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """P-net pyramid: 12/min_face_size times powers of ``factor`` while the short side stays >= 12 px."""
    scale = 12.0 / min_face_size
    min_len = min(height, width) * scale
    scales = []
    while min_len >= 12:
        scales.append(scale)
        scale *= factor
        min_len *= factor
    return scales


def integral_images(images: Tensor) -> Tensor:
    """(B, 3, H, W) 0..255 -> (B, 3, H+1, W+1) exact integer summed-area tables (leading zero row/column).

    int32 while 255 * H * W fits (any frame up to ~8 megapixels), else int64.
    """
    b, c, h, w = images.shape
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    table = torch.zeros(b, c, h + 1, w + 1, dtype=dtype, device=images.device)
    pixels = images.round().to(dtype)
    torch.cumsum(pixels, 2, out=pixels)
    torch.cumsum(pixels, 3, out=table[:, :, 1:, 1:])
    return table


def crop_resize_area(table: Tensor, image_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Area-resample the half-open integer boxes ``[x0, x1) x [y0, y1)`` of the images to ``size x size``.

    Identical to ``interpolate(crop, size, mode="area")`` (adaptive average pooling: output cell j covers
    input ``floor(j*L/size) .. ceil((j+1)*L/size)``) of the crop zero-padded beyond the image, computed for
    all boxes at once from the integral images. Returns (N, 3, size, size) float32 in 0..255.
    """
    n = boxes.shape[0]
    height, width = table.shape[2] - 1, table.shape[3] - 1
    if n == 0:
        return torch.zeros(0, 3, size, size, device=table.device)
    x0, y0, x1, y1 = boxes.long().unbind(1)
    length_x = (x1 - x0).clamp(min=1)
    length_y = (y1 - y0).clamp(min=1)
    j = torch.arange(size, device=table.device)
    xs = x0[:, None] + (j[None] * length_x[:, None]) // size
    xe = x0[:, None] - ((-(j[None] + 1) * length_x[:, None]) // size)
    ys = y0[:, None] + (j[None] * length_y[:, None]) // size
    ye = y0[:, None] - ((-(j[None] + 1) * length_y[:, None]) // size)
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).float()  # (N, size_y, size_x)
    xs, xe = xs.clamp(0, width), xe.clamp(0, width)
    ys, ye = ys.clamp(0, height), ye.clamp(0, height)
    flat = table.reshape(-1)
    stride_c, stride_y = (height + 1) * (width + 1), width + 1
    # linear index of (image, channel 0) for each box: (N, 1, 1, 1); channels add c * stride_c
    base = (image_index.long() * 3 * stride_c)[:, None, None, None] \
        + (torch.arange(3, device=table.device) * stride_c)[None, :, None, None]

    def at(yy: Tensor, xx: Tensor) -> Tensor:  # -> (N, 3, size_y, size_x)
        return flat[base + (yy * stride_y)[:, None, :, None] + xx[:, None, None, :]]

    sums = at(ye, xe) - at(ys, xe) - at(ye, xs) + at(ys, xs)
    return sums.float() / area[:, None]


def _square(boxes: Tensor) -> Tensor:
    """Grow boxes (x1, y1, x2, y2, ...) to squares around the same centre (MTCNN's ``rerec``)."""
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: Tensor, reg: Tensor) -> Tensor:
    """R/O-net box regression, offsets relative to the 1-based inclusive size ``x2 - x1 + 1``."""
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _crop_boxes(boxes: Tensor) -> Tensor:
    """1-based float boxes -> 0-based half-open integer pixel ranges [x1 - 1, x2) (truncated, >= 1 px)."""
    b = boxes[:, :4].trunc()
    x0, y0 = b[:, 0] - 1, b[:, 1] - 1
    x1 = torch.maximum(b[:, 2], x0 + 1)
    y1 = torch.maximum(b[:, 3], y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


class MTCNN(nn.Module):
    """The three-stage detector. ``detect(images)`` -> one :class:`FaceDetections` per image."""

    WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")

    def __init__(
        self,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        nms_thresholds: Sequence[float] = NMS_THRESHOLDS,
    ) -> None:
        super().__init__()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        if not 0 < self.factor < 1:
            raise ValueError(f"pyramid factor must be in (0, 1), got {factor}")
        if self.min_face_size < 12:
            raise ValueError(f"min_face_size must be at least 12 px (P-net's window), got {min_face_size}")

    # --- weights -----------------------------------------------------------------------------------
    def load_weights(self, folder: str | Path) -> MTCNN:
        """Strictly load ``pnet.pt``/``rnet.pt``/``onet.pt`` (plain state dicts) from ``folder``."""
        folder = Path(folder)
        for name, net in zip(self.WEIGHT_FILES, (self.pnet, self.rnet, self.onet), strict=True):
            path = folder / name
            if not path.is_file():
                raise WeightsError(f"MTCNN weights file not found: {path} (run `zoo assets`)")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - re-raised with the file name
                raise WeightsError(f"cannot read MTCNN weights {path}: {exc}") from exc
            load_strict(net, state, f"MTCNN {path.name}")
        return self

    @classmethod
    def from_dir(cls, folder: str | Path, device: str | torch.device = "cpu", **kwargs: object) -> MTCNN:
        return cls(**kwargs).load_weights(folder).to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    # --- detection ---------------------------------------------------------------------------------
    def _as_batch(self, images: Tensor | np.ndarray) -> Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"images must be (B, H, W, 3) or (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        return images.to(self.device, torch.float32)

    @torch.inference_mode()
    def detect(self, images: Tensor | np.ndarray, batch_size: int = 16) -> list[FaceDetections]:
        """Faces in RGB 0..255 images ((B, H, W, 3) or (B, 3, H, W), all the same size), in chunks."""
        out: list[FaceDetections] = []
        for start in range(0, images.shape[0], batch_size):
            out.extend(self._detect_batch(self._as_batch(images[start:start + batch_size])))
        return out

    def _stage1(self, imgs: Tensor) -> tuple[Tensor, Tensor]:
        """P-net over the pyramid: square candidate boxes (N, 5: x1, y1, x2, y2, score) and image ids."""
        height, width = imgs.shape[2:]
        t_pnet = self.thresholds[0]
        boxes_all, ids_all = [], []
        for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
            size = (int(height * scale + 1), int(width * scale + 1))
            reg, prob = self.pnet(_normalise(F.interpolate(imgs, size=size, mode="area")))
            b, yy, xx = torch.nonzero(prob >= t_pnet, as_tuple=True)
            if b.numel() == 0:
                continue
            score = prob[b, yy, xx]
            offsets = reg[b, :, yy, xx]
            x, y = xx.float(), yy.float()
            cand = torch.stack([((2 * x + 1) / scale).floor(), ((2 * y + 1) / scale).floor(),
                                ((2 * x + 12) / scale).floor(), ((2 * y + 12) / scale).floor(), score], dim=1)
            cand = torch.cat([cand, offsets], dim=1)
            keep = batched_nms(cand[:, :4], cand[:, 4], b, self.nms_thresholds[0])
            boxes_all.append(cand[keep])
            ids_all.append(b[keep])
        if not boxes_all:
            return torch.zeros(0, 5, device=imgs.device), torch.zeros(0, dtype=torch.long, device=imgs.device)
        cand, ids = torch.cat(boxes_all), torch.cat(ids_all)
        keep = batched_nms(cand[:, :4], cand[:, 4], ids, self.nms_thresholds[1])
        cand, ids = cand[keep], ids[keep]
        w = cand[:, 2] - cand[:, 0]
        h = cand[:, 3] - cand[:, 1]
        boxes = torch.stack([cand[:, 0] + cand[:, 5] * w, cand[:, 1] + cand[:, 6] * h,
                             cand[:, 2] + cand[:, 7] * w, cand[:, 3] + cand[:, 8] * h, cand[:, 4]], dim=1)
        return _square(boxes), ids

    def _detect_batch(self, imgs: Tensor) -> list[FaceDetections]:
        n_images = imgs.shape[0]
        boxes, ids = self._stage1(imgs)
        table = integral_images(imgs) if boxes.shape[0] else None

        if boxes.shape[0]:  # R-net
            reg, prob = self.rnet(_normalise(crop_resize_area(table, ids, _crop_boxes(boxes), 24)))
            ok = prob > self.thresholds[1]
            boxes = torch.cat([boxes[ok, :4], prob[ok, None]], dim=1)
            ids, reg = ids[ok], reg[ok]
            keep = batched_nms(boxes[:, :4], boxes[:, 4], ids, self.nms_thresholds[2])
            boxes = _square(_regress(boxes[keep], reg[keep]))
            ids = ids[keep]

        points = torch.zeros(0, 5, 2, device=imgs.device)
        if boxes.shape[0]:  # O-net
            reg, marks, prob = self.onet(_normalise(crop_resize_area(table, ids, _crop_boxes(boxes), 48)))
            ok = prob > self.thresholds[2]
            boxes = torch.cat([boxes[ok, :4], prob[ok, None]], dim=1)
            ids, reg, marks = ids[ok], reg[ok], marks[ok]
            w = boxes[:, 2] - boxes[:, 0] + 1
            h = boxes[:, 3] - boxes[:, 1] + 1
            px = boxes[:, 0:1] + w[:, None] * marks[:, :5] - 1
            py = boxes[:, 1:2] + h[:, None] * marks[:, 5:] - 1
            points = torch.stack([px, py], dim=2)
            boxes = _regress(boxes, reg)
            keep = batched_nms(boxes[:, :4], boxes[:, 4], ids, self.nms_thresholds[3], mode="min")
            boxes, ids, points = boxes[keep], ids[keep], points[keep]

        boxes_np = boxes.cpu().numpy().astype(np.float32)
        boxes_np[:, :4] -= 1  # 1-based -> 0-based pixel coordinates
        points_np = points.cpu().numpy().astype(np.float32)
        ids_np = ids.cpu().numpy()
        out = []
        for i in range(n_images):
            sel = np.flatnonzero(ids_np == i)
            sel = sel[np.argsort(-boxes_np[sel, 4], kind="stable")]
            out.append(FaceDetections(boxes_np[sel, :4].copy(), boxes_np[sel, 4].copy(),
                                      points_np[sel].copy()))
        return out
