"""TEST/DEMO-ONLY handler for `toy_detect`: one box around each image's bright region, answered in DETR's
layout (``detections`` + ``image_size``), so stream sessions (serving/streams.py) and the observability tests
get a real detector answer in milliseconds instead of waiting on DETR. Not a research model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import image_to_array
from handlers.fields import CheckedFields, Field
from handlers.outputs import detection_tensors
from zoo.tensors import TensorData

LABEL_ID, LABEL = 1, "bright"


class ToyDetectHandler(ZooHandler):
    FIELDS = (
        Field("image", "image", required=True, aliases=("body", "data")),
        Field("threshold", "number", default=0.5, bounds=(0.0, 1.0)),
        Field("top_k", "integer", default=100, bounds=(1, 100)),
    )
    EXTRA_FIELDS = "ignore"  # it has always ignored other fields; refusing them would change its API

    def decode_fields(self, fields: CheckedFields) -> dict[str, Any]:
        image = fields["image"]
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
            "threshold": fields["threshold"],
            "top_k": fields["top_k"],
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
                            "image_size": {"width": width, "height": height}})
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return detection_tensors(answer)
