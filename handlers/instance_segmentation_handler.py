"""Instance segmentation (CondInst): one image in, instances out as boxes, scores, labels and COCO RLE masks.

Input: the image as the raw body, a multipart field / named input ``image`` (or ``file``/``input``), or JSON
``{"image": "<base64>"}``; optional ``threshold`` (0..1, default 0: every instance the model keeps). The image
is resized as the official test path (short side ``min_size_test``, long side at most ``max_size_test``); an
image so elongated that a side would vanish is a 400 naming the limit.

Batching: images whose resized sizes pad to the same multiple of 32 run together; others run in their own
forward (GroupNorm statistics include the padding, so padding an image further would change its result, and
the official loader runs one image at a time).

Answer: ``{"instances": [{label, label_id, score, box: [x1, y1, x2, y2], mask: {size: [H, W], counts}}],
"image_size": {width, height}, "model": {...}}``, best first; ``mask`` is COCO RLE (pycocotools) at the
original image size, ``counts`` a string. ``tensors`` maps an answer to the typed outputs the entry declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import IMAGE, CheckedFields, Field
from handlers.items import Group, InstanceRequest, group_by
from zoo.condinst import (
    MASK_THRESHOLD,
    SIZE_DIVISIBILITY,
    InstancePredictions,
    pad_batch,
    postprocess,
    preprocess,
    to_coco_instances,
)


def padded_size(item: InstanceRequest) -> tuple[int, int]:
    """The size an image's resized tensor is zero-padded to (multiples of 32)."""
    h, w = item.prepared.image_size
    return -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY, -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY


class InstanceSegmentationHandler(ZooHandler):
    """CondInst instances (boxes, scores, COCO labels, RLE masks) per image, batching images of one padded size."""

    FIELDS = (IMAGE, Field("threshold", "number", default=0.0, bounds=(0.0, 1.0)))

    def setup(self, model_dir: Path) -> None:
        self.min_size = int(self.config["min_size_test"])
        self.max_size = int(self.config["max_size_test"])
        self.mask_threshold = float(self.config.get("mask_threshold", MASK_THRESHOLD))

    def decode_fields(self, fields: CheckedFields) -> InstanceRequest:
        image = fields["image"]
        try:
            prepared = preprocess(image, self.min_size, self.max_size)
        except ValueError as exc:  # a size the test resize cannot take, named by preprocess
            raise RequestError(f"image '{fields.arrived_as['image']}' ({image.width}x{image.height}) cannot be "
                               f"segmented: {exc}") from None
        return InstanceRequest(prepared, fields["threshold"])

    def batch(self, items: list[InstanceRequest]) -> list[Group]:
        return group_by(items, padded_size, lambda group: pad_batch([item.prepared.image for item in group]))

    def predict(self, batch: list[Group]) -> dict[int, tuple[InstancePredictions, tuple[int, int]]]:
        """Each request's raw instances and the padded size they were found at, by its index in the batch."""
        out = {}
        for group in batch:
            predictions = self.model(group.inputs.to(self.device))
            out.update({index: (pred, group.key) for index, pred in zip(group.indices, predictions, strict=True)})
        return out

    def encode(self, output: dict[int, tuple[InstancePredictions, tuple[int, int]]],
               items: list[InstanceRequest]) -> list[dict[str, Any]]:
        answers = []
        for i, item in enumerate(items):
            pred, padded = output[i]
            height, width = item.prepared.original_size
            with torch.inference_mode():  # masks at the original size, on the model's device
                seg = postprocess(pred, item.prepared.image_size, padded, (height, width), self.mask_threshold)
            answers.append({"instances": to_coco_instances(seg, item.threshold),
                            "image_size": {"width": width, "height": height}})
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, np.ndarray | list[bytes]]:
        """One answer -> the typed outputs the entry declares: boxes FP32 [-1, 4], scores FP32 [-1], labels
        INT32 [-1] (COCO category ids), label_names BYTES [-1], masks_rle BYTES [-1] (JSON {size, counts})."""
        instances = answer["instances"]
        return {
            "boxes": np.asarray([i["box"] for i in instances], dtype=np.float32).reshape(-1, 4),
            "scores": np.asarray([i["score"] for i in instances], dtype=np.float32),
            "labels": np.asarray([i["label_id"] for i in instances], dtype=np.int32),
            "label_names": [i["label"].encode("utf-8") for i in instances],
            "masks_rle": [json.dumps(i["mask"], separators=(",", ":")).encode("ascii") for i in instances],
        }
