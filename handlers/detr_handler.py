"""DETR object detection: image in (raw bytes, multipart, or JSON base64), COCO detections out."""

from __future__ import annotations

from typing import Any

from handlers.base import ZooHandler
from handlers.codec import (
    ImageRequest,
    RequestError,
    as_bytes,
    decode_image,
    number_param,
    request_fields,
)
from zoo.detr import postprocess, preprocess

IMAGE_FIELDS = ("image", "body", "data", "file", "input")
PARAMS = ("threshold", "top_k")


class DetrHandler(ZooHandler):
    """Batches variable-size images with padding masks, exactly as DETR's official evaluation."""

    def decode(self, request: dict[str, Any], index: int) -> ImageRequest:
        fields = request_fields(request)
        name = next((n for n in IMAGE_FIELDS if n in fields), None)
        if name is None:
            raise RequestError("no image in the request: send image bytes as the body, a multipart field "
                               "'image', or JSON {\"image\": \"<base64>\"}")
        unknown = sorted(set(fields) - {name, *PARAMS})
        if unknown:
            raise RequestError(f"unknown fields {unknown}; allowed: image, {', '.join(PARAMS)}")
        params = {k: (v.decode() if isinstance(v, (bytes, bytearray)) else v)
                  for k, v in fields.items() if k in PARAMS}
        image = decode_image(as_bytes(fields[name], name), name)
        return ImageRequest(image, {
            "threshold": float(number_param(params, "threshold", 0.7, 0.0, 1.0)),
            "top_k": int(number_param(params, "top_k", 100, 1, 100, integer=True)),
        })

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
                "batch_size": len(items),
                "model": self.model_info(),
            })
        return answers
