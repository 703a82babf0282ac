"""DETR object detection: image in (raw bytes, multipart, or JSON base64), COCO detections out.

Two preprocessing paths, chosen per worker by ``zoo.runtime.Runtime.device_preprocess`` (on for CUDA workers):
the official PIL path (``zoo.detr.preprocess``, what a CPU worker runs), or decode (nvjpeg where available),
resize and normalise on the worker's device per request, then batches grouped into the entry's padded shape
buckets so a compiled model only ever sees shapes warmed up at load.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from handlers.base import ZooHandler
from handlers.codec import ImageRequest, decode_on_device
from handlers.fields import IMAGE, CheckedFields, Field
from handlers.outputs import detection_tensors
from zoo.detr import batch_buckets, eval_tensor, postprocess, preprocess
from zoo.runtime import warmup_shapes
from zoo.tensors import TensorData


class DetrHandler(ZooHandler):
    """Batches variable-size images with padding masks, exactly as DETR's official evaluation."""

    FIELDS = (
        IMAGE,
        Field("threshold", "number", default=0.7, bounds=(0.0, 1.0)),
        Field("top_k", "integer", default=100, bounds=(1, 100)),
    )
    BATCH_SIZE_IN_ANSWER = True

    def fields(self) -> tuple[Field, ...]:
        if self.runtime.device_preprocess:  # header checked here, pixels decoded on the device
            return (replace(IMAGE, kind="encoded_image"), *self.FIELDS[1:])
        return self.FIELDS

    def decode_fields(self, fields: CheckedFields) -> ImageRequest:
        params = {"threshold": fields["threshold"], "top_k": fields["top_k"]}
        if not self.runtime.device_preprocess:
            return ImageRequest(fields["image"], params)
        pixels = decode_on_device(fields["image"], self.device, fields.arrived_as["image"])
        params["size"] = tuple(pixels.shape[-2:])  # (h, w) of the upright image, for postprocess
        return ImageRequest(eval_tensor(pixels), params)

    def batch(self, items: list[ImageRequest]) -> Any:
        if not self.runtime.device_preprocess:
            pixel_values, padding_mask, sizes = preprocess([item.image for item in items])
            return [(list(range(len(items))), pixel_values.to(self.device), padding_mask.to(self.device))], sizes
        groups = batch_buckets([item.image for item in items], self.runtime.buckets, self.runtime.batch_buckets)
        return groups, [item.params["size"] for item in items]

    def predict(self, batch: Any) -> Any:
        groups, sizes = batch
        logits: list[torch.Tensor | None] = [None] * len(sizes)
        boxes: list[torch.Tensor | None] = [None] * len(sizes)
        for indices, pixel_values, padding_mask in groups:
            out = self.model(pixel_values, padding_mask)
            group_logits, group_boxes = out["logits"].float().cpu(), out["boxes"].float().cpu()
            for row, index in enumerate(indices):  # rows past len(indices) pad a batch bucket
                logits[index], boxes[index] = group_logits[row], group_boxes[row]
        return torch.stack(logits), torch.stack(boxes), sizes

    def encode(self, output: Any, items: list[ImageRequest]) -> list[dict[str, Any]]:
        logits, boxes, sizes = output
        answers = []
        for i, item in enumerate(items):
            detections = postprocess(
                logits[i : i + 1], boxes[i : i + 1], [sizes[i]], item.params["threshold"], item.params["top_k"]
            )[0]
            height, width = sizes[i]
            answers.append({"detections": detections, "image_size": {"width": width, "height": height}})
        return answers

    def warmup(self) -> None:
        for batch, (height, width) in warmup_shapes(self.runtime):
            pixel_values = torch.zeros((batch, 3, height, width), device=self.device)
            self.model(pixel_values, torch.zeros((batch, height, width), dtype=torch.bool, device=self.device))

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return detection_tensors(answer)
