"""DETR with a ResNet-50 backbone (Carion et al., 2020), in plain PyTorch.

Faithful to facebookresearch/detr (``models/backbone.py``, ``position_encoding.py``, ``transformer.py``,
``detr.py``, ``datasets/transforms.py``, ``util/box_ops.py``) for inference: a torchvision-layout
ResNet-50 with frozen batch norm, only the layer4 map (2048 channels) projected to ``d_model``, a sine
position encoding over the un-padded area, a post-norm encoder/decoder transformer with positions added to
queries and keys (never values), and class / box heads. No torchvision, no timm.

File order: blocks -> model -> pre/post-processing -> checkpoint converters -> registry entry.

The zoo state-dict layout is the official one with two simplifications:

* the backbone is ``backbone.<torchvision resnet name>`` (official: ``backbone.0.body.<name>``);
* attention projections are split: ``*.self_attn.{q,k,v,out}_proj.*`` (official: one packed
  ``in_proj_weight``/``in_proj_bias`` per attention), and the decoder's cross-attention is
  ``cross_attn`` (official: ``multihead_attn``).

``convert_checkpoint`` maps the official checkpoint (``detr-r50-e632da11.pth``) and the Hugging Face
``facebook/detr-resnet-50`` layouts (timm backbone on ``main``, transformers-ResNet backbone on
``no_timm``; transformers 4.x file names and 5.x in-memory names) into it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo import device_image
from zoo._registry import GpuServing, ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import TrainingOnly, expected_keys, filter_checkpoint, rename_keys
from zoo.contract import WeightsError
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD, Bottleneck, resnet_stage
from zoo.outputs import DETECTION_OUTPUTS
from zoo.runtime import GPU_NOT_MEASURED, group_by_bucket

__all__ = [
    "COCO_CATEGORY_NAMES",
    "DETR",
    "DETR_R50_CONFIG",
    "box_cxcywh_to_xyxy",
    "build_detr",
    "convert_checkpoint",
    "detect_layout",
    "eval_tensor",
    "postprocess",
    "preprocess",
    "resized_size",
]


# =====================================================================================================
# Blocks
# =====================================================================================================


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (official ``backbone.FrozenBatchNorm2d``).

    Buffers only, so they load from a checkpoint but never train; ``eps`` is added before the rsqrt.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ResNetBackbone(nn.Module):
    """ResNet (torchvision names, frozen BN) returning only the last stage's feature map (stride 32)."""

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            stage = resnet_stage(inplanes, planes, blocks, 1 if index == 0 else 2, norm_layer=FrozenBatchNorm2d)
            self.add_module(f"layer{index + 1}", stage)
            inplanes = planes * Bottleneck.expansion
        self.num_channels = inplanes

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class PositionEmbeddingSine(nn.Module):
    """The official sine encoding: cumulative sums over the un-padded area, normalised to ``[0, scale]``."""

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000, normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: Tensor) -> Tensor:
        """``mask``: [B, H, W] bool, True on padding -> [B, 2 * num_pos_feats, H, W] float32."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class Attention(nn.Module):
    """``nn.MultiheadAttention`` math (batch first) with the packed input projection split in q/k/v."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {nhead}")
        self.nhead = nhead
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """``query`` [B, Lq, C], ``key``/``value`` [B, Lk, C], ``key_padding_mask`` [B, Lk] True = ignore."""
        batch, len_q, channels = query.shape
        len_k = key.shape[1]
        head_dim = channels // self.nhead
        q = self.q_proj(query).view(batch, len_q, self.nhead, head_dim).transpose(1, 2)
        k = self.k_proj(key).view(batch, len_k, self.nhead, head_dim).transpose(1, 2)
        v = self.v_proj(value).view(batch, len_k, self.nhead, head_dim).transpose(1, 2)
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, len_q, channels))


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer (official ``forward_post``)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = dropout

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)

    def forward(self, src: Tensor, mask: Tensor | None, pos: Tensor | None) -> Tensor:
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self._drop(self.self_attn(q, k, src, key_padding_mask=mask)))
        ffn = self.linear2(self._drop(F.relu(self.linear1(src))))
        return self.norm2(src + self._drop(ffn))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer (official ``forward_post``); ``cross_attn`` is official ``multihead_attn``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.cross_attn = Attention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = dropout

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None, pos: Tensor | None,
        query_pos: Tensor | None,
    ) -> Tensor:
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self._drop(self.self_attn(q, k, tgt)))
        attended = self.cross_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, pos), memory, key_padding_mask=memory_mask
        )
        tgt = self.norm2(tgt + self._drop(attended))
        ffn = self.linear2(self._drop(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self._drop(ffn))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src: Tensor, mask: Tensor | None, pos: Tensor | None) -> Tensor:
        for layer in self.layers:
            src = layer(src, mask, pos)
        return src  # post-norm: the official encoder has no final norm


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None, pos: Tensor | None,
        query_pos: Tensor | None,
    ) -> Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_mask, pos, query_pos)
        return self.norm(tgt)  # == the last of the official (normed) intermediate outputs


