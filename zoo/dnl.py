"""DNLNet R50-D8 (Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668): semantic segmentation with a disentangled non-local block.

The authors' code (``yinmh17/DNL-Semantic-Segmentation``) publishes no weights; the served weights are
OpenMMLab mmsegmentation's ``configs/dnlnet`` checkpoints, so this module follows mmsegmentation **1.2.2**
(Apache-2.0), ``EncoderDecoder`` + ``ResNetV1c`` + ``DNLHead``, with its module names. Facts that decide the
numbers (tests/data/golden/zoo3/README_dnl.md):

* backbone ``ResNetV1c``-50, output stride 8: deep stem (three 3x3 convs 3->32->32->64, the first with
  stride 2) -> ``MaxPool2d(3, 2, 1)``; Bottlenecks (3, 4, 6, 3) with the stride on the 3x3 conv, strides
  (1, 2, 1, 1), dilations (1, 1, 2, 4) with padding = dilation and ``contract_dilation``: the first block of
  layer3/layer4 uses dilation 1/2. Every stage's first block has a 1x1 conv + BN downsample;
* ``DNLHead`` (an FCN head on c4): ``convs.0`` (3x3 2048->512, BN, ReLU) -> DNL block -> ``convs.1`` (3x3)
  -> ``conv_cat`` (3x3 on ``cat[c4, out]``) -> ``conv_seg`` (1x1 with bias; the dropout is off at inference);
* the DNL block: 1x1 ``g``/``theta``/``phi`` (512->256, with bias), theta and phi *whitened* (their mean
  over positions subtracted per channel), ``P = softmax(theta @ phi / 16 / 0.05)`` over keys, plus a unary
  term ``softmax_positions(conv_mask(x)) @ g`` broadcast over positions, and
  ``out = x + BN(conv_out(P @ g + unary))``. mmseg divides by the float32 tensors 16 and float32(0.05)
  one after the other; so does this module (float32(0.05) as a Python float keeps float64 parity);
* logits at 1/8 resolution are resized bilinearly with ``align_corners=False`` (mmseg's ``resize``) to the
  network input size, then to the original image size, and argmaxed;
* input: RGB, ``(x - mean) / std`` with the ImageNet mean/std x255 rounded to float32 (the buffers of
  mmseg's ``SegDataPreProcessor``), no padding at test time, whole-image inference (``test_cfg.mode='whole'``).

The test pipeline resizes with mmcv's ``Resize(scale, keep_ratio=True)`` (Cityscapes (2048, 1024), ADE20K
(2048, 512)): cv2 bilinear on uint8. cv2 is not used here; ``resize_u8`` reproduces its geometry (half-pixel
centres, no antialiasing) in float and rounds, which can differ from cv2's fixed-point arithmetic by one grey
level. A real 1024x2048 Cityscapes frame is not resized at all.

Memory: the pairwise map is n x n for n = h*w/64 positions (a 1024x2048 frame: 32768 positions, 4.3 GB in
float32), so the block computes it in chunks of query rows (``query_chunk``), which changes nothing but the
peak memory: every row's softmax is over all keys.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import TrainingOnly, filter_checkpoint
from zoo.tensors import TensorSpec

MEAN = (123.675, 116.28, 103.53)  # RGB, SegDataPreProcessor (stored as float32 buffers there)
STD = (58.395, 57.12, 57.375)
TEMPERATURE = float(np.float32(0.05))  # mmseg 1.2.2 divides by torch.tensor(0.05), a float32 0-dim tensor
QUERY_CHUNK = 4096  # query rows of the pairwise map per step: 4096 x 32768 x 4 B = 512 MB for a Cityscapes frame

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# ADE20K (SceneParsing, 150 classes; mmseg's reduce_zero_label: output 0 is the dataset's class 1, "wall")
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255),
    (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0),
    (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255),
    (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0),
    (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
DATASETS: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]] = {
    "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "ade20k": (ADE20K_CLASSES, ADE20K_PALETTE),
}


# --- blocks -----------------------------------------------------------------------------------------------
class ConvModule(nn.Module):
    """mmcv ``ConvModule``: conv -> optional BN -> optional ReLU (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0, bias: bool = False,
                 norm: bool = True, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if norm else None
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.act else x


class Bottleneck(nn.Module):
    """mmseg ResNet Bottleneck, style 'pytorch': the stride and the dilation sit on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetV1c(nn.Module):
    """mmseg ``ResNetV1c`` (deep stem, no avg-down) with dilated stages; returns c1..c4."""

    def __init__(self, depth_blocks: tuple[int, ...] = (3, 4, 6, 3), strides: tuple[int, ...] = (1, 2, 1, 1),
                 dilations: tuple[int, ...] = (1, 1, 2, 4), stem_channels: int = 64,
                 contract_dilation: bool = True) -> None:
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, stem_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem_channels
        for i, (blocks, stride, dilation) in enumerate(zip(depth_blocks, strides, dilations, strict=True)):
            planes = 64 * 2 ** i
            # contract_dilation: the first block of a dilated stage uses half the dilation (ResLayer)
            first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
            layer = [Bottleneck(cin, planes, stride, first)]
            cin = planes * Bottleneck.expansion
            layer += [Bottleneck(cin, planes, 1, dilation) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))

    def stem_out(self, x: Tensor) -> Tensor:
        """The max-pooled stem output (input of layer1)."""
        return self.maxpool(self.stem(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem_out(x)
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


class DisentangledNonLocal2d(nn.Module):
    """mmseg ``DisentangledNonLocal2d`` (embedded gaussian, ``use_scale``, no sub-sampling): whitened
    pairwise term plus a unary term, both weighting ``g``, added before ``conv_out`` (one BN shift)."""

    def __init__(self, channels: int = 512, reduction: int = 2, temperature: float = TEMPERATURE,
                 query_chunk: int | None = QUERY_CHUNK) -> None:
        super().__init__()
        inter = channels // reduction
        self.inter_channels = inter
        self.temperature = temperature
        self.query_chunk = query_chunk
        self.g = ConvModule(channels, inter, 1, bias=True, norm=False, act=False)
        self.theta = ConvModule(channels, inter, 1, bias=True, norm=False, act=False)
        self.phi = ConvModule(channels, inter, 1, bias=True, norm=False, act=False)
        self.conv_out = ConvModule(inter, channels, 1, bias=False, norm=True, act=False)
        self.conv_mask = nn.Conv2d(channels, 1, 1)

    def _embeddings(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``g`` and ``theta`` as (B, n, C'), ``phi`` as (B, C', n); theta/phi whitened (mean over positions)."""
        n = x.shape[0]
        g = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi = self.phi(x).view(n, self.inter_channels, -1)
        return g, theta - theta.mean(dim=-2, keepdim=True), phi - phi.mean(dim=-1, keepdim=True)

    def _pairwise(self, theta: Tensor, phi: Tensor) -> Tensor:
        weight = torch.matmul(theta, phi)
        weight = weight / float(theta.shape[-1]) ** 0.5  # 16.0 exactly for 256 channels, as mmseg's tensor
        weight = weight / self.temperature
        return weight.softmax(dim=-1)

    def pairwise(self, x: Tensor) -> Tensor:
        """The full pairwise map ``P`` (B, n_query, n_key), rows over row-major positions (for inspection)."""
        _, theta, phi = self._embeddings(x)
        return self._pairwise(theta, phi)

    def mask_logits(self, x: Tensor) -> Tensor:
        """The unary ``conv_mask`` output (B, 1, h, w), before its softmax over positions."""
        return self.conv_mask(x)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        g, theta, phi = self._embeddings(x)
        positions = theta.shape[1]
        chunk = self.query_chunk or positions
        rows = [torch.matmul(self._pairwise(theta[:, i:i + chunk], phi), g) for i in range(0, positions, chunk)]
        y = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.shape[2:])
        mask = self.conv_mask(x).view(n, 1, -1).softmax(dim=-1)
        unary = torch.matmul(mask, g).permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, 1, 1)
        return x + self.conv_out(y + unary)


