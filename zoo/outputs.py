"""Typed output schemas that several registry entries of one task share (one declaration, one wording).

A task's entries answer alike so that one client, one benchmark and one stream session serve them all;
classification's schema is in ``zoo.classify.classify_io`` beside the rest of its contract.
"""

from __future__ import annotations

from zoo.tensors import TensorSpec

# DETR's layout (toy_detect answers in it too): one row per detection, best first.
DETECTION_OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 4), "[x1, y1, x2, y2] per detection in original-image pixels, best first"),
    TensorSpec("scores", "FP32", (-1,), "score per detection"),
    TensorSpec("labels", "INT32", (-1,), "category id per detection (COCO: 1..90)"),
    TensorSpec("label_names", "BYTES", (-1,), "category name per detection"),
    TensorSpec("image_size", "INT32", (2,), "[width, height] of the input image"),
)
