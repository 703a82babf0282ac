"""TEST/DEMO-ONLY handler for `toy_echo`: image size and channel means, plus knobs the gateway tests use.

Input like the real models: raw image bytes, a multipart/gRPC field ``image``, or JSON
``{"image": "<base64>"}``. Extra fields: ``sleep_ms`` (0..10000, to provoke deadlines) is honoured; every
field name received is echoed back in ``fields`` so tests can see exactly what reached the handler.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import decode_image, image_to_array
from handlers.fields import CheckedFields, Field
from zoo.tensors import TensorData

# One decoded request is a plain dict (a handler module may define only its handler class):
# {"width", "height", "mean" (3 floats), "bytes", "sleep_ms", "fields"}
ToyItem = dict[str, Any]


class ToyHandler(ZooHandler):
    # The image stays bytes here: the answer reports its size before decoding.
    FIELDS = (
        Field("image", "bytes", required=True, aliases=("body", "data")),
        Field("sleep_ms", "number", default=0.0, bounds=(0.0, 10_000.0)),
    )
    EXTRA_FIELDS = "ignore"  # echoed back in "fields": the gateway tests look at what reached the handler

    def decode_fields(self, fields: CheckedFields) -> ToyItem:
        data = fields["image"]
        image = decode_image(data, fields.arrived_as["image"])
        return {
            "width": image.width,
            "height": image.height,
            "mean": image_to_array(image).reshape(-1, 3).mean(axis=0) / 255.0,
            "bytes": len(data),
            "sleep_ms": fields["sleep_ms"],
            "fields": list(fields.received),
        }

    def batch(self, items: list[ToyItem]) -> torch.Tensor:
        return torch.from_numpy(np.stack([item["mean"] for item in items]).astype(np.float32)).to(self.device)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch).cpu()

    def encode(self, output: torch.Tensor, items: list[ToyItem]) -> list[dict[str, Any]]:
        delay = max(item["sleep_ms"] for item in items)
        if delay:
            time.sleep(delay / 1000.0)
        return [
            {
                "width": item["width"],
                "height": item["height"],
                "mean": [round(float(v), 6) for v in output[i]],
                "bytes": item["bytes"],
                "fields": item["fields"],
            }
            for i, item in enumerate(items)
        ]

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return {
            "width": np.asarray([answer["width"]], dtype=np.int32),
            "height": np.asarray([answer["height"]], dtype=np.int32),
            "mean": np.asarray(answer["mean"], dtype=np.float32),
            "bytes": np.asarray([answer["bytes"]], dtype=np.int64),
            "fields": [name.encode() for name in answer["fields"]],
        }
