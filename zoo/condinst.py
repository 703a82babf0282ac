"""CondInst R50-FPN (Tian, Shen, Chen, "Conditional Convolutions for Instance Segmentation", ECCV 2020,
https://arxiv.org/abs/2003.05664): an FCOS detector whose head also predicts, per location, the 169
parameters of a tiny 3-layer 1x1-conv network that segments that location's instance from a shared
mask-branch map.

Official code: ``aim-uofa/AdelaiDet`` @ 36721221 (NON-COMMERCIAL licence) on ``facebookresearch/detectron2``
(Apache-2.0), config ``configs/CondInst/MS_R_50_1x.yaml`` (= ``MS_R_50_3x.yaml`` but for the schedule).
Facts that decide the numbers (tests/data/golden/zoo3/README_condinst.md section 8):

* backbone: detectron2 ResNet-50, ``FrozenBN`` (``F.batch_norm`` in eval, eps 1e-5), **stride in the first
  1x1 conv** of a stage (``STRIDE_IN_1X1``, MSRA weights), stem max-pool 3/2/1, a projection shortcut in
  block 0 of every stage (res2 included); FPN on res3..res5 (nearest x2 top-down, sum), plus
  ``LastLevelP6P7`` on **p5**: ``p6 = conv(p5)``, ``p7 = conv(relu(p6))``. Inputs are zero-padded (in
  normalised space) to multiples of 32;
* FCOS head: 4 x (conv3x3 -> GN(32) -> ReLU) towers shared over levels; ``cls_logits`` on the cls tower;
  ``ctrness``, ``relu(scale_l * bbox_pred)`` and the ``controller`` (169 dynamic parameters) on the bbox tower;
* candidates per level: ``sigmoid(cls) * sigmoid(ctr) > th`` (location-major, then class: ``nonzero`` order),
  at most 1000 per level (``topk(sorted=False)``), score ``sqrt`` of that product, boxes
  ``loc -/+ ltrb * stride`` cast to float32 (detectron2 ``Boxes``);
* class-aware NMS (IoU 0.6) as torchvision's CPU kernel, via ``batched_nms`` (coordinate trick up to 1000
  boxes, per-class loop above), then at most 100 per image by ``kthvalue`` of the scores;
* mask branch: refine p3/p4/p5 (conv3x3+BN+ReLU, 128 ch), ``aligned_bilinear`` p4 x2 / p5 x4, sum,
  4 x (conv3x3+BN+ReLU) + conv1x1 -> 8 channels at stride 8;
* dynamic head: input ``[rel_x, rel_y, mask_feats]`` with ``rel = (instance location - grid centre) /
  sizes_of_interest[level]`` in float32; parameters split as ``[w0 80, w1 64, w2 8, b0 8, b1 8, b2 1]``
  (all weights, then all biases); 1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv as one grouped conv;
  ``aligned_bilinear`` x2 -> sigmoid (stride-4 probabilities);
* postprocess: boxes scaled to the output size, clipped, empty ones dropped; masks ``aligned_bilinear`` x4
  on **probabilities**, cropped to the resized image, bilinear (align_corners False) to the output size,
  ``> 0.5``.

The zoo state-dict layout is the official one (detectron2 names) without training-only tensors
(``TRAINING_ONLY_KEYS``). File order: blocks -> model -> pre/post-processing -> converter -> registry.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import TrainingOnly, filter_checkpoint
from zoo.detr import COCO_CATEGORY_NAMES
from zoo.tensors import TensorSpec

__all__ = [
    "COCO_CONTIGUOUS_IDS",
    "CONDINST_R50_CONFIG",
    "CondInst",
    "InstancePredictions",
    "aligned_bilinear",
    "batched_nms",
    "build_condinst",
    "convert_detectron2",
    "decode_rle",
    "fcos_candidates",
    "mask_probabilities",
    "nms",
    "postprocess",
    "predict",
    "preprocess",
    "select_over_all_levels",
    "to_coco_instances",
]

FPN_LEVELS = ("p3", "p4", "p5", "p6", "p7")
FPN_STRIDES = (8, 16, 32, 64, 128)
SIZE_DIVISIBILITY = 32  # FPN: the stride of its coarsest input (res5)
# BGR, as the config (MODEL.PIXEL_MEAN/STD, INPUT.FORMAT "BGR"). The official model keeps them as float32
# tensors (not buffers) that ``.double()`` never touches, so a float64 run subtracts these float32 values.
PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
PIXEL_STD_BGR = (1.0, 1.0, 1.0)
MIN_SIZE_TEST = 800
MAX_SIZE_TEST = 1333
MASK_THRESHOLD = 0.5


# =====================================================================================================
# Blocks
# =====================================================================================================


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: detectron2's ``FrozenBatchNorm2d`` without gradients, which is
    ``F.batch_norm(training=False, eps=1e-5)`` (not the folded scale/bias path it takes with gradients).

    Also stands in for the mask branch's ``nn.BatchNorm2d``, whose eval forward is the same call; its
    ``num_batches_tracked`` counter only matters in training and is not part of the zoo layout."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ConvNorm(nn.Conv2d):
    """detectron2's ``layers.Conv2d``: a conv followed by its own ``.norm`` (the key layout
    ``<conv>.weight`` + ``<conv>.norm.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride, padding, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups))


