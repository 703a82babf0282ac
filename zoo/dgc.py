"""Dynamic Group Convolution (Su et al., ECCV 2020, https://arxiv.org/abs/2007.04242): ResNet-18 DGC.

A DGC layer replaces a convolution with ``heads`` groups, each equipped with a small saliency generator
that picks, *per input image*, which input channels the group connects to. Official code:
``hellozhuo/dgc`` (``layers.py::DynamicMultiHeadConv``/``HeadConv``, ``models/dynamic_resnet.py::dyresnet18``;
MIT), ImageNet model ``imagenet_dyresnet18_h4.tar`` (heads 4, gate factor 0.45, squeeze rate 16).

``dyresnet18`` is a torchvision ResNet-18 whose every 3x3 conv in the BasicBlocks and every 1x1
downsample conv is a DGC layer (19 in all). A DGC layer, at inference:

1. ``x = relu(BN(x))`` (its own pre-activation ``norm``; the block's ``bn1``/``bn2`` follow the conv as usual);
2. per head ``j``: saliency ``s_j = relu(fc2_j(relu(fc1_j(avgpool(x)))))`` (``fc1`` without bias, squeeze
   ``C_in / 16``, or ``C_in / 8`` when ``C_in < 80``), one value per input channel;
3. the ``k`` smallest saliencies of each head are zeroed, ``k = _inactive_channels`` (a buffer the training
   schedule sets to ``round(C_in * (1 - gate_factor))``: 35/70/141/282 for C_in 64/128/256/512); ties at the
   threshold are all zeroed (``s <= max of the k smallest``);
4. head ``j`` convolves ``x * s_j`` (the saliency also scales the kept channels) with its own
   ``C_out / heads`` filters; the outputs are interleaved channel-wise (output channel ``c * heads + j``
   comes from head ``j``), as the official grouped conv followed by the transpose does.

The official forward computes each head's full convolution over the zero-masked input (a "coarse
implementation", in its own words); this one does the same, so results match it, and the selection is
exposed for inspection (``forward_details``).

Preprocessing (the official ``main.py`` ImageNet evaluation): resize the shorter side to 256 (bilinear),
centre-crop 224, ImageNet mean/std.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Preprocess, classification_entry


@dataclass
class GateTrace:
    """What one DGC layer selected: per sample, head and input channel."""

    name: str
    lasso: Tensor  # sum over heads of the mean saliency (the official group-lasso term)
    saliency: Tensor  # [B, heads, C_in] before pruning
    gate: Tensor  # [B, heads, C_in] after pruning (0 = channel not used by that head)


class HeadConv(nn.Module):
    """One group of a DGC layer: saliency generator (``fc1``, ``fc2``) and its filters (``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 squeeze_rate: int) -> None:
        super().__init__()
        if in_channels < 80:
            squeeze_rate //= 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.fc1 = nn.Linear(in_channels, in_channels // squeeze_rate, bias=False)
        self.fc2 = nn.Linear(in_channels // squeeze_rate, in_channels, bias=True)

    def saliency(self, pooled: Tensor) -> Tensor:
        """``[B, C_in]`` pooled activations -> non-negative channel saliencies ``[B, C_in]``."""
        return F.relu(self.fc2(F.relu(self.fc1(pooled))))


def prune_smallest(saliency: Tensor, k: int) -> Tensor:
    """Zero each row's ``k`` smallest entries, and every entry tied with the largest of them."""
    if k <= 0:
        return saliency
    threshold = saliency.topk(k, dim=1, largest=False, sorted=False).values.max(dim=1, keepdim=True).values
    return saliency.masked_fill(saliency <= threshold, 0.0)


class DynamicGroupConv(nn.Module):
    """A DGC layer (official ``DynamicMultiHeadConv``): pre-activation, per-head gating, grouped conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 heads: int = 4, squeeze_rate: int = 16, gate_factor: float = 0.45) -> None:
        super().__init__()
        if in_channels % heads or out_channels % heads:
            raise ValueError(f"heads ({heads}) must divide both channel counts ({in_channels}, {out_channels})")
        if not 0.0 <= gate_factor <= 1.0:
            raise ValueError(f"gate_factor must be in [0, 1], got {gate_factor}")
        self.heads, self.stride, self.padding = heads, stride, padding
        self.norm = nn.BatchNorm2d(in_channels)
        for j in range(heads):
            self.add_module(f"headconv_{j}", HeadConv(in_channels, out_channels // heads, kernel_size, stride,
                                                      padding, squeeze_rate))
        # Channels each head drops; trained models hold round(C_in * (1 - gate_factor)) (the value the
        # official schedule reaches at 3/4 of training), which is also the value set here.
        self.register_buffer("_inactive_channels", torch.full((1,), float(round(in_channels * (1 - gate_factor)))))
        self.trace_name = ""

    @property
    def inactive_channels(self) -> int:
        return int(self._inactive_channels[0])

    def head(self, j: int) -> HeadConv:
        return getattr(self, f"headconv_{j}")

    def forward(self, x: Tensor, trace: list[GateTrace] | None = None) -> Tensor:
        x = F.relu(self.norm(x))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        k = self.inactive_channels
        saliencies = [self.head(j).saliency(pooled) for j in range(self.heads)]
        gates = [prune_smallest(s, k) for s in saliencies]
        masked = torch.cat([x * g[:, :, None, None] for g in gates], dim=1)  # [B, heads * C_in, H, W]
        weight = torch.cat([self.head(j).conv.weight for j in range(self.heads)], dim=0)
        out = F.conv2d(masked, weight, None, self.stride, self.padding, 1, self.heads)
        b, c, h, w = out.shape
        out = out.view(b, self.heads, c // self.heads, h, w).transpose(1, 2).reshape(b, c, h, w)
        if trace is not None:
            lasso = sum((s.mean() for s in saliencies), torch.zeros((), dtype=x.dtype, device=x.device))
            trace.append(GateTrace(self.trace_name, lasso, torch.stack(saliencies, 1), torch.stack(gates, 1)))
        return out


class NormAfterDownsample(nn.Module):
    """The BatchNorm after a DGC downsample (its own module in the official model: key ``downsample.1.norm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class BasicBlock(nn.Module):
    """ResNet BasicBlock with DGC convolutions (and a DGC 1x1 downsample when the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int, heads: int, squeeze_rate: int,
                 gate_factor: float) -> None:
        super().__init__()
        dgc = functools.partial(DynamicGroupConv, heads=heads, squeeze_rate=squeeze_rate, gate_factor=gate_factor)
        self.conv1 = dgc(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = dgc(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.ModuleList | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.ModuleList([dgc(inplanes, planes, 1, stride, 0), NormAfterDownsample(planes)])

    def forward(self, x: Tensor, trace: list[GateTrace] | None = None) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x, trace)))
        out = self.bn2(self.conv2(out, trace))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x, trace))
        return F.relu(out + identity)


class DGCResNet(nn.Module):
    """``dyresnet18``: ResNet-18 with Dynamic Group Convolutions. Module names follow the official keys."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, heads: int = 4,
                 squeeze_rate: int = 16, gate_factor: float = 0.45) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(inplanes, planes, stride if b == 0 else 1, heads, squeeze_rate, gate_factor))
                inplanes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(512, num_classes)
        for name, module in self.named_modules():
            if isinstance(module, DynamicGroupConv):
                module.trace_name = name
            if isinstance(module, nn.Conv2d):  # the official initialisation; only seen with random weights
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, HeadConv):
                nn.init.kaiming_normal_(module.fc1.weight)
                nn.init.kaiming_normal_(module.fc2.weight)
                nn.init.constant_(module.fc2.bias, 1.0)

    def _trunk(self, x: Tensor, trace: list[GateTrace] | None) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, trace)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for a normalised ``[B, 3, H, W]`` batch (224x224 as evaluated)."""
        return self.fc(self._trunk(x, None))

    def forward_details(self, x: Tensor) -> tuple[Tensor, Tensor, list[GateTrace]]:
        """(logits, pooled features ``[B, 512]``, one ``GateTrace`` per DGC layer in call order)."""
        trace: list[GateTrace] = []
        feat = self._trunk(x, trace)
        return self.fc(feat), feat, trace


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (identical to the official ``dyresnet18(args)``'s)."""
    return expected_keys(DGCResNet)