class Transformer(nn.Module):
    """The official DETR transformer, batch first: sequences are [B, L, C]."""

    def __init__(
        self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        dim_feedforward: int = 2048, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layer_kwargs = dict(nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
        self.encoder = TransformerEncoder(num_encoder_layers, d_model=d_model, **layer_kwargs)
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, **layer_kwargs)
        self.d_model = d_model
        for p in self.parameters():  # official _reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> Tensor:
        """``src``/``pos_embed`` [B, C, H, W], ``mask`` [B, H, W], ``query_embed`` [Q, C] -> [B, Q, C]."""
        batch = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos_embed.flatten(2).transpose(1, 2)
        query_pos = query_embed.unsqueeze(0).expand(batch, -1, -1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, mask, pos)
        return self.decoder(tgt, memory, mask, pos, query_pos)


class MLP(nn.Module):
    """Simple multi-layer perceptron (official ``detr.MLP``): ReLU between layers, none after the last."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        dims = zip([input_dim] + hidden, hidden + [output_dim], strict=True)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in dims)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


# =====================================================================================================
# Model
# =====================================================================================================


class DETR(nn.Module):
    """DETR for object detection (inference path of the official ``models/detr.py``).

    ``forward(pixel_values [B,3,H,W], padding_mask [B,H,W] bool, True = padded pixel)`` returns
    ``{"logits": [B, Q, num_classes + 1], "boxes": [B, Q, 4]}``, boxes normalised (cx, cy, w, h) relative to
    each image's un-padded size; the last class is "no object".
    """

    def __init__(
        self,
        num_classes: int = 91,
        num_queries: int = 100,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        backbone_depths: Sequence[int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.backbone = ResNetBackbone(backbone_depths)
        self.input_proj = nn.Conv2d(self.backbone.num_channels, d_model, kernel_size=1)
        self.position_embedding = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.transformer = Transformer(
            d_model=d_model, nhead=nhead, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, dim_feedforward=dim_feedforward, dropout=dropout,
        )
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)

    def forward(self, pixel_values: Tensor, padding_mask: Tensor | None = None) -> dict[str, Tensor]:
        if padding_mask is None:
            b, _, h, w = pixel_values.shape
            padding_mask = torch.zeros((b, h, w), dtype=torch.bool, device=pixel_values.device)
        features = self.backbone(pixel_values)
        mask = F.interpolate(padding_mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        pos = self.position_embedding(mask).to(features.dtype)
        hs = self.transformer(self.input_proj(features), mask, self.query_embed.weight, pos)
        return {"logits": self.class_embed(hs), "boxes": self.bbox_embed(hs).sigmoid()}


DETR_R50_CONFIG: dict[str, Any] = {
    "num_classes": 91,
    "num_queries": 100,
    "d_model": 256,
    "nhead": 8,
    "num_encoder_layers": 6,
    "num_decoder_layers": 6,
    "dim_feedforward": 2048,
    "dropout": 0.1,
    "backbone_depths": [3, 4, 6, 3],
}


def build_detr(**config: Any) -> DETR:
    """DETR from config kwargs (defaults: DETR-R50 on COCO); random parameters, frozen BN at identity."""
    return DETR(**{**DETR_R50_CONFIG, **config})


# =====================================================================================================
# Pre- and post-processing (official eval transforms and PostProcess)
# =====================================================================================================

EVAL_SIZE = 800
EVAL_MAX_SIZE = 1333

# Indexed by COCO category id (what the 91 logits mean); id 0 and ids unused by COCO 2017 are "N/A",
# as in the official demo's CLASSES and the Hugging Face config's id2label.
COCO_CATEGORY_NAMES: tuple[str, ...] = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
assert len(COCO_CATEGORY_NAMES) == 91


def resized_size(
    w: int, h: int, size: int = EVAL_SIZE, max_size: int | None = EVAL_MAX_SIZE
) -> tuple[int, int]:
    """The eval resize target as ``(new_w, new_h)`` (official ``get_size_with_aspect_ratio``).

    The short side becomes ``size`` unless the long side would then exceed ``max_size``, in which case
    ``size`` is lowered to ``int(round(max_size * short / long))``; the other side is ``int()``-truncated.
    """
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return w, h
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return ow, oh


def _to_normalized_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> [3, H, W] float32: ``ToTensor`` (/255) then ``Normalize`` with ImageNet mean/std."""
    array = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def preprocess(
    images: Sequence[Image.Image], size: int = EVAL_SIZE, max_size: int = EVAL_MAX_SIZE
) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """Official eval preprocessing of a batch.

    Each image is converted to RGB, resized with PIL bilinear to ``resized_size`` (what torchvision's
    ``F.resize`` does for PIL inputs), scaled to [0, 1], normalised, and zero-padded bottom/right to the
    batch's largest H and W (official ``nested_tensor_from_tensor_list``).

    Returns ``pixel_values`` [B, 3, H, W] float32, ``padding_mask`` [B, H, W] bool (True = padding) and
    the original sizes as ``(h, w)`` for ``postprocess``.
    """
    if not images:
        raise ValueError("preprocess needs at least one image")
    tensors, orig_sizes = [], []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        orig_sizes.append((h, w))
        new_w, new_h = resized_size(w, h, size, max_size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        tensors.append(_to_normalized_tensor(image))
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    pixel_values = torch.zeros((len(tensors), 3, max_h, max_w), dtype=torch.float32)
    padding_mask = torch.ones((len(tensors), max_h, max_w), dtype=torch.bool)
    for i, t in enumerate(tensors):
        pixel_values[i, :, : t.shape[1], : t.shape[2]] = t
        padding_mask[i, : t.shape[1], : t.shape[2]] = False
    return pixel_values, padding_mask, orig_sizes


def eval_tensor(image_u8: Tensor, size: int = EVAL_SIZE, max_size: int = EVAL_MAX_SIZE) -> Tensor:
    """``preprocess`` of one image with torch ops on its device: ``[3, H, W]`` uint8 -> resized, normalised float32.

    The resize is ``zoo.device_image.resize`` (antialiased bilinear, rounded to uint8 as PIL's), so the result
    differs from ``preprocess`` only by the two resize kernels (bounds in ``zoo.device_image.RESIZE_TOLERANCE``).
    """
    height, width = image_u8.shape[-2:]
    new_w, new_h = resized_size(width, height, size, max_size)
    resized = device_image.resize(image_u8, (new_h, new_w), "bilinear")
    return device_image.normalize(resized, IMAGENET_MEAN, IMAGENET_STD)


def batch_buckets(images: Sequence[Tensor], buckets: Sequence[tuple[int, int]] = (),
                  batch_sizes: Sequence[int] = ()) -> list[tuple[list[int], Tensor, Tensor]]:
    """``eval_tensor`` outputs grouped into padded shape buckets: ``(indices, pixel_values, padding_mask)`` each.

    Each group is padded to its bucket (``zoo.runtime.pick_bucket``) and to the next of ``batch_sizes``, so a
    compiled model sees only declared shapes; with no buckets, one group padded to the batch's largest image,
    as ``preprocess`` (the official batching) does.
    """
    groups = group_by_bucket([tuple(img.shape[-2:]) for img in images], buckets)
    out = []
    for shape, indices in groups.items():
        batch = next((b for b in batch_sizes if b >= len(indices)), len(indices))
        pixel_values, padding_mask = device_image.pad_batch([images[i] for i in indices], shape, batch)
        out.append((indices, pixel_values, padding_mask))
    return out


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), as ``util.box_ops``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def category_name(label_id: int) -> str:
    if 0 <= label_id < len(COCO_CATEGORY_NAMES):
        return COCO_CATEGORY_NAMES[label_id]
    return f"class_{label_id}"


def postprocess(
    logits: Tensor,
    boxes: Tensor,
    orig_sizes: Sequence[tuple[int, int]],
    threshold: float = 0.7,
    top_k: int = 100,
) -> list[list[dict[str, Any]]]:
    """Official ``PostProcess`` plus thresholding: detections per image, best first.

    Softmax over all classes, the last ("no object") dropped, best class per query; boxes converted to
    (x1, y1, x2, y2) in original-image pixels (``orig_sizes`` as ``(h, w)``) and clipped to the image.
    Keeps queries with ``score > threshold``, at most ``top_k`` per image.
    """
    if logits.shape[0] != len(orig_sizes) or boxes.shape[0] != len(orig_sizes):
        raise ValueError(f"{logits.shape[0]} predictions for {len(orig_sizes)} original sizes")
    prob = logits.detach().float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    xyxy = box_cxcywh_to_xyxy(boxes.detach().float())
    results: list[list[dict[str, Any]]] = []
    for i, (h, w) in enumerate(orig_sizes):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=xyxy.device)
        img_boxes = xyxy[i] * scale
        img_boxes[:, 0::2] = img_boxes[:, 0::2].clamp(0, w)
        img_boxes[:, 1::2] = img_boxes[:, 1::2].clamp(0, h)
        keep = torch.nonzero(scores[i] > threshold).flatten()
        order = keep[scores[i][keep].argsort(descending=True, stable=True)][: max(top_k, 0)]
        dets = []
        for q in order.tolist():
            label_id = int(labels[i, q])
            dets.append({
                "label": category_name(label_id),
                "label_id": label_id,
                "score": float(scores[i, q]),
                "box": [float(v) for v in img_boxes[q].tolist()],
            })
        results.append(dets)
    return results