class BottleneckBlock(nn.Module):
    """detectron2 ``BottleneckBlock`` with ``stride_in_1x1=True``: the stride sits on ``conv1``."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, cmid, 1, stride)
        self.conv2 = ConvNorm(cmid, cmid, 3, 1, 1)
        self.conv3 = ConvNorm(cmid, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BasicStem(nn.Module):
    """conv 7x7/2 (FrozenBN) -> ReLU -> max-pool 3/2 with padding 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """detectron2 ResNet (``build_resnet_backbone``), returning res3..res5."""

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = BasicStem()
        cin, cmid = 64, 64
        for index, depth in enumerate(depths):
            cout = cmid * 4
            blocks = []
            for b in range(depth):
                blocks.append(BottleneckBlock(cin, cout, cmid, 2 if (b == 0 and index > 0) else 1))
                cin = cout
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))
            cmid *= 2

    def forward(self, x: Tensor, trace: dict[str, Any] | None = None) -> dict[str, Tensor]:
        x = self.stem(x)
        if trace is not None:
            trace["stem"] = x
        out = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            if name != "res2":
                out[name] = x
        return out


class LastLevelP6P7(nn.Module):
    """AdelaiDet's ``LastLevelP6P7`` on p5: ``p6 = conv(p5)``, ``p7 = conv(relu(p6))`` (3x3, stride 2)."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: Tensor) -> list[Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """detectron2 ``FPN`` on res3..res5 (no norm, sum fusion) with ``LastLevelP6P7`` on p5."""

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3), channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = ResNet(depths)
        for stage, cin in zip((3, 4, 5), (512, 1024, 2048), strict=True):
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(cin, channels, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(channels, channels, 3, 1, 1))
        self.top_block = LastLevelP6P7(channels)

    def forward(self, x: Tensor, trace: dict[str, Any] | None = None) -> dict[str, Tensor]:
        bottom_up = self.bottom_up(x, trace)
        if trace is not None:
            trace.update(bottom_up)
        prev = self.fpn_lateral5(bottom_up["res5"])
        results = [self.fpn_output5(prev)]
        for stage in (4, 3):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(bottom_up[f"res{stage}"]) + top_down
            results.insert(0, getattr(self, f"fpn_output{stage}")(prev))
        results.extend(self.top_block(results[-1]))
        return dict(zip(FPN_LEVELS, results, strict=True))


class Scale(nn.Module):
    """A learnt per-level scalar (FCOS ``Scale``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class HeadOutputs(NamedTuple):
    """Per-level FCOS head maps (lists over p3..p7, each ``[B, C, H_l, W_l]``)."""

    logits: list[Tensor]  # class logits (80), pre-sigmoid
    bbox_reg: list[Tensor]  # relu(scale_l * bbox_pred): ltrb in stride units
    ctrness: list[Tensor]  # centerness logits
    top_feats: list[Tensor]  # controller output: 169 dynamic mask-head parameters


class FCOSHead(nn.Module):
    """AdelaiDet ``FCOSHead`` as configured for CondInst (GN towers, no shared tower, scales on)."""

    def __init__(self, num_classes: int = 80, channels: int = 256, num_convs: int = 4, num_levels: int = 5) -> None:
        super().__init__()
        for head in ("cls", "bbox"):
            tower: list[nn.Module] = []
            for _ in range(num_convs):
                tower += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(32, channels), nn.ReLU()]
            self.add_module(f"{head}_tower", nn.Sequential(*tower))
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)])

    def forward(self, features: Sequence[Tensor], controller: nn.Module) -> HeadOutputs:
        out = HeadOutputs([], [], [], [])
        for level, feature in enumerate(features):
            cls_tower = self.cls_tower(feature)
            bbox_tower = self.bbox_tower(feature)
            out.logits.append(self.cls_logits(cls_tower))
            out.ctrness.append(self.ctrness(bbox_tower))
            out.bbox_reg.append(F.relu(self.scales[level](self.bbox_pred(bbox_tower))))
            out.top_feats.append(controller(bbox_tower))
        return out


class ProposalGenerator(nn.Module):
    """Holds ``fcos_head`` so the keys read ``proposal_generator.fcos_head.*`` as in the official model."""

    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.fcos_head = FCOSHead(num_classes)


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """AdelaiDet's ``aligned_bilinear``: upsample by an integer factor so that output pixel centres line up
    with the input's at stride ``factor`` (replicate-pad 1 bottom/right, align_corners bilinear to
    ``factor*h+1``, replicate-pad ``factor//2`` top/left, crop to ``factor*h``)."""
    if x.dim() != 4 or factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs a 4-d tensor and an integer factor >= 1, got {x.dim()}-d, {factor}")
    if factor == 1:
        return x
    h, w = x.shape[2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : oh - 1, : ow - 1]


