"""MutualNet (Yang et al., ECCV 2020, https://arxiv.org/abs/1909.12978): width x resolution at run time.

MutualNet trains one universally slimmable MobileNetV2 whose sub-networks (a fraction ``width`` of every
layer's channels) are fed images at different resolutions, so that at inference the accuracy/cost trade-off
is a per-request choice of (width, resolution) with one set of weights. Official code:
``taoyang1122/MutualNet`` (``models/mobilenet_v2.py``, ``models/slimmable_ops.py``, ``apps/mobilenet_v2.yml``;
MIT). The supernet is built at width 1.0 (``width_mult_range = [0.7, 1.0]``).

Inference, as the official ``train.py::test``:

* the input is the normalised 224x224 evaluation crop, bilinearly resized (``align_corners=True``) to the
  requested resolution *after* normalisation (``resolution_list = [224, 192, 160, 128]``);
* every slimmable conv uses the leading ``c(w)`` output (and input) channels, with
  ``c(w) = ratio * make_divisible(c * w / ratio)`` (divisor 8; ``ratio`` is the expansion factor for the
  expanded layers, so they stay a multiple of their input width); the stem input (3) and the tail output
  (1280) never shrink;
* each slimmable BatchNorm slices the shared affine parameters but keeps **its own running statistics per
  width** in children ``bn.0`` / ``bn.1`` / ``bn.2`` for the widths of ``width_mult_list = [0.7, 0.9, 1.0]``.
  Only those widths have statistics: the official code fails on any other width (``running_mean must be
  defined``), and so does this one (``ValueError``). The tail BatchNorm(1280) is shared by all widths.

Known deviation from the official test protocol: before measuring each (width, resolution), the official
``test()`` re-estimates every BatchNorm's statistics on ImageNet training batches (``ComputePostBN``).
A server has no training data, so the checkpoint's stored per-width statistics are used at every
resolution; accuracy at resolutions other than those the statistics came from may be lower than published.

Preprocessing (``apps/mobilenet_v2.yml``: ``image_resize: 256``, ``image_size: 224``): resize the shorter
side to 256 (bilinear), centre-crop 224, ImageNet mean/std; the resolution switch happens in ``forward``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Knob, Preprocess, classification_entry

WIDTHS = (0.7, 0.9, 1.0)  # official width_mult_list: the widths with their own BatchNorm statistics
RESOLUTIONS = (224, 192, 160, 128)  # official resolution_list
# t (expansion), c (output channels), n (blocks), s (first stride): the MobileNetV2 body
BLOCK_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8, min_value: int = 1) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% down (TF-slim's rule)."""
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def slim_channels(channels: int, width: float, ratio: int = 1) -> int:
    """Channels a slimmable layer of ``channels`` (at width 1.0) uses at ``width`` (official arithmetic)."""
    return int(make_divisible(channels * width / ratio) * ratio)


