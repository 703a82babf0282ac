"""TEST/DEMO-ONLY handler for `toy_detect`: one box around each image's bright region, answered in DETR's
layout (``detections`` + ``image_size``), so stream sessions (serving/streams.py) and the observability tests
get a real detector answer in milliseconds instead of waiting on DETR. Not a research model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import RequestError, as_bytes, decode_image, image_to_array, number_param, request_fields

IMAGE_FIELDS = ("image", "body", "data")
LABEL_ID, LABEL = 1, "bright"


class ToyDetectHandler(ZooHandler):
    def decode(self, request: dict[str, Any], index: int) -> dict[str, Any]:
        fields = request_fields(request)
        name = next((k for k in IMAGE_FIELDS if k in fields), None)
        if name is None:
            raise RequestError("no image: send image bytes as the body or a field 'image'")
        image = decode_image(as_bytes(fields[name], name), name)
        params = {k: (v.decode() if isinstance(v, (bytes, bytearray)) else v) for k, v in fields.items()
                  if k in ("threshold", "top_k")}
        gray = image_to_array(image).astype(np.float32).mean(axis=2)
        ys, xs = np.nonzero(gray > gray.mean())
        width, height = image.size
        if len(xs) == 0:  # a flat image: nothing stands out
            box = None
        else:
            box = [xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height]
        return {
            "box": box,
            "size": (width, height),
            "threshold": float(number_param(params, "threshold", 0.5, 0.0, 1.0)),
            "top_k": int(number_param(params, "top_k", 100, 1, 100, integer=True)),
        }

    def batch(self, items: list[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([item["box"] or [0.0, 0.0, 0.0, 0.0] for item in items], dtype=torch.float32)

    def predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(batch.to(self.device))

    def encode(self, output: tuple[torch.Tensor, torch.Tensor], items: list[dict[str, Any]]) -> list[Any]:
        boxes, scores = (t.cpu() for t in output)
        answers = []
        for i, item in enumerate(items):
            width, height = item["size"]
            detections = []
            if item["box"] is not None and float(scores[i]) >= item["threshold"]:
                x1, y1, x2, y2 = boxes[i].tolist()
                detections.append({"box": [round(x1 * width, 2), round(y1 * height, 2), round(x2 * width, 2),
                                           round(y2 * height, 2)],
                                   "score": round(float(scores[i]), 4), "label_id": LABEL_ID, "label": LABEL})
            answers.append({"detections": detections[: item["top_k"]],
                            "image_size": {"width": width, "height": height}, "model": self.model_info()})
        return answers
