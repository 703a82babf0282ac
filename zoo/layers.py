"""Building blocks that several zoo models share, written once so a fix reaches every user.

Module and parameter names are the torchvision ones (``conv1``/``bn1``/.../``downsample.0``/``downsample.1``):
the official checkpoints of every user (CKDN, DETR, iSQRT-COV) use them, so their state-dict layouts do not
change with the block they are built from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Self

from torch import Tensor, nn

# ImageNet channel statistics (torchvision ``Normalize``), used by every model trained on ImageNet crops.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NormLayer = Callable[[int], nn.Module]


class NormalizeConfig:
    """Round trip of a frozen preprocessing dataclass through an entry's JSON config: ``mean``/``std`` are
    tuples in the dataclass and lists in JSON (one place for every preprocessing that normalises)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Self:
        cfg = dict(config or {})
        for key in ("mean", "std"):
            if key in cfg:
                cfg[key] = tuple(float(v) for v in cfg[key])
        return cls(**cfg)

    def as_config(self) -> dict[str, Any]:
        """JSON-friendly form for ``entry.config["preprocess"]``."""
        out = asdict(self)  # type: ignore[call-overload]
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck, post-activation: 1x1 -> 3x3 (with the stride) -> 1x1 (x4), each followed by
    ``norm_layer``; ReLU after the first two and after the residual sum.

    ``downsample`` is the projection shortcut (``resnet_stage`` builds it) or ``None`` for the identity.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def resnet_stage(inplanes: int, planes: int, blocks: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """One ResNet stage (torchvision ``_make_layer``): a first block that projects (1x1 conv with the stride +
    norm) when the stride or the width changes, then ``blocks - 1`` identity blocks.

    The projection is created before the first block, as torchvision does, so seeded random parameters come
    out in torchvision's order."""
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm_layer(out))
    layers = [Bottleneck(inplanes, planes, stride, downsample, norm_layer)]
    layers += [Bottleneck(out, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
