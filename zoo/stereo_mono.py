"""Stereo-from-mono hourglass PSMNet (Watson et al., "Learning Stereo from Single Images", ECCV 2020,
https://arxiv.org/abs/2008.01484): a PSMNet-style stereo network trained only on stereo pairs synthesised
from single images with monocular depth (MiDaS), released as ``hourglass_midas_release``.

NON-COMMERCIAL: the official code and weights (``nianticlabs/stereo-from-mono`` @ ea7b704) are under the
Niantic "Stereo-from-mono License" (non-commercial use only, patent pending). The network itself is adapted
from PSMNet (Chang & Chen, CVPR 2018). Module names here follow ``networks/psm_hourglass.py`` and
``networks/psm_submodules.py``, so a released ``model.pth`` loads with at most a ``module.`` prefix removed.

What decides the numbers (tests/data/golden/zoo3/README_sfm.md):

* features (shared by both views, 1/4 resolution, 32 channels): ``firstconv`` (3x3/2 + two 3x3, BN, ReLU),
  BasicBlock stages 32x3, 64x16 (stride 2 in block 0), 128x3, 128x3 (dilation 2), no ReLU after the residual
  add; the *small* SPP: ``AvgPool2d(k, stride=2k)`` for k = 32, 16, 8, 4 (kernel != stride, floor mode) ->
  1x1 conv+BN+ReLU -> bilinear ``align_corners=True`` back; concatenation ``[layer2, layer4, b4, b3, b2, b1]``
  -> 3x3 conv+BN+ReLU -> 1x1 conv;
* concatenation cost volume (B, 64, 48, H/4, W/4): slice i pairs left column x with right column x - i;
  columns x < i stay zero in both halves;
* ``dres0``/``dres1`` then three chained hourglasses; the third receives ``pre1`` (not ``pre2``); every
  hourglass output gets ``cost0`` added; classifier costs accumulate (cost2 += cost1, cost3 += cost2);
* each cost: trilinear ``align_corners=True`` to (192, H, W), softmax over disparities, expectation
  ``sum_d p_d * d``. The served output is the one from cost3, in pixels of the network input, left view as
  reference: ``left(x) <-> right(x - d)``.

Input sizes: H and W must be multiples of 16 (two stride-2 3-D convs and two x2 transposed convs on the 1/4
volume) and at least 128 (the SPP's 32x32 pool on the 1/4 map); anything else raises ``ValueError``. The
official evaluation never pads: it resizes both views to a fixed network size per dataset (KITTI 1280x384,
PIL bilinear, aspect ratio not kept), normalises with ``(x / 255 - 0.45) / 0.225`` and maps the prediction
back with cv2 bilinear resize times ``W_original / W_network``. ``preprocess_pair``/``disparity_to_image``
do exactly that (the resize back in torch with cv2's half-pixel geometry, float arithmetic).
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
from zoo.checkpoint import filter_checkpoint
from zoo.tensors import TensorSpec

MAX_DISPARITY = 192
NORM_MEAN = 0.45  # one scalar for all three channels (datasets/base_dataset.py)
NORM_STD = 0.225
SIZE_MULTIPLE = 16
MIN_SIZE = 128
KITTI_SIZE = (1280, 384)  # (width, height): inference.py's sizes_lookup for KITTI 2012/2015
PNG_SCALE = 256.0  # KITTI disparity PNGs: uint16 = disparity * 256 (inference.py's submission writer)
# (width, height) network sizes of the official evaluation per dataset (inference.py sizes_lookup)
EVAL_SIZES = {"kitti": (1280, 384), "eth3d": (768, 448), "middlebury": (1280, 768), "flicker": (736, 1120),
              "sceneflow": (960, 512)}


# --- blocks -----------------------------------------------------------------------------------------------
def convbn(cin: int, cout: int, kernel: int, stride: int, pad: int, dilation: int) -> nn.Sequential:
    """Official ``convbn``: Conv2d (no bias; padding = dilation when dilated) + BatchNorm2d."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=dilation if dilation > 1 else pad,
                                   dilation=dilation, bias=False), nn.BatchNorm2d(cout))


def convbn_3d(cin: int, cout: int, kernel: int, stride: int, pad: int) -> nn.Sequential:
    """Official ``convbn_3d``: Conv3d (no bias) + BatchNorm3d."""
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, padding=pad, bias=False), nn.BatchNorm3d(cout))


