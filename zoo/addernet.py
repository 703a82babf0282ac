"""AdderNet (Chen et al., CVPR 2020, https://arxiv.org/abs/1912.13200): ResNet-20 for CIFAR-10 whose
convolutions are replaced by adder layers.

An adder layer answers with the negative L1 distance between each filter and each input patch instead of
their dot product: ``out[n, f, i, j] = -sum_{c, kh, kw} |W[f, c, kh, kw] - Xpad[n, c, i*s + kh, j*s + kw]|``,
with zero padding (a padded position contributes ``|W|``). Official code: ``huawei-noah/AdderNet``
(``adder.py::adder2d``, ``resnet20.py``; BSD-3-Clause), model ``models/ResNet20-AdderNet.pth`` (91.8% on the
CIFAR-10 test set). The stem ``conv1`` and the classifier ``fc`` (a 1x1 conv after ``AvgPool2d(8)``, followed
by ``bn2``: the logits are BatchNorm outputs) stay ordinary convolutions; every 3x3 conv of the BasicBlocks
and every 1x1 stride-2 downsample is an adder layer. Only the forward pass exists here (the official custom
backward is for training).

Two paths compute the adder layer, with bit-identical results:

* ``reference``: the official formulation: one zero-padded ``unfold`` of the whole batch into
  ``Cin*k*k x positions`` (9x the input for 3x3 layers, per image and per layer, all at once) measured against
  every filter;
* ``lean``: the same distances over bounded chunks of output positions (groups of images, or bands of output
  rows of one image), each unfolded from the padded input rows it needs, so memory stays under
  ``max_temp_bytes`` whatever the batch (at least one output row is taken at a time).

Both measure each (patch, filter) pair with ``torch.cdist(p=1)`` accumulated in float64, whose value for a
pair does not depend on the other pairs in the call, so the chunking cannot change a bit. (The official
``-(W - X).abs().sum(1)`` broadcast would also need a ``Cout x Cin*k*k x positions`` temporary, 2.4 GB for 256
CIFAR images, and a library ``sum`` may change its order with the tensor shape.) The lean path is chosen
automatically when the reference unfold would exceed the budget.

The outputs of an adder layer are large negative numbers that the following BatchNorm re-centres with
statistics of the same magnitude, which half precision cannot resolve: this model runs in float32 or float64
and refuses bf16/fp16 inputs.

Preprocessing: the official test transform is ``ToTensor + Normalize((0.4914, 0.4822, 0.4465),
(0.2023, 0.1994, 0.2010))`` on 32x32 CIFAR images; other images are first resized (shorter side 32, bilinear)
and centre-cropped to 32x32.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Preprocess, classification_entry

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_TEMP_BYTES = 64 * 2**20  # reference unfold size (bytes) above which the lean path runs; its chunk bound

AdderPath = Literal["auto", "reference", "lean"]


# --- the adder layer ------------------------------------------------------------------------------------
def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """The official ``int((H - k + 2p) / s + 1)``."""
    return int((size - kernel + 2 * padding) / stride + 1)


def _neg_l1(patches: Tensor, weight: Tensor) -> Tensor:
    """``[N, L, D]`` patches and ``[F, D]`` filters -> ``[N, F, L]`` negative L1 distances.

    Computed by ``torch.cdist(p=1)``, whose value for one (patch, filter) pair depends only on those two
    vectors, never on how many others share the call: the property that makes the chunked path bit-identical
    to the whole-batch one. Distances are accumulated in float64 and rounded once to the run dtype."""
    acc = torch.float64 if patches.dtype == torch.float32 else patches.dtype
    w = weight.to(acc).expand(patches.shape[0], *weight.shape)
    return torch.cdist(patches.to(acc), w, p=1).transpose(1, 2).neg().to(patches.dtype)


def reference_unfold_bytes(x_shape: torch.Size | tuple[int, ...], w_shape: torch.Size | tuple[int, ...],
                           stride: int, padding: int, itemsize: int) -> int:
    """Bytes the reference path's whole-batch unfold takes (with its float64 working copy)."""
    n, _, h, w = x_shape
    f, c, k, _ = w_shape
    positions = n * output_size(h, k, stride, padding) * output_size(w, k, stride, padding)
    return c * k * k * positions * (itemsize + 8)


