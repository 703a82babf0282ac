"""Semantic segmentation (DNLNet): one image in, a label map out as a palette PNG plus per-class pixel fractions.

Input: the image as the raw body, a multipart field / named input ``image`` (or ``file``/``input``), or JSON
``{"image": "<base64>"}``. It is resized keeping its aspect ratio into the entry's ``test_scale`` (mmseg's
``Resize(scale, keep_ratio=True)``) and segmented whole, as the official test pipeline; the logits are resized
back to the original size and argmaxed.

Batching: requests whose resized images have the same size run in one forward (whole-image inference takes
no padding).

Answer: ``{"label_map_png": "<base64 PNG>", "class_fractions": [{index, label, fraction}], "dataset": str,
"image_size": {width, height}, "model": {...}}``. The PNG is palette-mode at the original size: each pixel's
value is its class index, shown in the dataset's colours; ``class_fractions`` lists the classes present, most
pixels first. ``tensors`` maps an answer to the typed outputs the entry declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import IMAGE, CheckedFields
from handlers.items import Group, SemanticRequest, b64, group_by, unb64
from zoo.dnl import DATASETS, class_fractions, encode_png, preprocess

# Classes upsampled to the original size at a time: the argmax over all classes is taken chunk by chunk, so a
# 12-megapixel photo never holds all 150 ADE20K logit planes at full size (7 GB) at once.
CLASS_CHUNK = 16


def label_map(logits: torch.Tensor, img_shape: tuple[int, int], ori_shape: tuple[int, int]) -> np.ndarray:
    """``[1, C, h/8, w/8]`` logits -> ``[H, W]`` uint8 class indices: mmseg's two bilinear resizes
    (``align_corners=False``: to the network input, then to the original size) and the argmax, per chunk of
    classes (each class plane is resized on its own, and ties keep the lower index, as one argmax does)."""
    best_value: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for start in range(0, logits.shape[1], CLASS_CHUNK):
        planes = F.interpolate(logits[:, start:start + CLASS_CHUNK], size=tuple(img_shape), mode="bilinear",
                               align_corners=False)
        if tuple(ori_shape) != tuple(img_shape):
            planes = F.interpolate(planes, size=tuple(ori_shape), mode="bilinear", align_corners=False)
        value, index = planes[0].max(dim=0)
        index += start
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index, best_index)
    return best_index.to(torch.uint8).cpu().numpy()  # type: ignore[union-attr]


class SemanticSegmentationHandler(ZooHandler):
    """DNLNet label maps (palette PNG + class fractions), batching images of one resized size."""

    FIELDS = (IMAGE,)

    def setup(self, model_dir: Path) -> None:
        self.classes, self.palette = DATASETS[self.config["dataset"]]
        self.scale = tuple(int(s) for s in self.config["test_scale"])
        if len(self.classes) > 256:
            raise ValueError(f"{self.entry.name}: {len(self.classes)} classes do not fit a uint8 palette PNG")

    def decode_fields(self, fields: CheckedFields) -> SemanticRequest:
        try:
            return SemanticRequest(preprocess(fields["image"], self.scale))
        except ValueError as exc:
            raise RequestError(f"image '{fields.arrived_as['image']}' cannot be segmented: {exc}") from None

    def batch(self, items: list[SemanticRequest]) -> list[Group]:
        return group_by(items, lambda item: item.prepared.img_shape,
                        lambda group: torch.cat([item.prepared.x for item in group]))

    def predict(self, batch: list[Group]) -> dict[int, torch.Tensor]:
        """Low-resolution logits ``[1, C, h/8, w/8]`` of every request, by its index in the batch."""
        out = {}
        for group in batch:
            logits = self.model(group.inputs.to(self.device))
            out.update({index: logits[k:k + 1] for k, index in enumerate(group.indices)})
        return out

    def encode(self, output: dict[int, torch.Tensor], items: list[SemanticRequest]) -> list[dict[str, Any]]:
        answers = []
        for i, item in enumerate(items):
            with torch.inference_mode():
                labels = label_map(output[i], item.prepared.img_shape, item.prepared.ori_shape)
            fractions = class_fractions(labels, len(self.classes))
            present = sorted(np.flatnonzero(fractions), key=lambda k: (-fractions[k], k))
            height, width = labels.shape
            answers.append({
                "label_map_png": b64(encode_png(labels, self.palette)),
                "class_fractions": [{"index": int(k), "label": self.classes[k], "fraction": float(fractions[k])}
                                    for k in present],
                "dataset": self.config["dataset"],
                "image_size": {"width": width, "height": height},
            })
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, np.ndarray | list[bytes]]:
        """One answer -> the typed outputs the entry declares: label_map_png BYTES [1], class_fractions FP32
        [num_classes] (0 for the classes absent from the map)."""
        fractions = np.zeros(len(self.classes), dtype=np.float32)
        for row in answer["class_fractions"]:
            fractions[row["index"]] = row["fraction"]
        return {"label_map_png": [unb64(answer["label_map_png"])], "class_fractions": fractions}