def convert_checkpoint(checkpoint: dict) -> dict[str, Tensor]:
    """Official ``imagenet_dyresnet18_h4.tar`` (``{"state_dict": DataParallel state_dict, "epoch", ...}``) or a
    flat state dict -> zoo layout (the same names without ``module.``). Raises ``WeightsError`` on any
    unknown or missing key (``_inactive_channels`` buffers included: they decide the pruning)."""
    return filter_checkpoint(checkpoint, what="DGC dyresnet18", expected=zoo_keys())


# --- registry -------------------------------------------------------------------------------------------
DGC_RESNET18 = register(classification_entry(
    name="dgc_resnet18.in1k",
    architecture=DGCResNet,
    config={"num_classes": 1000, "heads": 4, "squeeze_rate": 16, "gate_factor": 0.45},
    preprocess=Preprocess(resize=256, crop=224, interpolation="bilinear"),
    classes="ImageNet-1k classes",  # class indices; the checkpoint carries no names
    weights=WeightsSource(
        hf_repo=None,  # no Hugging Face mirror of the official weights is known
        converter="zoo.dgc:convert_checkpoint",
        # `imagenet_dyresnet18_h4.tar` (47.2 MB), Google Drive link of the official README (OneDrive and
        # BaiduYun mirrors there too).
        upstream_url="https://drive.google.com/file/d/1rtSU3iUKlA0NhgnUJz-QksW5aL2Lt2Cg/view?usp=sharing",
        # Google Drive: a browser download, handed to `zoo pull dgc_resnet18 --file PATH`. No sha256 is
        # published: the first file is trusted and locked.
        upstream_sha256=None,
        upstream_filename="imagenet_dyresnet18_h4.tar",
        manual_download=True,
        sha256_record="none published: trust on first use (zoo/weights_lock.py)",
        description="official DGC ResNet-18 (heads 4, gate factor 0.45), ImageNet-1k top-1 error 31.22%",
    ),
    license="MIT",
    paper="https://arxiv.org/abs/2007.04242",
    batch_size=16,
    description="ResNet-18 with Dynamic Group Convolution: per-image, per-head input channel selection.",
))