class BasicBlock(nn.Module):
    """PSMNet BasicBlock: ``conv2(relu(conv1(x))) + downsample(x)``, no ReLU after the add."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(convbn(cin, planes, 3, stride, 1, dilation), nn.ReLU())
        self.conv2 = convbn(planes, planes, 3, 1, 1, dilation)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + (x if self.downsample is None else self.downsample(x))


class FeatureExtraction(nn.Module):
    """Official ``feature_extraction`` with the small SPP (``big_SPP=False``): (B, 3, H, W) -> (B, 32, H/4, W/4)."""

    SPP = ((32, 64), (16, 32), (8, 16), (4, 8))  # branch1..4: (avg-pool kernel, stride)

    def __init__(self) -> None:
        super().__init__()
        self.firstconv = nn.Sequential(convbn(3, 32, 3, 2, 1, 1), nn.ReLU(), convbn(32, 32, 3, 1, 1, 1), nn.ReLU(),
                                       convbn(32, 32, 3, 1, 1, 1), nn.ReLU())
        cin = 32
        for i, (planes, blocks, stride, dilation) in enumerate(((32, 3, 1, 1), (64, 16, 2, 1), (128, 3, 1, 1),
                                                                (128, 3, 1, 2))):
            down = None
            if stride != 1 or cin != planes:
                down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            layer = [BasicBlock(cin, planes, stride, down, dilation)]
            layer += [BasicBlock(planes, planes, 1, None, dilation) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            cin = planes
        for i, (kernel, stride) in enumerate(self.SPP):
            self.add_module(f"branch{i + 1}", nn.Sequential(nn.AvgPool2d(kernel, stride), convbn(128, 32, 1, 1, 0, 1),
                                                            nn.ReLU()))
        self.lastconv = nn.Sequential(convbn(320, 128, 3, 1, 1, 1), nn.ReLU(), nn.Conv2d(128, 32, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        raw = self.layer2(self.layer1(self.firstconv(x)))
        skip = self.layer4(self.layer3(raw))
        size = skip.shape[-2:]
        branches = [F.interpolate(getattr(self, f"branch{i}")(skip), size=size, mode="bilinear", align_corners=True)
                    for i in (4, 3, 2, 1)]  # official order: branch4 first
        return self.lastconv(torch.cat([raw, skip, *branches], dim=1))


class Hourglass(nn.Module):
    """Official 3-D ``hourglass``: returns ``(out, pre, post)`` for the next hourglass in the chain."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(convbn_3d(c, 2 * c, 3, 2, 1), nn.ReLU())
        self.conv2 = convbn_3d(2 * c, 2 * c, 3, 1, 1)
        self.conv3 = nn.Sequential(convbn_3d(2 * c, 2 * c, 3, 2, 1), nn.ReLU())
        self.conv4 = nn.Sequential(convbn_3d(2 * c, 2 * c, 3, 1, 1), nn.ReLU())
        self.conv5 = nn.Sequential(nn.ConvTranspose3d(2 * c, 2 * c, 3, 2, 1, output_padding=1, bias=False),
                                   nn.BatchNorm3d(2 * c))
        self.conv6 = nn.Sequential(nn.ConvTranspose3d(2 * c, c, 3, 2, 1, output_padding=1, bias=False),
                                   nn.BatchNorm3d(c))

    def forward(self, x: Tensor, presqu: Tensor | None, postsqu: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        pre = self.conv2(self.conv1(x))
        pre = F.relu(pre + postsqu) if postsqu is not None else F.relu(pre)
        out = self.conv4(self.conv3(pre))
        post = F.relu(self.conv5(out) + (presqu if presqu is not None else pre))
        return self.conv6(post), pre, post


# --- model ------------------------------------------------------------------------------------------------
class Disparities(NamedTuple):
    """The three regressed disparities (B, H, W), in pixels of the network input. ``disp`` is the served one."""

    disp: Tensor  # official outputs[('raw', 0)][:, 0], from cost3
    disp_raw1: Tensor  # ('raw', 1), from cost2
    disp_raw2: Tensor  # ('raw', 2), from cost1


def check_size(height: int, width: int) -> None:
    """Raise ``ValueError`` for sizes the network cannot take (README_sfm.md section 7)."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < MIN_SIZE:
        raise ValueError(f"stereo-from-mono needs height and width that are multiples of {SIZE_MULTIPLE} and at "
                         f"least {MIN_SIZE} (got {height}x{width}); resize both views to a valid size first")


class StereoHourglass(nn.Module):
    """Official ``PSMNet`` of ``networks/psm_hourglass.py`` (``hourglass(192)``): left/right -> disparities."""

    def __init__(self, max_disparity: int = MAX_DISPARITY) -> None:
        super().__init__()
        if max_disparity % 16:
            raise ValueError(f"max_disparity must be a multiple of 16 (got {max_disparity})")
        self.max_disparity = max_disparity
        self.feature_extraction = FeatureExtraction()
        self.dres0 = nn.Sequential(convbn_3d(64, 32, 3, 1, 1), nn.ReLU(), convbn_3d(32, 32, 3, 1, 1), nn.ReLU())
        self.dres1 = nn.Sequential(convbn_3d(32, 32, 3, 1, 1), nn.ReLU(), convbn_3d(32, 32, 3, 1, 1))
        self.dres2 = Hourglass(32)
        self.dres3 = Hourglass(32)
        self.dres4 = Hourglass(32)
        for i in (1, 2, 3):
            self.add_module(f"classif{i}", nn.Sequential(convbn_3d(32, 32, 3, 1, 1), nn.ReLU(),
                                                         nn.Conv3d(32, 1, 3, 1, 1, bias=False)))

    def cost_volume(self, left: Tensor, right: Tensor) -> Tensor:
        """(B, 2C, D/4, h, w) concatenation volume; slice i: left[x] with right[x - i], zeros where x < i."""
        b, c, h, w = left.shape
        cost = left.new_zeros(b, 2 * c, self.max_disparity // 4, h, w)
        for i in range(self.max_disparity // 4):
            if i >= w:
                break
            cost[:, :c, i, :, i:] = left[:, :, :, i:]
            cost[:, c:, i, :, i:] = right[:, :, :, :w - i]
        return cost

    def aggregate(self, cost: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three raw classifier outputs (B, 1, D/4, h, w), before their accumulation."""
        cost0 = self.dres0(cost)
        cost0 = self.dres1(cost0) + cost0
        out1, pre1, post1 = self.dres2(cost0, None, None)
        out1 = out1 + cost0
        out2, _, post2 = self.dres3(out1, pre1, post1)
        out2 = out2 + cost0
        out3, _, _ = self.dres4(out2, pre1, post2)  # pre1, as the official code
        out3 = out3 + cost0
        return self.classif1(out1), self.classif2(out2), self.classif3(out3)

    def regress(self, cost: Tensor, size: tuple[int, int]) -> Tensor:
        """Low-res cost (B, 1, D/4, h, w) -> trilinear (align_corners) to (D, H, W) -> softmax -> sum p_d * d."""
        cost = F.interpolate(cost, size=(self.max_disparity, *size), mode="trilinear", align_corners=True)
        prob = F.softmax(cost[:, 0], dim=1)
        disp = torch.arange(self.max_disparity, dtype=torch.float32, device=prob.device).view(1, -1, 1, 1)
        return torch.sum(prob * disp, dim=1)  # float32 indices, promoted in float64 runs (as official)

    def stages(self, left: Tensor, right: Tensor) -> dict[str, Tensor]:
        """Every stage: features, cost volume, raw classifier outputs, accumulated costs, disparities."""
        check_size(*left.shape[-2:])
        if left.shape != right.shape:
            raise ValueError(f"left and right views differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
        feat_l = self.feature_extraction(left)
        feat_r = self.feature_extraction(right)
        cost = self.cost_volume(feat_l, feat_r)
        c1, c2, c3 = self.aggregate(cost)
        cost1 = c1
        cost2 = c2 + cost1
        cost3 = c3 + cost2
        size = tuple(left.shape[-2:])
        return {"feat_left": feat_l, "feat_right": feat_r, "cost": cost, "classif1": c1, "classif2": c2,
                "classif3": c3, "cost3": cost3, "disp": self.regress(cost3, size),
                "disp_raw1": self.regress(cost2, size), "disp_raw2": self.regress(cost1, size)}

    def forward(self, left: Tensor, right: Tensor) -> Disparities:
        s = self.stages(left, right)
        return Disparities(s["disp"], s["disp_raw1"], s["disp_raw2"])


def build_stereo_hourglass(max_disparity: int = MAX_DISPARITY, **_: Any) -> StereoHourglass:
    """The registry builder: the entry config's other keys describe pre/post-processing only."""
    return StereoHourglass(max_disparity)


# --- pre-processing ---------------------------------------------------------------------------------------
def normalize_u8(images: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) ``(x / 255 - 0.45) / 0.225`` (ToTensor, then the official
    scalar normalisation) in ``dtype``."""
    u8 = images if isinstance(images, Tensor) else torch.from_numpy(np.array(images, copy=True))
    if u8.dtype != torch.uint8 or u8.ndim != 4 or u8.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 RGB images, got {tuple(u8.shape)} {u8.dtype}")
    return (u8.permute(0, 3, 1, 2).to(dtype) / 255 - NORM_MEAN) / NORM_STD


class StereoInput(NamedTuple):
    """A pre-processed pair: the two network inputs and the original image size."""

    left: Tensor  # (1, 3, h, w)
    right: Tensor
    ori_size: tuple[int, int]  # (H, W) of the original views


def _rgb(image: Image.Image | np.ndarray, what: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{what} view: expected an RGB uint8 image (H, W, 3), got {array.shape} {array.dtype}")
    return Image.fromarray(array)


def preprocess_pair(left: Image.Image | np.ndarray, right: Image.Image | np.ndarray,
                    size: tuple[int, int] = KITTI_SIZE, dtype: torch.dtype = torch.float32) -> StereoInput:
    """The official evaluation input: both views (equal size required) resized to ``size`` = (width, height)
    with PIL bilinear (torchvision ``Resize`` on PIL images; a no-op at that size), then normalised."""
    left_img, right_img = _rgb(left, "left"), _rgb(right, "right")
    if left_img.size != right_img.size:
        raise ValueError(f"left and right views must have the same size (got {left_img.size[0]}x{left_img.size[1]} "
                         f"and {right_img.size[0]}x{right_img.size[1]}, width x height)")
    check_size(size[1], size[0])
    width, height = left_img.size

    def prep(img: Image.Image) -> Tensor:
        if img.size != tuple(size):
            img = img.resize(tuple(size), Image.Resampling.BILINEAR)
        return normalize_u8(np.asarray(img)[None], dtype)

    return StereoInput(prep(left_img), prep(right_img), (height, width))


# --- post-processing --------------------------------------------------------------------------------------
def disparity_to_image(disp: Tensor, ori_size: tuple[int, int]) -> Tensor:
    """(B, h, w) network-size disparity -> (B, H, W) float32 at the original size, in original pixels: bilinear
    resize with half-pixel centres (cv2 ``INTER_LINEAR``, as inference.py) times ``W / w``."""
    height, width = ori_size
    out = disp.float()
    if tuple(out.shape[-2:]) != (height, width):
        out = F.interpolate(out[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return out * (width / disp.shape[-1])


def encode_png16(disp: np.ndarray | Tensor) -> bytes:
    """(H, W) disparity -> 16-bit greyscale PNG of ``disparity * 256`` truncated to uint16 (the KITTI format and
    the official submission writer; values above 255.996 px are clipped to 65535). Decode with ``png / 256``."""
    array = disp.detach().cpu().numpy() if isinstance(disp, Tensor) else np.asarray(disp)
    if array.ndim != 2:
        raise ValueError(f"encode_png16 takes one (H, W) disparity map, got shape {array.shape}")
    scaled = np.clip(array.astype(np.float64) * PNG_SCALE, 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(scaled).save(buf, format="PNG")
    return buf.getvalue()


def decode_png16(data: bytes) -> np.ndarray:
    """The inverse of ``encode_png16``: float32 disparity in pixels (to 1/256 px)."""
    return (np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64) / PNG_SCALE).astype(np.float32)


# Fixed colour map for visualisation: (position in [0, 1], RGB), piecewise linear from near-zero disparity (far,
# dark blue) to large disparity (near, dark red), a jet-like ramp.
COLOUR_STOPS = ((0.0, (0, 0, 96)), (0.15, (0, 0, 255)), (0.35, (0, 200, 255)), (0.5, (64, 255, 128)),
                (0.65, (255, 230, 0)), (0.85, (255, 60, 0)), (1.0, (128, 0, 0)))


def colorize_disparity(disp: np.ndarray | Tensor, max_disparity: float | None = None) -> np.ndarray:
    """(H, W) disparity -> (H, W, 3) uint8 RGB with the fixed ``COLOUR_STOPS`` map, scaled to ``max_disparity``
    (default: the map's own maximum). numpy only."""
    array = disp.detach().cpu().numpy() if isinstance(disp, Tensor) else np.asarray(disp)
    array = np.nan_to_num(array.astype(np.float64), nan=0.0)
    top = float(array.max()) if max_disparity is None else float(max_disparity)
    t = np.clip(array / top, 0.0, 1.0) if top > 0 else np.zeros_like(array)
    stops = np.array([s for s, _ in COLOUR_STOPS])
    colours = np.array([c for _, c in COLOUR_STOPS], dtype=np.float64)
    rgb = np.stack([np.interp(t, stops, colours[:, k]) for k in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def predict(model: StereoHourglass, left: Image.Image | np.ndarray, right: Image.Image | np.ndarray,
            size: tuple[int, int] = KITTI_SIZE) -> dict[str, Any]:
    """One pair end to end: disparity (float32, original size and pixels), its 16-bit PNG and a colour image."""
    pair = preprocess_pair(left, right, size, next(model.parameters()).dtype)
    with torch.inference_mode():
        disp = disparity_to_image(model(pair.left, pair.right).disp, pair.ori_size)[0]
    return {"disparity": disp, "png16": encode_png16(disp), "colour": colorize_disparity(disp)}


# --- checkpoint conversion ------------------------------------------------------------------------------------
# None: the released model.pth is the network's state_dict alone (the optimiser is a separate optimiser.pth,
# which inference never reads), so every key is either the network's or an error.
WRAPPER_KEYS = ("state_dict", "model")
KEY_PREFIXES = ("module.",)  # nn.DataParallel (multi-GPU training); ModelManager.load_model strips it too


def convert_official(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The authors' ``model.pth`` (``hourglass_midas_release``) -> zoo layout (= the official names), through
    ``zoo.checkpoint``'s filter: strips ``module.`` and raises ``WeightsError`` naming every unknown or missing
    key."""
    with torch.device("meta"):
        expected = tuple(StereoHourglass().state_dict())
    return filter_checkpoint(checkpoint, what="stereo-from-mono", expected=expected, unwrap=WRAPPER_KEYS,
                             strip=KEY_PREFIXES)


# --- registry ---------------------------------------------------------------------------------------------
STEREO_FROM_MONO = register(
    ModelEntry(
        name="stereo_from_mono.hourglass",
        task="stereo-depth",
        builder=build_stereo_hourglass,
        config={
            "max_disparity": MAX_DISPARITY,
            "input_size": list(KITTI_SIZE),  # (width, height) both views are resized to (KITTI evaluation size)
            "eval_sizes": {k: list(v) for k, v in EVAL_SIZES.items()},
            "norm_mean": NORM_MEAN,
            "norm_std": NORM_STD,
            "png_scale": PNG_SCALE,
        },
        handler="handlers.stereo_depth_handler",
        inputs={
            "left": "BYTES [1]: left (reference) view, JPEG/PNG bytes or base64 in JSON; RGB",
            "right": "BYTES [1]: right view, same size as the left one (else HTTP 400 naming both sizes); both "
                     f"are resized to {KITTI_SIZE[0]}x{KITTI_SIZE[1]} for the network, whatever their size",
            "dtype": "BYTES [1], optional: 'float32' (default) or 'float16', the datatype of the disparity",
        },
        outputs=(  # handlers.stereo_depth_handler: tensors()
            TensorSpec("disparity", "FP32", (-1, -1),
                       "[H, W] disparity in pixels of the original left image (left(x) <-> "
                       "right(x - d)); always FP32 here (the task route's JSON honours dtype=float16)"),
            TensorSpec("disparity_png16", "BYTES", (1,),
                       "16-bit greyscale PNG of disparity * 256, truncated (KITTI format)"),
        ),
        weights=WeightsSource(
            hf_repo=None,  # not on the Hub; the authors host a zip with model.pth (+ optimiser.pth)
            converter="zoo.stereo_mono:convert_official",
            upstream_url="https://storage.googleapis.com/niantic-lon-static/research/stereo-from-mono/models/"
                         "hourglass_midas_release.zip",
            # A zip (model.pth + optimiser.pth) that zoo pull cannot read: the user unzips it and hands model.pth
            # to `zoo pull stereo_from_mono --file`. No sha256 is published for the zip or its model.pth.
            upstream_sha256=None,
            upstream_filename="model.pth",
            manual_download=True,
            sha256_record="none published: trust on first use (zoo/weights_lock.py)",
            description="authors' hourglass PSMNet trained on MiDaS-synthesised stereo (model.pth inside the zip)",
        ),
        license="NON-COMMERCIAL: Niantic Stereo-from-mono License (non-commercial use only, patent pending; "
                "redistribution in source form only; network adapted from PSMNet)",
        paper="https://arxiv.org/abs/2008.01484",
        serving=ServingConfig(batch_size=1, max_batch_delay_ms=5, response_timeout_s=300),
        default_serve=False,
        description="Stereo-from-mono: hourglass PSMNet trained on stereo pairs synthesised from single images.",
    )
)
