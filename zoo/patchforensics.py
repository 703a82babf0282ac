"""Patch-Forensics (Chai et al., "What makes fake images detectable?", ECCV 2020,
https://arxiv.org/abs/2008.10588): a truncated Xception that classifies every image patch as real or fake.

The network is an Xception cut after an early block, with a 1x1 conv (``convout``, 2 classes, with bias)
in place of everything after it, so each output position sees only a patch of the input (its receptive
field) and answers with its own real/fake logits. Official code: ``chail/patch-forensics``
(``models/networks/customnet.py::make_patch_xceptionnet``, ``models/networks/xception.py``; the repository
has no licence file). The paper's main model is ``xception_block2`` (checkpoint
``gp1-gan-winversion_seed0_xception_block2_constant_p20``); ``xception_block3`` is the next cut (larger
patches, coarser map).

Layers (block2 model; the block3 model adds ``block3``):

* ``conv1`` 3x3/2 (no padding, no bias) -> BN -> ReLU -> ``conv2`` 3x3 (no padding) -> BN -> ReLU;
* Xception ``Block``: ``rep`` = [ReLU] -> SeparableConv 3x3 (depthwise ``conv1`` + ``pointwise``) -> BN -> ReLU
  -> SeparableConv -> BN -> MaxPool(3, 2, padding 1), plus ``skipbn(skip(x))`` (1x1 stride-2 conv) applied to the
  block input *before* its leading ReLU, no activation after the sum; ``block1`` has no leading ReLU;
* ``convout``: 1x1 conv to 2 logits per position. A 299x299 input gives a 37x37 map (block2) or 19x19 (block3).

Classes: index 0 is *fake* and 1 is *real* (``--fake_class_id`` defaults to 0 and no official script
changes it). The image-level score is the official "after softmax" average (``get_predictions().after_softmax``
in ``models/patch_discriminator_model.py``, the ``--average_mode`` of the released evaluation scripts): the
softmax of every patch, averaged over the map; its fake column is the fake probability.

Preprocessing (official ``data/transforms.py`` validation path for patch models with ``--loadSize 299``):
resize the shorter side to 299 with Lanczos, centre-crop 299, ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import functools
import io
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.ckdn import center_crop_box, resized_size
from zoo.classify import Preprocess
from zoo.tensors import TensorSpec

FAKE_CLASS = 0  # official default --fake_class_id
INPUT_SIZE = 299
OVERLAY_MAX_SIDE = 4096  # overlays of larger images are drawn on a copy downscaled to this longer side
OVERLAY_HEAT, OVERLAY_IMAGE = 0.3, 0.5  # the official blend: heatmap * 0.3 + image * 0.5
# (in, out, reps, stride, start_with_relu) of Xception's entry/middle blocks, as ``CustomXceptionNet`` builds them
BLOCKS = {
    "block1": (64, 128, 2, 2, False),
    "block2": (128, 256, 2, 2, True),
    "block3": (256, 728, 2, 2, True),
    "block4": (728, 728, 3, 1, True),
    "block5": (728, 728, 3, 1, True),
}


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (``conv1``) then pointwise 1x1 (``pointwise``), no biases."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class XceptionBlock(nn.Module):
    """Xception ``Block`` with ``grow_first=True``; ``rep`` indices match the official keys."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int, start_with_relu: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = cin
        for _ in range(reps):
            layers += [nn.ReLU(), SeparableConv2d(channels, cout), nn.BatchNorm2d(cout)]
            channels = cout
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)
        self.skip: nn.Conv2d | None = None
        self.skipbn: nn.BatchNorm2d | None = None
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class PatchXception(nn.Module):
    """``make_patch_xceptionnet(layer)``: Xception up to ``layer`` + ``convout``; ``forward`` gives the patch
    logit map ``[B, 2, h, w]``."""

    def __init__(self, layer: str = "block2", num_classes: int = 2) -> None:
        super().__init__()
        if layer not in BLOCKS:
            raise ValueError(f"layer must be one of {', '.join(BLOCKS)}, got {layer!r}")
        self.layer = layer
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        names = list(BLOCKS)[:list(BLOCKS).index(layer) + 1]
        for name in names:
            self.add_module(name, XceptionBlock(*BLOCKS[name]))
        self.block_names = tuple(names)
        self.convout = nn.Conv2d(BLOCKS[layer][1], num_classes, 1)
        for m in self.modules():  # the official init_net('xavier'); only seen with random weights
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``[B, 2, h, w]`` (class 0 = fake) for a ``(x - 0.5) / 0.5`` normalised batch."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.convout(x)


