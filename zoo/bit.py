"""BiT-M R50x1 (Kolesnikov et al., "Big Transfer", ECCV 2020, https://arxiv.org/abs/1912.11370): a
pre-activation ResNet-50 (v2) with GroupNorm and Weight Standardisation, trained on ImageNet-21k.

Official code: ``google-research/big_transfer`` (``bit_pytorch/models.py``; Apache-2.0), weights
``BiT-M-R50x1.npz`` (the upstream ImageNet-21k model, 21,843 classes). Facts that decide the numbers:

* ``StdConv2d``: every body/root conv standardises its weight per output channel before convolving,
  ``w = (w - mean) / sqrt(var + 1e-10)`` over (Cin, kh, kw) with the *biased* variance and eps *1e-10*
  (eps 1e-5 or the unbiased variance change the logits by 4e-2 / 4e-3 on the golden data);
* root: StdConv2d 7x7/2 (pad 3) -> ``ConstantPad2d(1, 0)`` -> ``MaxPool2d(3, 2)``: the pool pads with zeros,
  not -inf (the conv output is not rectified yet, so this differs from ``MaxPool2d(3, 2, padding=1)``);
* ``PreActBottleneck``: ``out = relu(gn1(x))``; the projection (``downsample``, 1x1 with the stride) takes the
  pre-activated ``out``; then conv1 1x1 -> relu(gn2) -> conv2 3x3 (stride here) -> relu(gn3) -> conv3 1x1,
  plus the residual, with no activation after the add. GroupNorm(32, C), eps 1e-5;
* head: GroupNorm -> ReLU -> global average pool -> 1x1 conv 2048 -> 21843 with bias.

Half-precision runs standardise the weights in float32 (a variance of 1e-4-scale weights is not
representable in bf16) and convolve in the run dtype.

Checkpoints: the official ``.npz`` (TF variable names, HWIO kernels, e.g.
``resnet/block1/unit01/a/standardized_conv2d/kernel``; loaded by ``zoo.weights.read_checkpoint``) or the
PyTorch layout of ``bit_pytorch.models.ResNetV2`` (= this module's names).

Preprocessing (the official ``bit_pytorch/train.py`` validation transform): resize to ``crop x crop``
ignoring the aspect ratio (torchvision ``Resize((crop, crop))``, bilinear), then ``(x - 0.5) / 0.5``. The
upstream model is evaluated at 224.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Preprocess, classification_entry

WS_EPS = 1e-10  # official StdConv2d
HEAD_SIZE = 21843  # BiT-M: ImageNet-21k classes
NPZ_PREFIX = "resnet/"


class StdConv2d(nn.Conv2d):
    """Conv2d with weights standardised per output channel (official ``StdConv2d``).

    The official module standardises on every call; without gradients (serving) the standardised weight is
    computed once and reused until the weight changes (new values, dtype or device), which gives the same
    values and saves most of a batch-1 forward on CPU (about 0.23 s of 0.36 s on one thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None

    def standardized_weight(self) -> Tensor:
        w = self.weight
        work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        var, mean = torch.var_mean(work, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return ((work - mean) / torch.sqrt(var + WS_EPS)).to(w.dtype)

    def _weight_for_call(self) -> Tensor:
        if torch.is_grad_enabled():  # training or gradients: the official per-call computation
            self._cache = None
            return self.standardized_weight()
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, torch.is_inference_mode_enabled())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.standardized_weight())
        return self._cache[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self._weight_for_call(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck with the stride on the 3x3 conv and a pre-activated projection."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cin)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, cmid)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.downsample: StdConv2d | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual


class BiTResNetV2(nn.Module):
    """``ResNetV2(block_units, width_factor, head_size=num_classes)`` of ``bit_pytorch``; module names as
    official."""

    def __init__(self, block_units: tuple[int, ...] = (3, 4, 6, 3), width_factor: int = 1,
                 num_classes: int = HEAD_SIZE) -> None:
        super().__init__()
        wf = width_factor
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, 64 * wf, 7, 2, 3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", nn.MaxPool2d(3, 2, 0)),
        ]))
        blocks = []
        cin = 64 * wf
        for b, (units, cmid) in enumerate(zip(block_units, (64, 128, 256, 512), strict=True)):
            cout = cmid * 4 * wf
            unit_list = []
            for u in range(units):
                stride = 2 if (u == 0 and b > 0) else 1
                unit_list.append((f"unit{u + 1:02d}", PreActBottleneck(cin, cout, cmid * wf, stride)))
                cin = cout
            blocks.append((f"block{b + 1}", nn.Sequential(OrderedDict(unit_list))))
        self.body = nn.Sequential(OrderedDict(blocks))
        self.head = nn.Sequential(OrderedDict([
            ("gn", nn.GroupNorm(32, cin)),
            ("relu", nn.ReLU(inplace=True)),
            ("avg", nn.AdaptiveAvgPool2d(1)),
            ("conv", nn.Conv2d(cin, num_classes, 1, bias=True)),
        ]))

    def pooled(self, x: Tensor) -> Tensor:
        """``[B, 2048 * wf]``: the head's pooled features (after its GroupNorm and ReLU), input of ``head.conv``."""
        x = self.body(self.root(x))
        return self.head.avg(self.head.relu(self.head.gn(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for a ``(x - 0.5) / 0.5`` normalised batch (any size; 224 upstream)."""
        x = self.pooled(x)[:, :, None, None]
        return self.head.conv(x)[:, :, 0, 0]


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (identical to the official ``KNOWN_MODELS['BiT-M-R50x1']()``'s)."""
    return expected_keys(BiTResNetV2)


def npz_name(key: str, prefix: str = NPZ_PREFIX) -> str:
    """The official ``.npz`` variable holding a zoo/``bit_pytorch`` state-dict key (``ResNetV2.load_from``)."""
    parts = key.split(".")
    if parts[0] == "root":
        return f"{prefix}root_block/standardized_conv2d/kernel"
    if parts[0] == "head":
        leaf = {"weight": "kernel", "bias": "bias"}[parts[2]] if parts[1] == "conv" else \
            {"weight": "gamma", "bias": "beta"}[parts[2]]
        return f"{prefix}head/conv2d/{leaf}" if parts[1] == "conv" else f"{prefix}group_norm/{leaf}"
    _, block, unit, layer, leaf = parts
    unit_prefix = f"{prefix}{block}/{unit}/"
    if layer == "downsample":
        return f"{unit_prefix}a/proj/standardized_conv2d/kernel"
    sub = "abc"[int(layer[-1]) - 1]
    if layer.startswith("conv"):
        return f"{unit_prefix}{sub}/standardized_conv2d/kernel"
    return f"{unit_prefix}{sub}/group_norm/{ {'weight': 'gamma', 'bias': 'beta'}[leaf] }"


def _tf2th(value: Any) -> Tensor:
    """A TF variable -> torch: HWIO kernels become OIHW (official ``tf2th``); the rest is unchanged."""
    tensor = value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return tensor.permute(3, 2, 0, 1).contiguous() if tensor.ndim == 4 else tensor


def npz_to_state_dict(arrays: Mapping[str, Any], keys: tuple[str, ...], what: str) -> dict[str, Tensor]:
    """TF variables of a BiT ``.npz`` -> the state dict with ``keys`` (``ResNetV2.load_from``'s mapping, HWIO
    kernels transposed to OIHW). Raises ``WeightsError`` naming unknown and missing variables, so a checkpoint
    of another depth, or one without its head, never loads partially; shapes are the strict load's job."""
    wanted = {key: npz_name(key) for key in keys}
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
               for name, value in arrays.items()}
    variables = filter_checkpoint(tensors, what=f"{what} npz", expected=wanted.values(), unwrap=(), strip=())
    return {key: _tf2th(variables[name]).float() for key, name in wanted.items()}


def convert_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official BiT weights -> zoo layout: the ``BiT-M-R50x1.npz`` variables (``resnet/...``, HWIO; read by
    ``zoo.weights.read_checkpoint``) or a ``bit_pytorch`` state dict. Fails loudly on anything that does not
    fit (``WeightsError``)."""
    if not any("/" in str(k) for k in checkpoint):
        return filter_checkpoint(checkpoint, what="BiT-M R50x1", expected=zoo_keys())
    return npz_to_state_dict(checkpoint, zoo_keys(), "BiT-M R50x1")


# --- registry -------------------------------------------------------------------------------------------
BIT_M_R50X1 = register(classification_entry(
    name="bit_m_r50x1.in21k",
    architecture=BiTResNetV2,
    config={"block_units": [3, 4, 6, 3], "width_factor": 1, "num_classes": HEAD_SIZE},
    preprocess=Preprocess(resize=224, crop=224, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          square=True),
    classes="ImageNet-21k class indices",  # the npz carries no names
    image_note="resized to 224x224",
    weights=WeightsSource(
        hf_repo=None,  # the Hub's BiT copies use timm's layout, not the official one
        converter="zoo.bit:convert_checkpoint",
        upstream_url="https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz",
        # No public record of its sha256 was found (Google publishes none; timm's Hub copies are another
        # file, in timm's layout): `zoo pull` trusts the first download and locks it.
        upstream_sha256=None,
        sha256_record="none published: trust on first use (zoo/weights_lock.py)",
        description="official BiT-M R50x1 upstream model (ImageNet-21k, 21,843 classes)",
    ),
    license="Apache-2.0",
    paper="https://arxiv.org/abs/1912.11370",
    description="BiT-M R50x1: ResNetV2-50 with GroupNorm + Weight Standardisation, ImageNet-21k head.",
))
