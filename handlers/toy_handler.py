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
from handlers.codec import (
    RequestError,
    as_bytes,
    decode_image,
    image_to_array,
    number_param,
    request_fields,
)

IMAGE_FIELDS = ("image", "body", "data")
# One decoded request is a plain dict (a handler module may define only its handler class):
# {"width", "height", "mean" (3 floats), "bytes", "sleep_ms", "fields"}
ToyItem = dict[str, Any]


class ToyHandler(ZooHandler):
    def decode(self, request: dict[str, Any], index: int) -> ToyItem:
        fields = request_fields(request)
        name = next((k for k in IMAGE_FIELDS if k in fields), None)
        if name is None:
            raise RequestError("no image: send image bytes as the body, a field 'image', or JSON "
                               "{\"image\": \"<base64>\"}")
        data = as_bytes(fields[name], name)
        image = decode_image(data, name)
        params = {k: (v.decode() if isinstance(v, (bytes, bytearray)) else v) for k, v in fields.items()
                  if k == "sleep_ms"}
        return {
            "width": image.width,
            "height": image.height,
            "mean": image_to_array(image).reshape(-1, 3).mean(axis=0) / 255.0,
            "bytes": len(data),
            "sleep_ms": float(number_param(params, "sleep_ms", 0.0, 0.0, 10_000.0)),
            "fields": sorted(fields),
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
                "model": self.model_info(),
            }
            for i, item in enumerate(items)
        ]