class ConvBNReLU(nn.Sequential):
    """``conv_with_kaiming_uniform("BN", activation=True)``: conv (no bias) -> BN -> ReLU, keys ``.0``/``.1``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), FrozenBatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    """CondInst ``MaskBranch``: p3/p4/p5 refined and summed at stride 8, then a 4-conv tower to 8 channels."""

    def __init__(self, in_channels: int = 256, channels: int = 128, out_channels: int = 8, num_convs: int = 4) -> None:
        super().__init__()
        self.refine = nn.ModuleList([ConvBNReLU(in_channels, channels) for _ in range(3)])
        self.tower = nn.Sequential(*[ConvBNReLU(channels, channels) for _ in range(num_convs)],
                                   nn.Conv2d(channels, out_channels, 1))
        self.out_stride = FPN_STRIDES[0]

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x = self.refine[0](features["p3"])
        for refine, name in zip(self.refine[1:], ("p4", "p5"), strict=True):
            x_p = refine(features[name])
            factor_h, factor_w = x.shape[2] // x_p.shape[2], x.shape[3] // x_p.shape[3]
            if factor_h != factor_w or x.shape[2] % x_p.shape[2] or x.shape[3] % x_p.shape[3]:
                raise ValueError(f"mask branch: {name} {tuple(x_p.shape[2:])} does not divide p3 {tuple(x.shape[2:])}")
            x = x + aligned_bilinear(x_p, factor_h)
        return self.tower(x)


def compute_locations(h: int, w: int, stride: int, device: torch.device | str = "cpu") -> Tensor:
    """``[h*w, 2]`` float32 (x, y) centres of a stride-``stride`` grid, row-major (AdelaiDet ``compute_locations``)."""
    xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


class DynamicMaskHead(nn.Module):
    """CondInst's dynamic mask head: per instance, a 3-layer 1x1-conv net whose 169 parameters come from the
    controller. ``sizes_of_interest`` (the FCOS ranges plus twice the last) normalises the relative coords."""

    def __init__(self, in_channels: int = 8, channels: int = 8, num_layers: int = 3,
                 sizes_of_interest: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.in_channels, self.channels = in_channels, channels
        self.weight_nums, self.bias_nums = [], []
        for layer in range(num_layers):
            cin = in_channels + 2 if layer == 0 else channels
            cout = 1 if layer == num_layers - 1 else channels
            self.weight_nums.append(cin * cout)
            self.bias_nums.append(cout)
        self.num_gen_params = sum(self.weight_nums) + sum(self.bias_nums)
        soi = list(sizes_of_interest)
        self.register_buffer("sizes_of_interest", torch.tensor(soi + [soi[-1] * 2]))

    def relative_coords(self, locations: Tensor, fpn_levels: Tensor, h: int, w: int, stride: int) -> Tensor:
        """``[n, 2, h*w]`` float32: (instance location - grid centre) / sizes_of_interest[level]."""
        grid = compute_locations(h, w, stride, locations.device)
        rel = (locations.reshape(-1, 1, 2) - grid.reshape(1, -1, 2)).permute(0, 2, 1).float()
        soi = self.sizes_of_interest.float()[fpn_levels]
        return rel / soi.reshape(-1, 1, 1)

    def parse_params(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``[n, 169]`` -> grouped-conv weights ``[n*out, in, 1, 1]`` and biases ``[n*out]`` per layer."""
        n, layers = params.shape[0], len(self.weight_nums)
        splits = list(torch.split_with_sizes(params, self.weight_nums + self.bias_nums, dim=1))
        weights, biases = splits[:layers], splits[layers:]
        for layer in range(layers):
            cout = 1 if layer == layers - 1 else self.channels
            weights[layer] = weights[layer].reshape(n * cout, -1, 1, 1)
            biases[layer] = biases[layer].reshape(n * cout)
        return weights, biases

    def forward(self, mask_feats: Tensor, params: Tensor, locations: Tensor, fpn_levels: Tensor,
                stride: int) -> Tensor:
        """Mask logits ``[n, 1, H, W]`` at the mask-branch resolution for one image's instances
        (``mask_feats`` ``[1, C, H, W]``); the official grouped conv, one group per instance."""
        n = params.shape[0]
        _, _, h, w = mask_feats.shape
        if n == 0:
            return mask_feats.new_zeros((0, 1, h, w))
        rel = self.relative_coords(locations, fpn_levels, h, w, stride).to(mask_feats.dtype)
        x = torch.cat([rel, mask_feats.reshape(1, self.in_channels, h * w).expand(n, -1, -1)], dim=1)
        x = x.reshape(1, -1, h, w)
        weights, biases = self.parse_params(params)
        for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            x = F.conv2d(x, weight, bias=bias, groups=n)
            if layer < len(weights) - 1:
                x = F.relu(x)
        return x.reshape(-1, 1, h, w)


# =====================================================================================================
# FCOS inference (candidates, NMS) as AdelaiDet's FCOSOutputs + torchvision's CPU NMS
# =====================================================================================================


