"""CKDN: degraded-reference image quality (Zheng et al., ICCV 2021, https://arxiv.org/abs/2108.07948).

CKDN scores a *restored* image using the *degraded* image the restoration started from as its reference.
The official network (``ckdn.py`` in researchmm/CKDN, MIT) is a ResNet-50 cut after ``layer2``:

* restored encoder  ``qse_1`` (7x7/2 conv, no BN, no ReLU) -> shared ``maxpool`` -> ``qse_2`` (layer1)
* degraded encoder  ``dte_1`` (same structure)             -> shared ``maxpool`` -> ``dte_2`` (layer1)
* their feature difference ``restored - degraded`` -> ``csp`` (ResNet-50 layer2, 256->512, stride 2)
  -> global average pool -> ``fc_`` MLP 512->2048->2048->1 (ReLU, dropout off at inference) -> sigmoid.

The official ``ResNet.forward`` takes a 12-channel stack ``[rest1, dist1, rest2, ref1]`` and returns
``[sigmoid(fc_(dr)), sigmoid(fc_(fr)), sigmoid(fc1_(nr)), mse]`` where ``dr = avgpool(csp(rest1 - dist1))``
(encoders: ``rest1`` through ``qse``, ``dist1`` through ``dte``). Column 0 is the DR-IQA score, the only
column its evaluation scripts read. ``fr`` (same ``csp``/``fc_`` with the pristine image through ``dte``)
and ``mse`` need no extra weights and are reachable here through ``features``/``encode_degraded``. The
no-reference branch (``aux_csp`` and ``fc1_``) is used only by the training loss: it is not built here,
and its tensors are dropped by name when an official checkpoint is converted.

Module names follow the official ones, so a converted checkpoint is the official one minus the
training-only keys, with any ``module.``/``net.`` prefixes removed.

Preprocessing (the official evaluation: ``val.py``/``predict_score.py`` with ``img_size=288``,
``crop_pct=0.875``, interpolation ``bicubic``, the paired transforms of ``paired_transforms_tv04.py`` and
the prefetching loader of ``timm/data/loader_iqa.py``), reproduced here with PIL and numpy only:

1. resize so the shorter side is ``floor(288 / 0.875) = 329``: the restored image with ``BICUBIC``, the
   degraded image (the paired transform's "target") with ``NEAREST``. The longer side becomes
   ``int(329 * long / short)`` (truncation), the rule of torchvision's ``resize`` for an int size
   (``_compute_resized_output_size``); an image whose shorter side already is 329 is left untouched;
2. centre crop 288x288 at ``top = int(round((h - 288) / 2))``, ``left = int(round((w - 288) / 2))``
   (Python's round: halves go to the even integer, as in torchvision's ``center_crop``);
3. ``uint8 -> (x - 255 * mean) / (255 * std)`` per channel with the ImageNet mean/std, in the run dtype,
   exactly as the official prefetcher does (equal to ToTensor + Normalize up to float rounding).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from zoo import device_image
from zoo._registry import GpuServing, ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import TrainingOnly, expected_keys, filter_checkpoint
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD, Bottleneck, resnet_stage
from zoo.runtime import GPU_NOT_MEASURED
from zoo.tensors import TensorSpec

# --- preprocessing constants (official evaluation settings) ------------------------------------------
CROP_SIZE = 288
CROP_PCT = 0.875
RESIZE_SHORT = int(math.floor(CROP_SIZE / CROP_PCT))  # 329
RESTORED_RESAMPLE = Image.Resampling.BICUBIC
DEGRADED_RESAMPLE = Image.Resampling.NEAREST


# --- model ------------------------------------------------------------------------------------------
def stem_conv() -> nn.Conv2d:
    """The 7x7/2 stem convolution. CKDN uses it bare: no BatchNorm and no ReLU follow it."""
    return nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)


class CKDN(nn.Module):
    """The CKDN degraded-reference scorer (inference path of the official network).

    ``forward(restored, degraded)`` takes two normalised ``[B, 3, H, W]`` batches (288x288 in the official
    evaluation; see ``preprocess_pair`` and ``normalize``) and returns the score ``[B]`` in [0, 1]
    (higher is better), equal to column 0 of the official output.
    """

    def __init__(self, layer1_blocks: int = 3, layer2_blocks: int = 4, hidden_dim: int = 2048,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.qse_1 = stem_conv()  # restored-image stem
        self.qse_2 = resnet_stage(64, 64, layer1_blocks)  # restored-image layer1
        self.dte_1 = stem_conv()  # degraded-image stem
        self.dte_2 = resnet_stage(64, 64, layer1_blocks)  # degraded-image layer1
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # shared by both encoders
        self.csp = resnet_stage(256, 128, layer2_blocks, stride=2)  # layer2 on the feature difference
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        feat_dim = 128 * Bottleneck.expansion
        # indices 0/3/6 hold the Linear layers, as in the official nn.Sequential (keys fc_.0/.3/.6)
        self.fc_ = nn.Sequential(
            nn.Linear(feat_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )
        for m in self.modules():  # the official initialisation (only seen with random weights)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode_restored(self, x: Tensor) -> Tensor:
        return self.qse_2(self.maxpool(self.qse_1(x)))

    def encode_degraded(self, x: Tensor) -> Tensor:
        return self.dte_2(self.maxpool(self.dte_1(x)))

    def features(self, restored: Tensor, degraded: Tensor) -> Tensor:
        """``avgpool(csp(enc_restored - enc_degraded))`` flattened to ``[B, 512]`` (official ``dr``)."""
        diff = self.encode_restored(restored) - self.encode_degraded(degraded)
        return torch.flatten(self.avgpool(self.csp(diff)), 1)

    def logits(self, restored: Tensor, degraded: Tensor) -> Tensor:
        """Pre-sigmoid score ``[B]`` (official ``fc_(dr)``)."""
        return self.fc_(self.features(restored, degraded))[:, 0]

    def forward(self, restored: Tensor, degraded: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(restored, degraded).float())  # fp32 score under bf16 autocast too


# --- checkpoint conversion -------------------------------------------------------------------------
# Official modules that only the training loss uses (the no-reference branch ``nr``): their keys are
# dropped by exact name. Anything else the model does not have is an error.
TRAINING_ONLY_MODULES = {"aux_csp": "csp", "fc1_": "fc_"}  # dropped module -> zoo module of identical layout
WRAPPER_KEYS = ("state_dict", "params")  # timm CheckpointSaver / IQA-toolbox style wrappers
KEY_PREFIXES = ("module.", "net.")  # DataParallel (possibly nested) and the IQA toolbox's wrapper


@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """Every state-dict key of the zoo model (the official keys of the kept modules), in order."""
    return expected_keys(CKDN)


def training_only_keys(keys: Iterable[str] | None = None) -> frozenset[str]:
    """The exact official key names of the training-only modules, derived from their twins' layouts."""
    keys = list(zoo_keys() if keys is None else keys)
    dropped = set()
    for module, twin in TRAINING_ONLY_MODULES.items():
        dropped |= {module + k[len(twin):] for k in keys if k.startswith(twin + ".")}
    return frozenset(dropped)