def patch_probabilities(logits: Tensor) -> Tensor:
    """``[B, 2, h, w]`` logits -> per-patch class probabilities (softmax over the 2 classes)."""
    return torch.softmax(logits, dim=1)


def fake_probability(logits: Tensor, fake_class: int = FAKE_CLASS) -> Tensor:
    """``[B]`` image-level fake probability: the official "after softmax" average of the patch predictions."""
    return patch_probabilities(logits)[:, fake_class].mean(dim=(1, 2))


class ForensicsInput(NamedTuple):
    """One decoded request: the model's crop, and (only when an overlay is wanted) the upload and where the
    crop lies in it."""

    pixels: np.ndarray  # [crop, crop, 3] uint8
    image: Image.Image | None
    box: tuple[float, float, float, float]


# --- heatmap overlay --------------------------------------------------------------------------------------
def crop_box_in_input(width: int, height: int, preprocess: Preprocess) -> tuple[float, float, float, float]:
    """Where the model's ``crop x crop`` input lies in the uploaded image: (left, top, right, bottom) in its
    pixels (the preprocessing resizes, then centre-crops)."""
    if preprocess.square:
        return 0.0, 0.0, float(width), float(height)
    rw, rh = resized_size(width, height, preprocess.resize)
    left, top, right, bottom = center_crop_box(rw, rh, preprocess.crop)
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, right * sx, bottom * sy


def jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map: values in [0, 1] -> RGB in [0, 1] (blue, cyan, yellow, red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks of 4v
    return np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)


def render_overlay(image: Image.Image, heat: np.ndarray, box: tuple[float, float, float, float]) -> bytes:
    """PNG of ``image`` with the patch heatmap (P(fake) in [0, 1], absolute scale) drawn over the region the
    model saw, blended as the official visualisation (``heat * 0.3 + image * 0.5``); the rest of the image,
    which the model did not see, is only dimmed (``image * 0.5``). Same size as ``image`` up to
    ``OVERLAY_MAX_SIDE`` pixels on the longer side."""
    image = image.convert("RGB")
    scale = min(1.0, OVERLAY_MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
    base = np.asarray(image, dtype=np.float32) / 255.0
    out = base * OVERLAY_IMAGE
    left, top = int(round(box[0])), int(round(box[1]))
    right, bottom = max(left + 1, int(round(box[2]))), max(top + 1, int(round(box[3])))
    right, bottom = min(right, image.width), min(bottom, image.height)
    heat_u8 = Image.fromarray(np.uint8(np.clip(heat, 0.0, 1.0) * 255.0 + 0.5))
    heat_up = np.asarray(heat_u8.resize((right - left, bottom - top), Image.Resampling.BILINEAR), np.float32)
    out[top:bottom, left:right] += jet(heat_up / 255.0).astype(np.float32) * OVERLAY_HEAT
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(out, 0.0, 1.0) * 255.0 + 0.5)).save(buf, format="PNG")
    return buf.getvalue()


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys(layer: str) -> tuple[str, ...]:
    """State-dict keys of the ``xception_<layer>`` patch model (identical to the official ones)."""
    return expected_keys(functools.partial(PatchXception, layer))


def convert_checkpoint(checkpoint: dict, layer: str = "block2") -> dict[str, Tensor]:
    """Official ``bestval_net_D.pth`` (``{"state_dict", "optimizer", "scheduler", "epoch", ...}``) or a flat
    state dict of the ``xception_<layer>`` model -> zoo layout. Raises ``WeightsError`` naming unknown and
    missing keys (a block3 checkpoint offered as block2 shows its ``block3.*`` keys as unknown)."""
    return filter_checkpoint(checkpoint, what=f"Patch-Forensics xception_{layer}", expected=zoo_keys(layer))