# Padded (height, width) input shapes of a served batch (zoo.runtime.group_by_bucket): the eval resize makes the
# short side 800 (less for images longer than 1333/800 = 1.67:1), so landscape photos land in 800 x {800, 1088,
# 1216, 1344} (4:3 -> 1066, 3:2 -> 1200, 16:9 -> 750x1333) and portrait ones in the transposes; multiples of 32,
# the backbone's stride. A shape outside them is padded to multiples of 32 (and compiled on first use).
DETR_BUCKETS = ((800, 800), (800, 1088), (800, 1216), (800, 1344), (1088, 800), (1216, 800), (1344, 800))
# Measured on CPU (tests/zoo/test_device_image.py; seeded random weights, skimage astronaut/coffee/chelsea).
DETR_ACCURACY = (
    "bf16 autocast vs fp32: all 100 queries keep their class, box IoU >= 0.99, scores within 5e-4, logits within "
    "0.02 (random weights: scores ~0.03). Device preprocessing vs PIL: resized pixels mean |d| <= 0.19/255 "
    "(max 1/255), logits within 1e-3, box IoU >= 0.999, classes equal."
)


# =====================================================================================================
# Checkpoint converters (pure functions: mapping in, zoo-layout state dict out)
# =====================================================================================================

_OFFICIAL_SENTINELS = (
    "backbone.0.body.conv1.weight",
    "transformer.encoder.layers.0.self_attn.in_proj_weight",
)
_HF_SENTINELS = ("class_labels_classifier.weight", "model.query_position_embeddings.weight")
_ZOO_SENTINELS = ("backbone.conv1.weight", "transformer.encoder.layers.0.self_attn.q_proj.weight")


