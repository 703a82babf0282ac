"""Typed outputs shared by handlers of one task (a handler module may define only its handler class).

Each function maps one readable JSON answer to the typed outputs its registry entries declare
(``zoo.outputs``), so the JSON and the typed answer can never say different things.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.tensors import TensorData


def detection_tensors(answer: dict[str, Any]) -> dict[str, TensorData]:
    """DETR's layout (``detections`` + ``image_size``) -> ``zoo.outputs.DETECTION_OUTPUTS``."""
    detections = answer["detections"]
    size = answer["image_size"]
    return {
        "boxes": np.asarray([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray([d["score"] for d in detections], dtype=np.float32),
        "labels": np.asarray([d["label_id"] for d in detections], dtype=np.int32),
        "label_names": [str(d["label"]).encode() for d in detections],
        "image_size": np.asarray([size["width"], size["height"]], dtype=np.int32),
    }