def convert_block2(checkpoint: dict) -> dict[str, Tensor]:
    """``convert_checkpoint`` for the block2 entry (a block3 checkpoint is refused, naming its extra keys)."""
    return convert_checkpoint(checkpoint, "block2")


def convert_block3(checkpoint: dict) -> dict[str, Tensor]:
    """``convert_checkpoint`` for the block3 entry."""
    return convert_checkpoint(checkpoint, "block3")


# --- registry -------------------------------------------------------------------------------------------
def build_patch_model(layer: str = "block2", **serving: object) -> PatchXception:
    """``ModelEntry.builder``: the architecture from an entry config (serving keys such as ``preprocess`` and
    ``fake_class`` are the handler's)."""
    return PatchXception(layer)


def _entry(layer: str, grid: int, checkpoint: str, description: str) -> ModelEntry:
    return ModelEntry(
        name=f"patchforensics_{layer}.celebahq_pgan",
        task="image-forensics",
        builder=build_patch_model,
        config={
            "layer": layer,
            "fake_class": FAKE_CLASS,
            "preprocess": Preprocess(resize=INPUT_SIZE, crop=INPUT_SIZE, interpolation="lanczos",
                                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).as_config(),
        },
        handler="handlers.patchforensics_handler",
        inputs={
            "image": "image (JPEG/PNG bytes, multipart field 'image', or base64 in JSON {\"image\": ...}); "
                     "a face crop as in training (resized and centre-cropped to 299x299)",
            "overlay": "optional: true to also get the heatmap drawn over the image as a PNG (default false)",
        },
        outputs=(
            TensorSpec("fake_probability", "FP32", (1,),
                       "mean over patches of the per-patch softmax P(fake) (official 'after softmax')"),
            TensorSpec("heatmap", "FP32", (grid, grid), f"per-patch P(fake), {grid}x{grid} for a 299x299 crop"),
            TensorSpec("patch_grid", "INT32", (2,), "[rows, columns] of the heatmap"),
            TensorSpec("overlay_png", "BYTES", (-1,), "the heatmap over the input as PNG: one element when "
                       "overlay=true, none otherwise"),
        ),
        weights=WeightsSource(
            hf_repo=None,  # no Hugging Face mirror of the official weights is known
            converter=f"zoo.patchforensics:convert_{layer}",
            # "We provide a number of pretrained models here" (official README, Google Drive folder);
            # the checkpoint is `checkpoints/<name>/bestval_net_D.pth` inside it.
            upstream_url="https://drive.google.com/drive/folders/1_LekvsBFE2T9N3Wikkll3xjlogI-cSoH",
            # A browser download (a Drive folder), handed to `zoo pull MODEL --file PATH`; no sha256 is
            # published: the first file is trusted and locked.
            upstream_sha256=None,
            upstream_filename="bestval_net_D.pth",
            manual_download=True,
            sha256_record="none published: trust on first use (zoo/weights_lock.py)",
            description=f"official Patch-Forensics {checkpoint} (CelebA-HQ real vs PGAN fakes)",
        ),
        license="unspecified (chail/patch-forensics has no licence file; ask the authors before redistributing)",
        paper="https://arxiv.org/abs/2008.10588",
        serving=ServingConfig(batch_size=8, max_batch_delay_ms=20, response_timeout_s=120),
        default_serve=False,
        description=description,
    )


PATCHFORENSICS_BLOCK2 = register(_entry(
    "block2", 37, "gp1-gan-winversion_seed0_xception_block2_constant_p20",
    "Patch-Forensics truncated Xception (block2): per-patch real/fake logits, fake probability + heatmap."))
PATCHFORENSICS_BLOCK3 = register(_entry(
    "block3", 19, "gp1-gan-winversion_seed0_xception_block3_constant_p10",
    "Patch-Forensics truncated Xception (block3, larger patches): fake probability + heatmap."))