def detect_layout(state: Mapping[str, Any]) -> str:
    """``"official"``, ``"hf"`` or ``"zoo"`` from sentinel keys; WeightsError when none fits."""
    keys = set(state)
    if any(k in keys for k in _OFFICIAL_SENTINELS):
        return "official"
    if any(k in keys for k in _HF_SENTINELS) or any(k.startswith("model.backbone.") for k in keys):
        return "hf"
    if all(k in keys for k in _ZOO_SENTINELS):
        return "zoo"
    sample = ", ".join(sorted(keys)[:5]) or "no tensors"
    raise WeightsError(
        "unrecognised DETR checkpoint layout: expected the official facebookresearch/detr layout "
        f"(e.g. {_OFFICIAL_SENTINELS[0]!r}), the Hugging Face facebook/detr-resnet-50 layout "
        f"(e.g. {_HF_SENTINELS[0]!r}) or the zoo layout (e.g. {_ZOO_SENTINELS[0]!r}); found: {sample}"
    )


def _split_in_proj(out: dict[str, Tensor], prefix: str, kind: str, packed: Tensor) -> None:
    """Packed ``in_proj_{weight,bias}`` (q, k, v stacked on dim 0) -> ``{q,k,v}_proj.{weight,bias}``."""
    if packed.shape[0] % 3:
        raise WeightsError(f"{prefix}.in_proj_{kind} has {packed.shape[0]} rows, not a multiple of 3")
    for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0), strict=True):
        out[f"{prefix}.{name}.{kind}"] = part.clone().contiguous()