class Candidates(NamedTuple):
    """Detections of one image (pre- or post-NMS), in the official order."""

    boxes: Tensor  # [n, 4] float32 x1y1x2y2 in input (padded-frame) pixels
    scores: Tensor  # [n] sqrt(sigmoid(cls) * sigmoid(ctr)), model dtype
    classes: Tensor  # [n] int64, contiguous 0..79
    locations: Tensor  # [n, 2] float32 (x, y) of the location that predicted it
    fpn_levels: Tensor  # [n] int64, 0..4 for p3..p7
    loc_index: Tensor  # [n] int64, y * W_l + x within the level
    top_feat: Tensor  # [n, 169] dynamic mask-head parameters, model dtype

    def select(self, index: Tensor) -> Candidates:
        return Candidates(*(t[index] for t in self))

    @staticmethod
    def cat(parts: Sequence[Candidates]) -> Candidates:
        return Candidates(*(torch.cat(ts) for ts in zip(*parts, strict=True)))


def fcos_candidates(head: HeadOutputs, strides: Sequence[int] = FPN_STRIDES, score_thresh: float = 0.05,
                    pre_nms_topk: int = 1000) -> list[Candidates]:
    """Per image, the candidates of all levels (``FCOSOutputs.forward_for_single_feature_map`` with
    ``THRESH_WITH_CTR``): threshold on ``sigmoid(cls) * sigmoid(ctr)``, at most ``pre_nms_topk`` per level."""
    per_level: list[list[Candidates]] = []
    for level, (logits, reg, ctr, top) in enumerate(zip(*head, strict=True)):
        n, c, h, w = logits.shape
        stride = strides[level]
        locations = compute_locations(h, w, stride, logits.device)
        probs = logits.permute(0, 2, 3, 1).reshape(n, -1, c).sigmoid()
        box_reg = (reg * stride).permute(0, 2, 3, 1).reshape(n, -1, 4)
        ctrness = ctr.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()
        top_feat = top.permute(0, 2, 3, 1).reshape(n, h * w, -1)
        probs = probs * ctrness[:, :, None]
        candidate_inds = probs > score_thresh
        top_n = candidate_inds.reshape(n, -1).sum(1).clamp(max=pre_nms_topk)
        images = []
        for i in range(n):
            per_cls = probs[i][candidate_inds[i]]
            nonzero = candidate_inds[i].nonzero()
            loc, cls = nonzero[:, 0], nonzero[:, 1]
            if candidate_inds[i].sum().item() > top_n[i].item():
                per_cls, keep = per_cls.topk(int(top_n[i]), sorted=False)
                loc, cls = loc[keep], cls[keep]
            r, xy = box_reg[i][loc], locations[loc]
            boxes = torch.stack([xy[:, 0] - r[:, 0], xy[:, 1] - r[:, 1], xy[:, 0] + r[:, 2], xy[:, 1] + r[:, 3]], dim=1)
            images.append(Candidates(boxes.float(), torch.sqrt(per_cls), cls, xy,
                                     torch.full_like(cls, level), loc, top_feat[i][loc]))
        per_level.append(images)
    return [Candidates.cat(parts) for parts in zip(*per_level, strict=True)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's CPU ``nms`` kernel in torch ops: same sort call (so ties break alike), IoU in the boxes'
    dtype as ``inter / ((area_i + area_j) - inter)``, suppression when the IoU, promoted to double, is
    ``> iou_threshold``. Returns kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = (boxes[:, k].contiguous() for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(0, descending=True)[1]
    x1, y1, x2, y2, areas = x1[order], y1[order], x2[order], y2[order], areas[order]
    zero = boxes.new_zeros(())
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for pos in range(len(order)):
        if suppressed[pos]:
            continue
        keep.append(pos)
        rest = slice(pos + 1, None)
        w = torch.maximum(zero, torch.minimum(x2[pos], x2[rest]) - torch.maximum(x1[pos], x1[rest]))
        h = torch.maximum(zero, torch.minimum(y2[pos], y2[rest]) - torch.maximum(y1[pos], y1[rest]))
        inter = w * h
        ovr = inter / (areas[pos] + areas[rest] - inter)
        suppressed[rest] |= ovr.double() > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision ``batched_nms`` (as detectron2 calls it, boxes in float32) with its CPU rules on any device:
    the coordinate-offset trick up to 4000 box coordinates, else NMS per class with the kept indices
    re-sorted by score. Runs on the CPU (a sequential loop; a GPU would only add a sync per box)."""
    device = boxes.device
    return _batched_nms_cpu(boxes.detach().float().cpu(), scores.detach().cpu(), idxs.cpu(), iou_threshold).to(device)


def _batched_nms_cpu(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            current = torch.where(idxs == class_id)[0]
            keep_mask[current[nms(boxes[current], scores[current], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def select_over_all_levels(candidates: Candidates, nms_thresh: float = 0.6,
                           post_nms_topk: int = 100) -> tuple[Candidates, Tensor]:
    """Class-aware NMS (``ml_nms``) and the per-image cap (``kthvalue``; ties at the cut are all kept, as
    official). Returns the kept detections and their indices into ``candidates``."""
    keep = batched_nms(candidates.boxes, candidates.scores, candidates.classes, nms_thresh)
    if post_nms_topk > 0 and len(keep) > post_nms_topk:
        scores = candidates.scores[keep]
        image_thresh, _ = torch.kthvalue(scores.cpu(), len(keep) - post_nms_topk + 1)
        keep = keep[torch.nonzero(scores >= image_thresh.item()).squeeze(1)]
    return candidates.select(keep), keep


# =====================================================================================================
# Model
# =====================================================================================================


class InstancePredictions(NamedTuple):
    """One image's instances before postprocessing (input-frame pixels, stride-4 mask probabilities)."""

    boxes: Tensor  # [n, 4] float32
    scores: Tensor  # [n]
    classes: Tensor  # [n] int64, contiguous 0..79
    locations: Tensor  # [n, 2] float32
    fpn_levels: Tensor  # [n] int64
    top_feat: Tensor  # [n, 169]
    mask_logits: Tensor  # [n, 1, Hp/8, Wp/8] dynamic-head output at the mask-branch stride
    mask_probs: Tensor  # [n, 1, Hp/4, Wp/4] sigmoid(aligned_bilinear(mask_logits, 2)) ("pred_global_masks")


class CondInst(nn.Module):
    """CondInst with an R50-FPN backbone; module names as the official model's (detectron2 layout)."""

    def __init__(self, num_classes: int = 80, depths: Sequence[int] = (3, 4, 6, 3), score_thresh: float = 0.05,
                 pre_nms_topk: int = 1000, nms_thresh: float = 0.6, post_nms_topk: int = 100,
                 mask_out_stride: int = 4, sizes_of_interest: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_thresh, self.pre_nms_topk = score_thresh, pre_nms_topk
        self.nms_thresh, self.post_nms_topk = nms_thresh, post_nms_topk
        self.mask_out_stride = mask_out_stride
        self.backbone = FPN(depths)
        self.proposal_generator = ProposalGenerator(num_classes)
        self.mask_head = DynamicMaskHead(sizes_of_interest=sizes_of_interest)
        self.mask_branch = MaskBranch()
        self.controller = nn.Conv2d(256, self.mask_head.num_gen_params, 3, 1, 1)

    def forward(self, images: Tensor, trace: dict[str, Any] | None = None) -> list[InstancePredictions]:
        """Instances per image of a normalised, zero-padded batch ``[B, 3, H, W]`` (H, W multiples of 32).

        ``trace`` (optional dict) receives the intermediates: ``stem``, ``res3..5``, ``features``, ``head``,
        ``mask_feats``, ``candidates`` (pre-NMS, per image) and ``nms_keep`` (per image)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CondInst takes a [B, 3, H, W] batch, got shape {tuple(images.shape)}")
        h, w = images.shape[2:]
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(f"input height and width must be multiples of {SIZE_DIVISIBILITY} "
                             f"(zero-pad with pad_batch), got {h}x{w}")
        features = self.backbone(images, trace)
        head = self.proposal_generator.fcos_head([features[f] for f in FPN_LEVELS], self.controller)
        mask_feats = self.mask_branch(features)
        candidates = fcos_candidates(head, FPN_STRIDES, self.score_thresh, self.pre_nms_topk)
        if trace is not None:
            trace.update(features=features, head=head, mask_feats=mask_feats, candidates=candidates, nms_keep=[])
        out = []
        for i, per_image in enumerate(candidates):
            kept, keep = select_over_all_levels(per_image, self.nms_thresh, self.post_nms_topk)
            if trace is not None:
                trace["nms_keep"].append(keep)
            logits = self.mask_head(mask_feats[i:i + 1], kept.top_feat, kept.locations, kept.fpn_levels,
                                    self.mask_branch.out_stride)
            probs = aligned_bilinear(logits, self.mask_branch.out_stride // self.mask_out_stride).sigmoid()
            out.append(InstancePredictions(kept.boxes, kept.scores, kept.classes, kept.locations, kept.fpn_levels,
                                           kept.top_feat, logits, probs))
        return out


CONDINST_R50_CONFIG: dict[str, Any] = {
    "num_classes": 80,
    "depths": [3, 4, 6, 3],
    "score_thresh": 0.05,  # MODEL.FCOS.INFERENCE_TH_TEST
    "pre_nms_topk": 1000,
    "nms_thresh": 0.6,
    "post_nms_topk": 100,
    "mask_out_stride": 4,
    "sizes_of_interest": [64, 128, 256, 512],
}


def build_condinst(**config: Any) -> CondInst:
    """CondInst from config kwargs (defaults: MS_R_50_1x); random parameters. Serving-only keys are ignored."""
    known = {k: v for k, v in {**CONDINST_R50_CONFIG, **config}.items() if k in CONDINST_R50_CONFIG}
    return CondInst(**known)


# =====================================================================================================
# Pre- and post-processing (the official test path: DatasetMapper + CondInst.postprocess)
# =====================================================================================================

# contiguous class index (0..79, detectron2's COCO metadata) -> COCO category id; ids in ascending order
COCO_CONTIGUOUS_IDS: tuple[int, ...] = tuple(i for i, name in enumerate(COCO_CATEGORY_NAMES) if name != "N/A")
assert len(COCO_CONTIGUOUS_IDS) == 80


def resized_size(h: int, w: int, short: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST) -> tuple[int, int]:
    """``(new_h, new_w)`` of detectron2's ``ResizeShortestEdge.get_output_shape``: short side to ``short``,
    scaled down so the long side is at most ``max_size``, each side rounded with ``int(x + 0.5)``."""
    scale = short / min(h, w)
    newh, neww = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def normalize_bgr(image_bgr_chw: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(image - mean) / std`` with the config's BGR mean/std as float32 constants (official ``normalizer``)."""
    mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32).view(3, 1, 1).to(dtype)
    std = torch.tensor(PIXEL_STD_BGR, dtype=torch.float32).view(3, 1, 1).to(dtype)
    return (image_bgr_chw.to(dtype) - mean) / std


class PreparedImage(NamedTuple):
    image: Tensor  # [3, h, w] normalised BGR (not padded)
    image_size: tuple[int, int]  # (h, w) after the test resize
    original_size: tuple[int, int]  # (H, W) of the decoded image: outputs are in this frame


def preprocess(image: Image.Image | np.ndarray, min_size: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST,
               dtype: torch.dtype = torch.float32) -> PreparedImage:
    """The official test input: a PIL image (EXIF-rotated and converted to RGB, as detectron2's
    ``read_image``) or an RGB uint8 ``[H, W, 3]`` array, resized with ``ResizeShortestEdge(min_size,
    max_size)`` (PIL bilinear on uint8), flipped to BGR and normalised. ``min_size=0`` skips the resize."""
    if isinstance(image, Image.Image):
        array = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
    oh, ow = array.shape[:2]
    if oh < 1 or ow < 1:
        raise ValueError(f"empty image ({ow}x{oh})")
    if min_size:
        nh, nw = resized_size(oh, ow, min_size, max_size)
        if nh < 1 or nw < 1:
            raise ValueError(f"image {ow}x{oh} is too elongated: the test resize (short side {min_size}, long side "
                             f"at most {max_size}) leaves a side of 0 pixels")
        if (nh, nw) != (oh, ow):
            array = np.asarray(Image.fromarray(array).resize((nw, nh), Image.Resampling.BILINEAR))
    bgr = torch.from_numpy(np.ascontiguousarray(array[:, :, ::-1].transpose(2, 0, 1)))
    return PreparedImage(normalize_bgr(bgr, dtype), (int(array.shape[0]), int(array.shape[1])), (oh, ow))


def pad_batch(images: Sequence[Tensor], divisibility: int = SIZE_DIVISIBILITY) -> Tensor:
    """detectron2 ``ImageList.from_tensors``: zero-pad bottom/right to the largest size, rounded up to a
    multiple of ``divisibility``."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    hp = max(int(t.shape[1]) for t in images)
    wp = max(int(t.shape[2]) for t in images)
    hp, wp = (-(-hp // divisibility) * divisibility, -(-wp // divisibility) * divisibility)
    batch = images[0].new_zeros((len(images), 3, hp, wp))
    for i, t in enumerate(images):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch


class Segmentation(NamedTuple):
    """Final instances of one image in the output frame (``CondInst.postprocess``)."""

    boxes: Tensor  # [k, 4] float32 x1y1x2y2, scaled and clipped
    scores: Tensor  # [k]
    classes: Tensor  # [k] int64 contiguous
    masks: Tensor  # [k, H, W] bool
    keep: Tensor  # [k] index of each into the InstancePredictions (empty boxes dropped)


def postprocess(pred: InstancePredictions, image_size: tuple[int, int], padded_size: tuple[int, int],
                output_size: tuple[int, int], mask_threshold: float = MASK_THRESHOLD,
                chunk: int = 16) -> Segmentation:
    """``CondInst.postprocess``: boxes scaled from the resized ``image_size`` to ``output_size`` (H, W) and
    clipped, empty boxes dropped; masks upsampled from stride 4 with ``aligned_bilinear`` (factor
    ``padded_h // mask_h``), cropped to ``image_size``, bilinearly resized to ``output_size``, ``> threshold``.
    Instances are processed ``chunk`` at a time (each mask is independent, so the values do not change)."""
    out_h, out_w = output_size
    rh, rw = image_size
    boxes = pred.boxes.clone()
    boxes[:, 0::2] *= out_w / rw
    boxes[:, 1::2] *= out_h / rh
    if not torch.isfinite(boxes).all():
        raise ValueError("box tensor contains infinite or NaN values")
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = torch.nonzero((boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)).squeeze(1)
    probs = pred.mask_probs[keep]
    masks = torch.zeros((len(keep), out_h, out_w), dtype=torch.bool, device=probs.device)
    for start in range(0, len(keep), chunk):
        full = mask_probabilities(probs[start:start + chunk], image_size, padded_size, output_size)
        masks[start:start + chunk] = full > mask_threshold
    return Segmentation(boxes[keep], pred.scores[keep], pred.classes[keep], masks, keep)


def mask_probabilities(mask_probs: Tensor, image_size: tuple[int, int], padded_size: tuple[int, int],
                       output_size: tuple[int, int]) -> Tensor:
    """``[n, H, W]`` mask probabilities in the output frame, before the threshold (``CondInst.postprocess``):
    ``aligned_bilinear`` by ``padded_h // mask_h`` on the stride-4 probabilities, crop to the resized image,
    bilinear (align_corners False) to ``output_size``."""
    mask_h, mask_w = mask_probs.shape[-2:]
    factor_h, factor_w = padded_size[0] // mask_h, padded_size[1] // mask_w
    if factor_h != factor_w:
        raise ValueError(f"padded size {padded_size} and mask size {(mask_h, mask_w)} give unequal factors")
    up = aligned_bilinear(mask_probs, factor_h)[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(up, size=tuple(output_size), mode="bilinear", align_corners=False)[:, 0]


def encode_rle(mask: Tensor | np.ndarray) -> dict[str, Any]:
    """A binary ``[H, W]`` mask as COCO RLE (``pycocotools.mask.encode``), counts as a str (JSON-ready)."""
    from pycocotools import mask as mask_util

    array = np.asfortranarray(np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=np.uint8))
    rle = mask_util.encode(array)
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes) back to a ``[H, W]`` uint8 mask."""
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    obj = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2 warns about its own __array__ (copy=False)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(obj)


def category(index: int) -> tuple[int, str]:
    """Contiguous class index -> (COCO category id, name)."""
    coco_id = COCO_CONTIGUOUS_IDS[index]
    return coco_id, COCO_CATEGORY_NAMES[coco_id]


def to_coco_instances(seg: Segmentation, min_score: float = 0.0) -> list[dict[str, Any]]:
    """The served instances, in the official order (decreasing score): ``{label, label_id, score, box,
    mask}`` with ``box`` [x1, y1, x2, y2] in original-image pixels and ``mask`` as COCO RLE."""
    out = []
    for i in range(len(seg.scores)):
        score = float(seg.scores[i])
        if score < min_score:
            continue
        label_id, label = category(int(seg.classes[i]))
        out.append({"label": label, "label_id": label_id, "score": score,
                    "box": [float(v) for v in seg.boxes[i].tolist()], "mask": encode_rle(seg.masks[i])})
    return out


@torch.inference_mode()
def predict(model: CondInst, images: Sequence[Image.Image | np.ndarray], min_size: int = MIN_SIZE_TEST,
            max_size: int = MAX_SIZE_TEST, min_score: float = 0.0) -> list[list[dict[str, Any]]]:
    """End to end for serving: preprocess, forward, postprocess, RLE. Images run together only when they
    pad to the same size (the official test loader runs them one by one; zero padding changes the GroupNorm
    statistics, so a larger batch pad would change the result)."""
    dtype = next(model.parameters()).dtype
    prepared = [preprocess(img, min_size, max_size, dtype) for img in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        key = tuple(-(-s // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for s in p.image_size)
        groups.setdefault(key, []).append(i)
    results: list[list[dict[str, Any]]] = [[] for _ in images]
    device = next(model.parameters()).device
    for padded, members in groups.items():
        batch = pad_batch([prepared[i].image for i in members]).to(device)
        for i, pred in zip(members, model(batch), strict=True):
            seg = postprocess(pred, prepared[i].image_size, padded, prepared[i].original_size)
            results[i] = to_coco_instances(seg, min_score)
    return results


# =====================================================================================================
# Checkpoint converter (detectron2 / AdelaiDet layout -> zoo layout)
# =====================================================================================================

# Keys of the official state dict that inference never reads; dropped by the converter, never loaded.
TRAINING_ONLY_KEYS: tuple[str, ...] = (
    "mask_head._iter",  # BoxInst's pairwise-loss warm-up counter (added 2021-03); incremented per training step
    "*.num_batches_tracked",  # mask-branch BatchNorm momentum counters: only used to update running stats
    "mask_branch.seg_head.*",  # *_sem configs: auxiliary semantic-segmentation loss head (training only)
    "mask_branch.logits.*",  # *_sem configs: its classifier
)


def is_training_only(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in TRAINING_ONLY_KEYS)


@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The zoo layout's keys (built on the meta device)."""
    with torch.device("meta"):
        return tuple(build_condinst().state_dict())


# The declared drops in the one checkpoint-filter policy's terms (zoo/checkpoint.py).
_TRAINING_ONLY_RULES = (TrainingOnly(
    "training-only state of the official checkpoint (TRAINING_ONLY_KEYS above says why each is dropped)",
    pattern="|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in TRAINING_ONLY_KEYS)),)


def convert_detectron2(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """A published CondInst checkpoint (``CondInst_MS_R_50_{1x,3x}.pth``: detectron2 names under ``model``,
    tensors or the numpy arrays of detectron2's pickles) -> zoo layout, through ``zoo.checkpoint``'s filter:
    strips ``module.``, drops ``TRAINING_ONLY_KEYS`` and raises ``WeightsError`` naming every other unknown or
    missing key (and any entry that is neither a tensor nor an array)."""
    state: Any = checkpoint
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # detectron2's pickles keep metadata (__author__, ...) beside "model"
    if isinstance(state, Mapping):  # detectron2 pickles hold numpy arrays
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                 for k, v in state.items()}
    return filter_checkpoint(state, what="CondInst R50-FPN", expected=zoo_keys(), unwrap=(), strip=("module.",),
                             training_only=_TRAINING_ONLY_RULES)


# =====================================================================================================
# Registry entries
# =====================================================================================================

_LICENSE = ("NON-COMMERCIAL: AdelaiDet licence (non-commercial use only; commercial licence from the authors, "
            "chhshen@gmail.com); detectron2 code Apache-2.0")
_IO = {
    "inputs": {
        "image": "BYTES, shape [1]: one image (JPEG/PNG/... bytes, raw or base64); any size, resized as the official "
                 "test path (short side 800 px, long side at most 1333 px)",
        "threshold": "FP32, shape [1], optional: keep instances with score >= threshold (default 0: all the model "
                     "returns, i.e. score > 0.05 before the square root, at most 100)",
    },
    "outputs": (  # handlers.instance_segmentation_handler: tensors(); one row per instance, best first
        TensorSpec("boxes", "FP32", (-1, 4),
                   "[x1, y1, x2, y2] in original-image pixels"),
        TensorSpec("scores", "FP32", (-1,),
                   "instance score (sqrt of class x centerness probability)"),
        TensorSpec("labels", "INT32", (-1,),
                   "COCO category id (1..90)"),
        TensorSpec("label_names", "BYTES", (-1,),
                   "COCO category name"),
        TensorSpec("masks_rle", "BYTES", (-1,),
                   "the binary mask at original-image size as COCO RLE (pycocotools), each element "
                   "the JSON {\"size\": [H, W], \"counts\": str}"),
    ),
}


def _entry(tag: str, filename: str, sha256: str, note: str) -> ModelEntry:
    return register(
        ModelEntry(
            name=f"condinst_r50.{tag}",
            task="instance-segmentation",
            builder=build_condinst,
            config={**CONDINST_R50_CONFIG, "min_size_test": MIN_SIZE_TEST, "max_size_test": MAX_SIZE_TEST,
                    "mask_threshold": MASK_THRESHOLD, "pixel_mean_bgr": list(PIXEL_MEAN_BGR),
                    "pixel_std_bgr": list(PIXEL_STD_BGR), "size_divisibility": SIZE_DIVISIBILITY},
            handler="handlers.instance_segmentation_handler",
            **_IO,
            weights=WeightsSource(
                hf_repo="tianzhi/AdelaiDet-CondInst",  # the authors' Hub copy, linked from configs/CondInst/README.md
                revision="a0288e75d3ad42599a58841d037d3293ea13ab0c",  # "Upload 9 files" (2023-12-09)
                filename=filename,
                sha256=sha256,  # the Hub's LFS record for this file
                sha256_record=f"the Hub's LFS pointer of {filename} at tianzhi/AdelaiDet-CondInst@a0288e7 "
                              "(oid sha256, as the Hub lists it for that commit)",
                converter="zoo.condinst:convert_detectron2",
                upstream_url=f"https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/{filename}",
                description=note,
            ),
            license=_LICENSE,
            paper="https://arxiv.org/abs/2003.05664 (Tian, Shen, Chen: Conditional Convolutions for Instance "
                  "Segmentation, ECCV 2020)",
            serving=ServingConfig(batch_size=4, max_batch_delay_ms=20, response_timeout_s=120),
            default_serve=False,
            description="CondInst R50-FPN: FCOS detector + dynamic (conditional) mask head, COCO instance masks.",
        )
    )


CONDINST_R50_MS1X = _entry(
    "coco_ms1x", "CondInst_MS_R_50_1x.pth", "dacbe466377098c90189d9e3464013b84809eed5b0ace71fa87a5876db4f6972",
    "CondInst MS_R_50_1x on COCO 2017 train (multi-scale, 90k iterations): 39.7 box AP, 35.7 mask AP on val "
    "(official README)")
CONDINST_R50_MS3X = _entry(
    "coco_ms3x", "CondInst_MS_R_50_3x.pth", "5f3d214f0d660a910324d6229139b4150438ba18fcb7fbb05c334e59c058d826",
    "CondInst MS_R_50_3x on COCO 2017 train (multi-scale, 270k iterations): 41.9 box AP, 37.5 mask AP on val "
    "(official README)")