def adder2d_reference(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """The official formulation: one zero-padded unfold of the whole batch against all filters."""
    n, c, h, w = x.shape
    f, _, k, _ = weight.shape
    h_out, w_out = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    cols = F.unfold(x, k, padding=padding, stride=stride)  # [N, D, L]: the whole batch at once
    return _neg_l1(cols.transpose(1, 2), weight.reshape(f, -1)).reshape(n, f, h_out, w_out)


def adder2d_lean(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0,
                 max_temp_bytes: int = MAX_TEMP_BYTES) -> Tensor:
    """The same values as ``adder2d_reference``, unfolding only bounded chunks (groups of images, or bands of
    output rows of one image) of at most ``max_temp_bytes``."""
    n, c, h, w = x.shape
    f, _, k, _ = weight.shape
    h_out, w_out = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    w_col = weight.reshape(f, -1)
    per_position = w_col.shape[1] * (x.element_size() + 8)
    budget = max(1, max_temp_bytes // per_position)  # output positions per chunk
    out = x.new_empty(n, f, h_out, w_out)
    xp = F.pad(x, (padding, padding, padding, padding))
    if budget >= h_out * w_out:  # whole images, several at a time
        step = budget // (h_out * w_out)
        for i in range(0, n, step):
            cols = F.unfold(xp[i:i + step], k, stride=stride)
            out[i:i + step] = _neg_l1(cols.transpose(1, 2), w_col).reshape(-1, f, h_out, w_out)
        return out
    rows = max(1, budget // w_out)
    for i in range(n):
        for r0 in range(0, h_out, rows):
            r1 = min(h_out, r0 + rows)
            band = xp[i:i + 1, :, r0 * stride:(r1 - 1) * stride + k]  # the input rows these outputs see
            cols = F.unfold(band, k, stride=stride)
            out[i:i + 1, :, r0:r1] = _neg_l1(cols.transpose(1, 2), w_col).reshape(1, f, r1 - r0, w_out)
    return out


class Adder2d(nn.Module):
    """The official ``adder2d`` (parameter ``adder``, no bias); ``path="auto"`` takes the lean path when the
    reference unfold would exceed ``max_temp_bytes``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.adder = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.path: AdderPath = "auto"
        self.max_temp_bytes = MAX_TEMP_BYTES
        self.last_path: str | None = None  # which path the latest call took (for inspection and tests)

    def choose(self, x: Tensor) -> str:
        if self.path != "auto":
            return self.path
        size = reference_unfold_bytes(x.shape, self.adder.shape, self.stride, self.padding, x.element_size())
        return "reference" if size <= self.max_temp_bytes else "lean"

    def forward(self, x: Tensor) -> Tensor:
        path = self.choose(x)
        self.last_path = path
        if path == "reference":
            return adder2d_reference(x, self.adder, self.stride, self.padding)
        return adder2d_lean(x, self.adder, self.stride, self.padding, self.max_temp_bytes)

    def extra_repr(self) -> str:
        f, c, k, _ = self.adder.shape
        return f"{c}, {f}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


# --- network ------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet BasicBlock with adder 3x3 layers (and an adder 1x1 downsample when the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = Adder2d(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Adder2d(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(Adder2d(inplanes, planes, 1, stride, 0), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AdderResNet20(nn.Module):
    """The official ``resnet20()`` of AdderNet (CIFAR-10); module names follow the official keys."""

    def __init__(self, layers: tuple[int, ...] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes = 16
        for i, (planes, blocks) in enumerate(zip((16, 32, 64), layers, strict=True)):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(inplanes, planes, (1 if i == 0 else 2) if b == 0 else 1))
                inplanes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.fc = nn.Conv2d(64, num_classes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(num_classes)

    def adders(self) -> list[Adder2d]:
        return [m for m in self.modules() if isinstance(m, Adder2d)]

    def set_adder_path(self, path: AdderPath, max_temp_bytes: int | None = None) -> None:
        """Force every adder layer onto one path (``auto`` restores the size-based choice)."""
        for m in self.adders():
            m.path = path
            if max_temp_bytes is not None:
                m.max_temp_bytes = max_temp_bytes

    def pooled(self, x: Tensor) -> Tensor:
        """``avgpool`` output ``[B, 64, 1, 1]`` (the input of ``fc``)."""
        if x.dtype in (torch.float16, torch.bfloat16):
            raise ValueError("AdderNet runs in float32 or float64: its adder outputs (~1e2) and BatchNorm "
                             f"statistics cannot be resolved in {x.dtype}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, 10]`` (``bn2`` outputs) for a normalised ``[B, 3, 32, 32]`` batch."""
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"AdderNet ResNet-20 takes 32x32 inputs (AvgPool2d(8) head), got {tuple(x.shape[-2:])}")
        out = self.bn2(self.fc(self.pooled(x)))
        return out.view(out.shape[0], -1)


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (identical to the official ``resnet20.resnet20()``'s)."""
    return expected_keys(AdderResNet20)


def convert_checkpoint(checkpoint: dict) -> dict[str, Tensor]:
    """Official ``models/ResNet20-AdderNet.pth`` (a ``DataParallel`` state dict: ``module.`` prefixes) or a
    flat state dict -> zoo layout. Raises ``WeightsError`` on any unknown or missing key."""
    return filter_checkpoint(checkpoint, what="AdderNet ResNet-20", expected=zoo_keys())


# --- registry -------------------------------------------------------------------------------------------
ADDERNET_RESNET20 = register(classification_entry(
    name="addernet_resnet20.cifar10",
    architecture=AdderResNet20,
    config={"num_classes": 10},
    preprocess=Preprocess(resize=32, crop=32, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD),
    classes="CIFAR-10 classes",
    labels=CIFAR10_LABELS,
    image_note="resized to 32x32",
    max_top_k=10,
    weights=WeightsSource(
        hf_repo=None,  # no Hugging Face mirror of the official weights is known
        converter="zoo.addernet:convert_checkpoint",
        # The checkpoint was committed to the official repository in d94dc43 ("Add files via upload") and
        # deleted in 92cf25d, so it is fetched at the commit that added it (at 2fb8aad it is gone).
        upstream_url="https://github.com/huawei-noah/AdderNet/raw/d94dc43a0f2a7448c8c38bcf638062de89f2d34d/"
                     "models/ResNet20-AdderNet.pth",
        upstream_sha256="fe3ad7c15573d34cddd9b3ec2eed12d9c2c818e59cd7d0797a954d6f76ea375b",
        upstream_size=1_121_093,
        sha256_record="git blob e26d7084efc00d9333e1b1a736b33708ec170ddc (1,121,093 bytes) of "
                      "models/ResNet20-AdderNet.pth in huawei-noah/AdderNet@d94dc43: the sha256 of that public, "
                      "content-addressed object (`git cat-file -p e26d708 | sha256sum`)",
        description="official AdderNet ResNet-20, CIFAR-10 test accuracy 91.8%",
    ),
    license="BSD-3-Clause",
    paper="https://arxiv.org/abs/1912.13200",
    batch_size=32,
    description="CIFAR-10 ResNet-20 whose convolutions are adder layers (negative L1 distances).",
))