_OFFICIAL_IN_PROJ = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)"
                               r"\.in_proj_(weight|bias)$")


def convert_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/detr ``model`` state dict -> zoo layout."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _OFFICIAL_IN_PROJ.match(key)
        if match:
            part, index, attn, kind = match.groups()
            attn = "cross_attn" if attn == "multihead_attn" else attn
            _split_in_proj(out, f"transformer.{part}.layers.{index}.{attn}", kind, value)
            continue
        if key.startswith("backbone.0.body."):
            key = "backbone." + key[len("backbone.0.body."):]
        key = key.replace(".multihead_attn.", ".cross_attn.")
        out[key] = value
    return out


def _hf_resnet_key(rest: str) -> str:
    """transformers ``ResNetBackbone`` name (``no_timm``) -> torchvision name; unknown names unchanged."""
    m = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", rest)
    if m:
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    stage = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
    m = re.fullmatch(stage + r"shortcut\.(convolution|normalization)\.(\w+)", rest)
    if m:
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}.{m[4]}"
    m = re.fullmatch(stage + r"layer\.(\d+)\.(convolution|normalization)\.(\w+)", rest)
    if m:
        kind = "conv" if m[4] == "convolution" else "bn"
        return f"layer{int(m[1]) + 1}.{m[2]}.{kind}{int(m[3]) + 1}.{m[5]}"
    return rest


# (pattern, replacement) on the part after ``model.{encoder,decoder}.layers.N.``; 4.x file names and
# 5.x in-memory names (``o_proj``, ``mlp.fc1``) both listed.
_HF_LAYER_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "encoder": (
        (r"self_attn\.(q_proj|k_proj|v_proj)\.", r"self_attn.\1."),
        (r"self_attn\.(?:out_proj|o_proj)\.", "self_attn.out_proj."),
        (r"(?:mlp\.)?fc1\.", "linear1."),
        (r"(?:mlp\.)?fc2\.", "linear2."),
        (r"self_attn_layer_norm\.", "norm1."),
        (r"final_layer_norm\.", "norm2."),
    ),
    "decoder": (
        (r"self_attn\.(q_proj|k_proj|v_proj)\.", r"self_attn.\1."),
        (r"self_attn\.(?:out_proj|o_proj)\.", "self_attn.out_proj."),
        (r"encoder_attn\.(q_proj|k_proj|v_proj)\.", r"cross_attn.\1."),
        (r"encoder_attn\.(?:out_proj|o_proj)\.", "cross_attn.out_proj."),
        (r"(?:mlp\.)?fc1\.", "linear1."),
        (r"(?:mlp\.)?fc2\.", "linear2."),
        (r"self_attn_layer_norm\.", "norm1."),
        (r"encoder_attn_layer_norm\.", "norm2."),
        (r"final_layer_norm\.", "norm3."),
    ),
}
_HF_TOP_RENAMES = (
    ("model.query_position_embeddings.", "query_embed."),
    ("model.input_projection.", "input_proj."),
    ("model.decoder.layernorm.", "transformer.decoder.norm."),
    ("class_labels_classifier.", "class_embed."),
    ("bbox_predictor.layers.", "bbox_embed.layers."),
)
_HF_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")


