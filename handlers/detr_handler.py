"""DETR object detection: image in (raw bytes, multipart, or JSON base64), COCO detections out."""

from __future__ import annotations

from typing import Any

from handlers.base import ZooHandler
from handlers.codec import ImageRequest
from handlers.fields import IMAGE, CheckedFields, Field
from handlers.outputs import detection_tensors
from zoo.detr import postprocess, preprocess
from zoo.tensors import TensorData


class DetrHandler(ZooHandler):
    """Batches variable-size images with padding masks, exactly as DETR's official evaluation."""

    FIELDS = (
        IMAGE,
        Field("threshold", "number", default=0.7, bounds=(0.0, 1.0)),
        Field("top_k", "integer", default=100, bounds=(1, 100)),
    )
    BATCH_SIZE_IN_ANSWER = True

    def decode_fields(self, fields: CheckedFields) -> ImageRequest:
        return ImageRequest(fields["image"], {"threshold": fields["threshold"], "top_k": fields["top_k"]})

    def batch(self, items: list[ImageRequest]) -> Any:
        pixel_values, padding_mask, sizes = preprocess([item.image for item in items])
        return pixel_values.to(self.device), padding_mask.to(self.device), sizes

    def predict(self, batch: Any) -> Any:
        pixel_values, padding_mask, sizes = batch
        out = self.model(pixel_values, padding_mask)
        return out["logits"].float().cpu(), out["boxes"].float().cpu(), sizes

    def encode(self, output: Any, items: list[ImageRequest]) -> list[dict[str, Any]]:
        logits, boxes, sizes = output
        answers = []
        for i, item in enumerate(items):
            detections = postprocess(
                logits[i : i + 1], boxes[i : i + 1], [sizes[i]], item.params["threshold"], item.params["top_k"]
            )[0]
            answers.append({
                "detections": detections,
                "image_size": {"width": item.image.width, "height": item.image.height},
            })
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return detection_tensors(answer)