def convert_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official (``model_best.pth.tar``), IQA-toolbox (``net.``) or zoo-layout CKDN weights -> zoo layout.

    Accepts the timm ``CheckpointSaver`` dict (weights under ``state_dict``, keys ``module.``-prefixed once
    or more; ``state_dict_ema`` and the optimiser state are ignored, as by the official evaluation), a flat
    state dict whose keys carry ``net.`` (the IQA toolbox's converted file, possibly under ``params``), or a
    flat zoo-layout dict. Drops the training-only ``aux_csp.*``/``fc1_.*`` keys by exact name and raises
    ``WeightsError`` naming every unknown or missing key.
    """
    no_reference_branch = TrainingOnly("the no-reference branch (aux_csp, fc1_) serves only the training loss",
                                       names=training_only_keys())
    return filter_checkpoint(checkpoint, what="CKDN", expected=zoo_keys(), unwrap=WRAPPER_KEYS, strip=KEY_PREFIXES,
                             training_only=[no_reference_branch])


# --- preprocessing ---------------------------------------------------------------------------------
def resized_size(width: int, height: int, short: int = RESIZE_SHORT) -> tuple[int, int]:
    """(width, height) with the shorter side resized to ``short``, the longer truncated (as torchvision)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def resize_short_side(img: Image.Image, resample: Image.Resampling, short: int = RESIZE_SHORT) -> Image.Image:
    size = resized_size(img.width, img.height, short)
    return img if size == img.size else img.resize(size, resample)


def center_crop_box(width: int, height: int, crop: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) of the centred ``crop`` square (torchvision rounding)."""
    if width < crop or height < crop:
        raise ValueError(f"image {width}x{height} is smaller than the {crop}x{crop} crop")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def _prepare(img: Image.Image, resample: Image.Resampling) -> np.ndarray:
    img = resize_short_side(img.convert("RGB"), resample)
    return np.asarray(img.crop(center_crop_box(img.width, img.height)), dtype=np.uint8)


def preprocess_restored(img: Image.Image) -> np.ndarray:
    """The restored image as the official evaluation sees it: ``[288, 288, 3]`` uint8 (bicubic resize)."""
    return _prepare(img, RESTORED_RESAMPLE)


def preprocess_degraded(img: Image.Image) -> np.ndarray:
    """The degraded reference as the official evaluation sees it: ``[288, 288, 3]`` uint8 (nearest resize)."""
    return _prepare(img, DEGRADED_RESAMPLE)


def preprocess_pair(restored: Image.Image, degraded: Image.Image) -> np.ndarray:
    """``[2, 288, 288, 3]`` uint8: index 0 the restored image, index 1 the degraded reference."""
    return np.stack([preprocess_restored(restored), preprocess_degraded(degraded)])


def _prepare_tensor(image_u8: Tensor, mode: str) -> Tensor:
    height, width = image_u8.shape[-2:]
    new_w, new_h = resized_size(width, height)
    if (new_w, new_h) != (width, height):
        image_u8 = device_image.resize(image_u8, (new_h, new_w), mode)
    left, top, right, bottom = center_crop_box(new_w, new_h)
    return image_u8[:, top:bottom, left:right].permute(1, 2, 0)


def preprocess_pair_tensors(restored_u8: Tensor, degraded_u8: Tensor) -> Tensor:
    """``preprocess_pair`` with torch ops on the images' device: ``[3, H, W]`` uint8 each -> ``[2, 288, 288, 3]``.

    Bicubic (antialiased, PIL's a = -0.5) for the restored image, nearest (pixel centres) for the degraded one,
    as the PIL path; differences from it are the resize kernels' only (``tests/zoo/test_device_image.py``).
    """
    return torch.stack([_prepare_tensor(restored_u8, "bicubic"), _prepare_tensor(degraded_u8, "nearest")])


def normalize(images_u8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[..., 3, H, W]`` uint8 -> ``(x - 255 * mean) / (255 * std)`` in ``dtype`` (official prefetcher)."""
    shape = (3, 1, 1)
    mean = torch.tensor([m * 255 for m in IMAGENET_MEAN], dtype=dtype, device=images_u8.device).view(shape)
    std = torch.tensor([s * 255 for s in IMAGENET_STD], dtype=dtype, device=images_u8.device).view(shape)
    return (images_u8.to(dtype) - mean) / std


def pair_batch_to_inputs(pairs_u8: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``[B, 2, H, W, 3]`` uint8 pairs (``preprocess_pair`` stacked) -> normalised (restored, degraded)."""
    x = normalize(pairs_u8.permute(0, 1, 4, 2, 3), dtype)
    return x[:, 0].contiguous(), x[:, 1].contiguous()


# --- registry ---------------------------------------------------------------------------------------
CKDN_R50 = register(
    ModelEntry(
        name="ckdn_r50.pipal",
        task="image-quality",
        builder=CKDN,
        config={},
        handler="handlers.ckdn_handler",
        inputs={
            "restored": "image (JPEG/PNG bytes, or base64 in JSON): the output of an image-restoration model",
            "degraded": "image (JPEG/PNG bytes, or base64 in JSON): the degraded input it was restored from",
        },
        outputs=(TensorSpec("score", "FP32", (1,), "in [0, 1]; higher means better restoration (trained on PIPAL)"),),
        weights=WeightsSource(
            # The IQA toolbox's conversion of the official checkpoint (keys under `net.`, all 290 tensors).
            # Commit a9f0adb added the file; its LFS pointer gives this sha256 (size 53,729,377 bytes).
            # The Hub repository itself is tagged CC-BY-NC-SA-4.0 (see docs/models/ckdn.md).
            hf_repo="chaofengc/IQA-PyTorch-Weights",
            revision="a9f0adbe769b3acde27af64b079a0e3ad1e2173a",
            filename="CKDN_model_best-38b27dc6.pth",
            sha256="38b27dc680955a482028f97e60bc670530fbeff9e67744d0c8116d9e796811c8",
            sha256_record="the Hub's LFS pointer of CKDN_model_best-38b27dc6.pth at "
                          "chaofengc/IQA-PyTorch-Weights@a9f0adb (oid sha256, size 53,729,377); the file name "
                          "carries its first 8 hex digits",
            converter="zoo.ckdn:convert_checkpoint",
            # The authors' model_best.pth.tar, linked from the researchmm/CKDN README. Its sha256 is not
            # published; the Hub pin above is what `zoo pull` fetches.
            upstream_url="https://drive.google.com/file/d/13HzxPsRWdPC_CAsbvgMgU5IG_TKPVbNe/view?usp=sharing",
            upstream_sha256=None,
            description="official CKDN weights trained on PIPAL (researchmm/CKDN model_best.pth.tar)",
        ),
        license="MIT",
        paper="https://arxiv.org/abs/2108.07948",
        serving=ServingConfig(
            batch_size=16, max_batch_delay_ms=20,
            precision="bf16", channels_last=True, device_preprocess=True, batch_buckets=(1, 2, 4, 8, 16, 32, 64),
            accuracy="bf16 autocast vs fp32: score within 1e-3; device preprocessing vs PIL: resized pixels mean "
                     "|d| <= 0.2/255 (bicubic) and <= 0.03/255 (nearest), score within 1e-4 (CPU, seeded random "
                     "weights, skimage astronaut/coffee/chelsea; tests/zoo/test_device_image.py)",
            gpu=GpuServing(batch_size=64, max_batch_delay_ms=5, workers=2, measured_by=GPU_NOT_MEASURED),
        ),
        default_serve=True,
        description="Degraded-reference IQA: scores a restored image against its degraded input (ResNet-50).",
    )
)