def _hf_key(key: str) -> str:
    for prefix in _HF_BACKBONE_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith(("embedder.", "encoder.stages.")):
                rest = _hf_resnet_key(rest)  # no_timm revision: transformers ResNet
            return "backbone." + rest  # main revision: timm resnet50 already uses torchvision names
    m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.", key)
    if m:
        rest = key[m.end():]
        for pattern, repl in _HF_LAYER_RENAMES[m[1]]:
            new, n = re.subn("^" + pattern, repl, rest)
            if n:
                return f"transformer.{m[1]}.layers.{m[2]}.{new}"
        return key
    for old, new in _HF_TOP_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``DetrForObjectDetection`` state dict -> zoo layout (names it cannot place are kept)."""
    return rename_keys(state, _hf_key, "DETR")


_CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "official": convert_official,
    "hf": convert_hf,
    "zoo": dict,
}
# The published Hugging Face file (timm backbone, `main`) carries BatchNorm step counters for the downsample
# norms; DETR's frozen BatchNorm has no such buffer. Nothing else is dropped.
BN_STEP_COUNTERS = TrainingOnly("BatchNorm step counters count training steps; frozen BatchNorm has none",
                                pattern=r".*\.num_batches_tracked")


@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The state-dict keys of the registered DETR-R50 (``DETR_R50_CONFIG``)."""
    return expected_keys(build_detr)


def _to_zoo_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return _CONVERTERS[detect_layout(state)](state)


def convert_checkpoint(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """Any supported DETR-R50 checkpoint (official, Hugging Face timm / no_timm, zoo) -> zoo state dict.

    Pure: no I/O. Unwraps the official ``{"model": state_dict}``, converts the detected layout, drops the
    BatchNorm step counters and raises ``WeightsError`` naming every key it cannot place and every key the
    model lacks; an unrecognised layout raises ``WeightsError`` too.
    """
    return filter_checkpoint(ckpt, what="DETR", expected=zoo_keys(), unwrap=("model", "state_dict"), strip=(),
                             convert=_to_zoo_layout, training_only=[BN_STEP_COUNTERS])


# =====================================================================================================
# Registry entry
# =====================================================================================================

register(
    ModelEntry(
        name="detr_resnet50.coco",
        task="detection",
        builder=build_detr,
        config={**DETR_R50_CONFIG, "backbone_depths": list(DETR_R50_CONFIG["backbone_depths"])},
        handler="handlers.detr_handler",
        inputs={
            "image": "one RGB image (JPEG/PNG/... bytes, raw or base64); any size, resized like the official "
                     "eval (short side 800 px, long side at most 1333 px)",
            "threshold": "optional float in [0, 1]: keep detections with score > threshold (default 0.7)",
        },
        outputs=DETECTION_OUTPUTS,
        weights=WeightsSource(
            hf_repo="facebook/detr-resnet-50",
            # `main` at this commit: timm-backbone layout, 166,587,896 bytes.
            revision="1d5f47bd3bdd2c4bbfa585418ffe6da5028b4c0b",
            filename="model.safetensors",
            sha256="830f5e2eeaada8c8c8281779dcc8ab12833972eb8514ed0a35be6c1d4420ad81",
            sha256_record="the Hub's LFS pointer of model.safetensors at facebook/detr-resnet-50@1d5f47b "
                          "(oid sha256, size 166,587,896)",
            converter="zoo.detr:convert_checkpoint",
            upstream_url="https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
            upstream_sha256_prefix="e632da11",  # sha256 prefix in the file name (what torch.hub checks)
            description="DETR R50, 500 epochs on COCO 2017 train, 42.0 box AP on val (official model zoo)",
        ),
        license="Apache-2.0",
        paper="https://arxiv.org/abs/2005.12872",
        serving=ServingConfig(
            batch_size=8, max_batch_delay_ms=50, response_timeout_s=120,
            precision="bf16", channels_last=True, device_preprocess=True,
            buckets=DETR_BUCKETS, batch_buckets=(1, 2, 4, 8, 16, 32),
            accuracy=DETR_ACCURACY,
            gpu=GpuServing(batch_size=32, max_batch_delay_ms=10, workers=2, measured_by=GPU_NOT_MEASURED),
        ),
        description="DETR: end-to-end object detection with transformers, ResNet-50 backbone, COCO (91 ids)",
    )
)