class DNLHead(nn.Module):
    """mmseg ``DNLHead`` (FCNHead, two 3x3 convs with the DNL block between, ``concat_input``)."""

    def __init__(self, num_classes: int, in_channels: int = 2048, channels: int = 512,
                 query_chunk: int | None = QUERY_CHUNK) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1),
                                   ConvModule(channels, channels, 3, padding=1))
        self.dnl_block = DisentangledNonLocal2d(channels, query_chunk=query_chunk)
        self.conv_cat = ConvModule(in_channels + channels, channels, 3, padding=1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def stages(self, c4: Tensor) -> dict[str, Tensor]:
        """Every head stage: ``dnl_in``, ``dnl_out``, ``head_feat`` (input of ``conv_seg``) and ``logits``."""
        dnl_in = self.convs[0](c4)
        dnl_out = self.dnl_block(dnl_in)
        feat = self.conv_cat(torch.cat([c4, self.convs[1](dnl_out)], dim=1))
        return {"dnl_in": dnl_in, "dnl_out": dnl_out, "head_feat": feat, "logits": self.conv_seg(feat)}

    def forward(self, c4: Tensor) -> Tensor:
        return self.stages(c4)["logits"]


# --- model ------------------------------------------------------------------------------------------------
class DNLNet(nn.Module):
    """mmseg ``EncoderDecoder`` (backbone + decode head; the auxiliary FCN head is training-only and absent).

    ``forward`` returns the decode head's logits (B, num_classes, ceil-ish H/8, W/8) for a normalised batch;
    ``predict`` adds mmseg's two bilinear resizes (to the network input, then to the original size)."""

    def __init__(self, num_classes: int = 19, query_chunk: int | None = QUERY_CHUNK) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNetV1c()
        self.decode_head = DNLHead(num_classes, query_chunk=query_chunk)

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone outputs ``c1``..``c4`` and the head stages (see ``DNLHead.stages``)."""
        feats = self.backbone(x)
        return {**{f"c{i + 1}": f for i, f in enumerate(feats)}, **self.decode_head.stages(feats[3])}

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.backbone(x)[3])

    def predict(self, x: Tensor, ori_size: tuple[int, int] | None = None) -> Tensor:
        """Seg logits (B, num_classes, H, W) at ``ori_size`` (default: the input size), as mmseg's
        ``predict``: resize to the network input size, then to the original size."""
        return upsample_logits(self(x), tuple(x.shape[-2:]), ori_size)


def build_dnl(num_classes: int = 19, query_chunk: int | None = QUERY_CHUNK, **_: Any) -> DNLNet:
    """The registry builder: the entry config's other keys (dataset, test scale, ...) describe I/O only."""
    return DNLNet(num_classes=num_classes, query_chunk=query_chunk)


# --- pre-processing -----------------------------------------------------------------------------------------
def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` for ``Resize(scale, keep_ratio=True)``: the largest size with the long edge
    <= max(scale) and the short edge <= min(scale), rounded half up; returns (width, height)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to ``size`` = (width, height), cv2 ``INTER_LINEAR``
    geometry (half-pixel centres, no antialiasing), rounded back to uint8. Unchanged sizes are not resampled."""
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image.copy()
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def normalize_u8(images: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, H, W, 3) RGB uint8 -> (B, 3, H, W) ``(x - mean) / std`` in ``dtype`` with the float32-rounded
    constants of ``SegDataPreProcessor`` (bit-identical to it in float32, and to its float64 run)."""
    u8 = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if u8.dtype != torch.uint8 or u8.ndim != 4 or u8.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 RGB images, got {tuple(u8.shape)} {u8.dtype}")
    mean = torch.tensor(MEAN, dtype=torch.float32).to(dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).to(dtype).view(1, 3, 1, 1)
    return (u8.permute(0, 3, 1, 2).to(dtype) - mean) / std


class Prepared(NamedTuple):
    """A pre-processed image: the model input and the two sizes the post-processing resizes to."""

    x: Tensor  # (1, 3, h, w) normalised
    img_shape: tuple[int, int]  # (h, w) after the keep-ratio resize = network input size
    ori_shape: tuple[int, int]  # (H, W) of the original image


def preprocess(image: Image.Image | np.ndarray, scale: tuple[int, int] = (2048, 1024),
               dtype: torch.dtype = torch.float32) -> Prepared:
    """The mmseg test pipeline for one RGB image: ``Resize(scale, keep_ratio=True)`` then normalisation."""
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if min(height, width) < 1:
        raise ValueError("empty image")
    new_w, new_h = rescale_size(width, height, scale)
    resized = resize_u8(rgb, (new_w, new_h))
    return Prepared(normalize_u8(resized[None], dtype), (new_h, new_w), (height, width))


# --- post-processing ------------------------------------------------------------------------------------------
def upsample_logits(logits: Tensor, img_shape: tuple[int, ...], ori_shape: tuple[int, ...] | None = None) -> Tensor:
    """mmseg's two bilinear resizes (``align_corners=False``): to the network input size (``predict_by_feat``),
    then to the original image size (``postprocess_result``; skipped when the sizes agree)."""
    out = F.interpolate(logits, size=tuple(img_shape), mode="bilinear", align_corners=False)
    if ori_shape is not None and tuple(ori_shape) != tuple(img_shape):
        out = F.interpolate(out, size=tuple(ori_shape), mode="bilinear", align_corners=False)
    return out


def label_map(seg_logits: Tensor) -> np.ndarray:
    """(B, C, H, W) seg logits -> (B, H, W) class indices, uint8 when they fit (<= 256 classes), else int32."""
    labels = seg_logits.argmax(dim=1).cpu().numpy()
    return labels.astype(np.uint8 if seg_logits.shape[1] <= 256 else np.int32)


def colorize(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB with the dataset palette."""
    table = np.asarray(palette, dtype=np.uint8)
    if labels.size and int(labels.max()) >= len(table):
        raise ValueError(f"label {int(labels.max())} has no colour in a {len(table)}-colour palette")
    return table[labels]


def encode_png(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> bytes:
    """(H, W) class indices -> a palette-mode PNG: pixel values are the class indices, shown in the dataset's
    colours (so the file is both the label map and its visualisation)."""
    if labels.ndim != 2 or len(palette) > 256:
        raise ValueError("encode_png takes one (H, W) label map of at most 256 classes")
    img = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint8)), mode="P")
    flat = [v for colour in palette for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def class_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class indices -> (num_classes,) fraction of pixels per class (sums to 1)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(labels.size, 1)


def segment(model: DNLNet, image: Image.Image | np.ndarray, dataset: str = "cityscapes",
            scale: tuple[int, int] = (2048, 1024)) -> dict[str, Any]:
    """One image end to end: the label map at the original size, its PNG and the per-class pixel fractions."""
    classes, palette = DATASETS[dataset]
    prepared = preprocess(image, scale, next(model.parameters()).dtype)
    with torch.inference_mode():
        seg = upsample_logits(model(prepared.x), prepared.img_shape, prepared.ori_shape)
    labels = label_map(seg)[0]
    fractions = class_fractions(labels, len(classes))
    return {
        "labels": labels,
        "png": encode_png(labels, palette),
        "fractions": {classes[i]: float(f) for i, f in enumerate(fractions) if f > 0},
    }


# --- checkpoint conversion ------------------------------------------------------------------------------------
TRAINING_ONLY_KEYS = (
    "auxiliary_head.",  # the FCN auxiliary head on c3: its loss only trains the backbone; inference never runs it
)
WRAPPER_KEYS = ("state_dict", "model")  # mmcv/mmengine checkpoints: {"meta": ..., "state_dict": ...}
KEY_PREFIXES = ("module.",)  # (Distributed)DataParallel
_TRAINING_ONLY_RULES = (TrainingOnly("the FCN auxiliary head: its loss only trains the backbone",
                                     pattern=r"auxiliary_head\..*"),)


def convert_mmseg(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """An mmsegmentation DNLNet checkpoint (``{"meta", "state_dict"}`` or a bare state dict) -> zoo layout
    (= mmseg's names minus ``auxiliary_head.*``), through ``zoo.checkpoint``'s filter: ``WeightsError`` names
    unknown and missing keys; the number of classes follows from ``decode_head.conv_seg``."""
    classes = 19
    if isinstance(checkpoint, Mapping):
        state = next((checkpoint[k] for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), checkpoint)
        bias = next((v for k, v in state.items() if str(k).endswith("decode_head.conv_seg.bias")), None)
        if isinstance(bias, Tensor) and bias.dim() == 1:
            classes = int(bias.shape[0])
    with torch.device("meta"):
        expected = tuple(DNLNet(classes).state_dict())
    return filter_checkpoint(checkpoint, what="DNLNet", expected=expected, unwrap=WRAPPER_KEYS, strip=KEY_PREFIXES,
                             training_only=_TRAINING_ONLY_RULES)


# --- registry ---------------------------------------------------------------------------------------------
MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/dnlnet/"
PAPER = "https://arxiv.org/abs/2006.06668"
LICENSE = "Apache-2.0 (mmsegmentation code and checkpoints)"


def _io(dataset: str, classes: int, scale: tuple[int, int]) -> dict[str, Any]:
    return {
        "inputs": {"image": "BYTES [1]: image (JPEG/PNG bytes, or base64 in JSON); RGB, any size; resized "
                            f"keeping the aspect ratio into {scale[0]}x{scale[1]} (long x short edge), "
                            "whole-image inference"},
        "outputs": (  # handlers.semantic_segmentation_handler: tensors()
            TensorSpec("label_map_png", "BYTES", (1,),
                       "palette-mode PNG of the label map at the original image size (pixel "
                       f"value = {dataset} class index 0..{classes - 1}, coloured with the {dataset} palette)"),
            TensorSpec("class_fractions", "FP32", (classes,),
                       "fraction of the image's pixels per class (sums to 1)"),
        ),
    }


def _entry(tag: str, dataset: str, scale: tuple[int, int], url: str, mIoU: str, what: str) -> ModelEntry:
    classes = len(DATASETS[dataset][0])
    sha256_prefix = url.rsplit("-", 1)[1].removesuffix(".pth")  # OpenMMLab file names end in -<sha256[:8]>.pth
    return register(
        ModelEntry(
            name=f"dnl_r50_d8.{tag}",
            task="semantic-segmentation",
            builder=build_dnl,
            config={
                "num_classes": classes,
                "query_chunk": QUERY_CHUNK,
                "dataset": dataset,  # classes and palette: zoo.dnl.DATASETS
                "test_scale": list(scale),  # mmcv Resize(scale, keep_ratio=True)
                "test_mode": "whole",
                "mean": list(MEAN),
                "std": list(STD),
                "align_corners": False,
            },
            handler="handlers.semantic_segmentation_handler",
            **_io(dataset, classes, scale),
            weights=WeightsSource(
                hf_repo=None,  # OpenMMLab hosts the checkpoints on its own server, not the Hub
                converter="zoo.dnl:convert_mmseg",
                upstream_url=MMSEG_URL + url,
                upstream_sha256=None,  # no full sha256 is published; the file name carries its first 8 hex digits
                upstream_sha256_prefix=sha256_prefix,
                sha256_record=f"partial: the sha256 prefix {sha256_prefix} in the "
                              "official file name (OpenMMLab publish_model convention: sha256sum, first 8 hex "
                              "digits); the full hash is trusted on first use",
                description=f"mmsegmentation dnl_r50-d8 {what} ({mIoU} mIoU in configs/dnlnet/metafile.yaml)",
            ),
            license=LICENSE,
            paper=PAPER,
            serving=ServingConfig(batch_size=1, max_batch_delay_ms=5, response_timeout_s=300),
            default_serve=False,
            description=f"DNLNet R50-D8 (disentangled non-local head), {what}.",
        )
    )


DNL_CITYSCAPES = _entry(
    "cityscapes", "cityscapes", (2048, 1024),
    "dnl_r50-d8_512x1024_80k_cityscapes/dnl_r50-d8_512x1024_80k_cityscapes_20200904_233629-58b2f778.pth",
    "79.33", "Cityscapes 19 classes, 512x1024 crops, 80k iterations")
DNL_ADE20K = _entry(
    "ade20k", "ade20k", (2048, 512),
    "dnl_r50-d8_512x512_160k_ade20k/dnl_r50-d8_512x512_160k_ade20k_20200826_183350-37837798.pth",
    "41.87", "ADE20K 150 classes, 512x512 crops, 160k iterations")