class SlimConv2d(nn.Conv2d):
    """A conv that uses its leading channels at a given width (official ``USConv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 depthwise: bool = False, slim: tuple[bool, bool] = (True, True),
                 ratio: tuple[int, int] = (1, 1)) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=in_channels if depthwise else 1, bias=False)
        self.depthwise, self.slim, self.ratio = depthwise, slim, ratio

    def forward(self, x: Tensor, width: float) -> Tensor:  # type: ignore[override]
        cin = slim_channels(self.in_channels, width, self.ratio[0]) if self.slim[0] else self.in_channels
        cout = slim_channels(self.out_channels, width, self.ratio[1]) if self.slim[1] else self.out_channels
        weight = self.weight[:cout, :cin]
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, cin if self.depthwise else 1)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """Shared affine parameters sliced per width, running statistics per width (official ``USBatchNorm2d``).

    The parent holds only ``weight``/``bias``; child ``bn[i]`` (affine-free) holds the statistics of
    ``widths[i]``.
    """

    def __init__(self, channels: int, ratio: int = 1, widths: Sequence[float] = WIDTHS) -> None:
        super().__init__(channels, affine=True, track_running_stats=False)
        self.ratio, self.widths = ratio, tuple(widths)
        self.bn = nn.ModuleList(nn.BatchNorm2d(slim_channels(channels, w, ratio), affine=False) for w in widths)

    def forward(self, x: Tensor, width: float) -> Tensor:  # type: ignore[override]
        if width not in self.widths:
            raise ValueError(f"MutualNet has BatchNorm statistics only for widths {self.widths}, not {width}")
        c = slim_channels(self.num_features, width, self.ratio)
        stats = self.bn[self.widths.index(width)]
        return F.batch_norm(x, stats.running_mean[:c], stats.running_var[:c], self.weight[:c], self.bias[:c],
                            False, 0.0, self.eps)


def _run(layers: nn.Sequential, x: Tensor, width: float) -> Tensor:
    """Apply a Sequential, handing ``width`` to the slimmable layers."""
    for layer in layers:
        x = layer(x, width) if isinstance(layer, (SlimConv2d, SlimBatchNorm2d)) else layer(x)
    return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, ReLU6,] 3x3 depthwise, BN, ReLU6, 1x1 project, BN (+ input)."""

    def __init__(self, inp: int, outp: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.residual_connection = stride == 1 and inp == outp
        hidden = inp * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [SlimConv2d(inp, hidden, 1, ratio=(1, expand_ratio)),
                       SlimBatchNorm2d(hidden, ratio=expand_ratio), nn.ReLU6()]
        layers += [SlimConv2d(hidden, hidden, 3, stride, 1, depthwise=True, ratio=(expand_ratio, expand_ratio)),
                   SlimBatchNorm2d(hidden, ratio=expand_ratio), nn.ReLU6(),
                   SlimConv2d(hidden, outp, 1, ratio=(expand_ratio, 1)), SlimBatchNorm2d(outp)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, width: float) -> Tensor:
        out = _run(self.body, x, width)
        return out + x if self.residual_connection else out


class MutualNetMobileNetV2(nn.Module):
    """The width-switchable MobileNetV2 of MutualNet; ``forward(x, width, resolution)``.

    Module names follow the official ``models/mobilenet_v2.py::Model`` (``features.{i}``, ``classifier.0``).
    """

    def __init__(self, num_classes: int = 1000, last_channels: int = 1280) -> None:
        super().__init__()
        self.widths = WIDTHS
        self.last_channels = last_channels
        channels = make_divisible(32)
        features: list[nn.Module] = [nn.Sequential(
            SlimConv2d(3, channels, 3, 2, 1, slim=(False, True)), SlimBatchNorm2d(channels), nn.ReLU6())]
        for t, c, n, s in BLOCK_SETTING:
            outp = make_divisible(c)
            for i in range(n):
                features.append(InvertedResidual(channels, outp, s if i == 0 else 1, t))
                channels = outp
        features.append(nn.Sequential(SlimConv2d(channels, last_channels, 1, slim=(True, False)),
                                      nn.BatchNorm2d(last_channels), nn.ReLU6()))
        features.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation (``reset_parameters: True``); only seen with random weights."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def check(self, width: float, resolution: int) -> None:
        if width not in self.widths:
            raise ValueError(f"width must be one of {self.widths} (the widths with BatchNorm statistics), "
                             f"got {width}")
        if not (isinstance(resolution, int) and resolution >= 32):
            raise ValueError(f"resolution must be an integer >= 32, got {resolution!r}")

    def stages(self, x: Tensor, width: float = 1.0, resolution: int = 224) -> list[Tensor]:
        """The input resized to ``resolution``, then every ``features[i]`` output (for parity checks)."""
        self.check(width, resolution)
        x = F.interpolate(x, (resolution, resolution), mode="bilinear", align_corners=True)
        outs = [x]
        for stage in self.features:
            if isinstance(stage, InvertedResidual):
                x = stage(x, width)
            elif isinstance(stage, nn.Sequential):
                x = _run(stage, x, width)
            else:
                x = stage(x)
            outs.append(x)
        return outs

    def features_of(self, x: Tensor, width: float = 1.0, resolution: int = 224) -> Tensor:
        """Pooled features fed to the classifier, ``[B, 1280]``."""
        return self.stages(x, width, resolution)[-1].flatten(1)

    def forward(self, x: Tensor, width: float = 1.0, resolution: int = 224) -> Tensor:
        """Logits of the ``width`` sub-network for the normalised 224 crop ``x`` resized to ``resolution``."""
        return self.classifier(self.features_of(x, width, resolution))


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (identical to the official ``Model(1000, input_size=224)``'s)."""
    return expected_keys(MutualNetMobileNetV2)


def convert_checkpoint(checkpoint: dict) -> dict[str, Tensor]:
    """Official training checkpoint (``{"model": DataParallel state_dict, "optimizer", "last_epoch"}``) or a
    flat state dict -> zoo layout (the same names without ``module.``). Raises ``WeightsError`` on any
    unknown or missing key, including checkpoints without the per-width BatchNorm statistics."""
    return filter_checkpoint(checkpoint, what="MutualNet MobileNetV2", expected=zoo_keys())


# --- registry -------------------------------------------------------------------------------------------
MUTUALNET_MBV2 = register(classification_entry(
    name="mutualnet_mbv2.in1k",
    architecture=MutualNetMobileNetV2,
    config={"num_classes": 1000},
    preprocess=Preprocess(resize=256, crop=224, interpolation="bilinear"),
    classes="ImageNet-1k classes",  # class indices; the checkpoint carries no names
    knobs=[Knob("width", WIDTHS, 1.0, meaning="the fraction of channels used"),
           Knob("resolution", RESOLUTIONS, 224, meaning="the input resolution")],
    knob_output="the width and resolution that answered",
    weights=WeightsSource(
        hf_repo=None,  # no Hugging Face mirror of the official weights is known
        converter="zoo.mutualnet:convert_checkpoint",
        # "Model weights: [MobileNet v2]" in the official README (Google Drive; BaiduYun mirror, code 4y6m).
        upstream_url="https://drive.google.com/open?id=1GIe5Mpbkc2CptvPbqcEgJtPSoP2WYkNm",
        # A browser download, handed to `zoo pull mutualnet_mbv2 --file PATH`; no sha256 is published: the
        # first file is trusted and locked.
        upstream_sha256=None,
        manual_download=True,
        sha256_record="none published: trust on first use (zoo/weights_lock.py)",
        description="official MutualNet MobileNetV2 (ImageNet-1k); 72.9% top-1 at width 1.0, 224 px",
    ),
    license="MIT",
    paper="https://arxiv.org/abs/1909.12978",
    batch_size=16,
    description="MutualNet width-switchable MobileNetV2; width and input resolution chosen per request.",
))
