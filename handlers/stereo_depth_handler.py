"""Stereo depth (stereo-from-mono hourglass PSMNet): a left/right pair in, the left view's disparity out.

Input: the two views as multipart fields / named inputs ``left`` and ``right``, or JSON ``{"left": "<base64>",
"right": "<base64>"}``; they must have the same size (else a 400 naming both). Both are resized to the entry's
network size (``input_size``, KITTI's 1280x384 by default) as the official evaluation does, whatever their own
size, and the disparity is resized back and scaled to the original pixels. ``dtype``: ``float32`` (default) or
``float16``, how the disparity travels.

Batching: every pair becomes a network input of the same size, so a batch runs in one forward.

Answer: ``{"disparity": {dtype, shape: [H, W], data: base64 of the little-endian array}, "disparity_png16":
"<base64 16-bit PNG of disparity * 256>" (the KITTI format), "stats": {min, max, mean} (pixels),
"image_size": {width, height}, "model": {...}}``; disparity d at (x, y) pairs left(x) with right(x - d).
``tensors`` maps an answer to the typed outputs the entry declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import CheckedFields, Field
from handlers.items import StereoRequest, b64, tensor_bytes, tensor_from_bytes, unb64
from zoo.stereo_mono import check_size, disparity_to_image, encode_png16, preprocess_pair

DTYPES = ("float32", "float16")


class StereoDepthHandler(ZooHandler):
    """Disparity of the left view for each (left, right) pair, a batch of pairs in one forward."""

    FIELDS = (
        Field("left", "image", required=True),
        Field("right", "image", required=True),
        Field("dtype", "choice", default="float32", choices=DTYPES),
    )

    def setup(self, model_dir: Path) -> None:
        width, height = (int(v) for v in self.config["input_size"])
        check_size(height, width)  # a misconfigured network size fails the worker's start
        self.size = (width, height)

    def decode_fields(self, fields: CheckedFields) -> StereoRequest:
        left, right = fields["left"], fields["right"]
        if left.size != right.size:
            raise RequestError(f"'left' ({left.width}x{left.height}) and 'right' ({right.width}x{right.height}) "
                               "must have the same size: send the two views of one rectified stereo pair")
        try:
            return StereoRequest(preprocess_pair(left, right, self.size), fields["dtype"])
        except ValueError as exc:
            raise RequestError(f"the pair cannot be used: {exc}") from None

    def batch(self, items: list[StereoRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([item.pair.left for item in items]).to(self.device),
                torch.cat([item.pair.right for item in items]).to(self.device))

    def predict(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[n, h, w]`` disparities at the network size (network pixels)."""
        return self.model(*batch).disp

    def encode(self, output: torch.Tensor, items: list[StereoRequest]) -> list[dict[str, Any]]:
        answers = []
        for k, item in enumerate(items):
            with torch.inference_mode():
                disparity = disparity_to_image(output[k:k + 1], item.pair.ori_size)[0].cpu().numpy()
            height, width = disparity.shape
            answers.append({
                "disparity": tensor_bytes(disparity.astype(item.dtype)),
                "disparity_png16": b64(encode_png16(disparity)),
                "stats": {"min": float(disparity.min()), "max": float(disparity.max()),
                          "mean": float(disparity.mean())},
                "image_size": {"width": width, "height": height},
            })
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, np.ndarray | list[bytes]]:
        """One answer -> the typed outputs the entry declares: disparity FP32 [H, W] (a declared output has one
        datatype; ``dtype=float16`` shapes the task route's JSON answer), disparity_png16 BYTES [1]."""
        return {"disparity": tensor_from_bytes(answer["disparity"]).astype(np.float32),
                "disparity_png16": [unb64(answer["disparity_png16"])]}
