"""CKDN degraded-reference quality: one request = one (restored, degraded) image pair, one score out.

The pair arrives as multipart fields ``restored`` and ``degraded``, as a JSON object
``{"restored": "<base64>", "degraded": "<base64>"}``, or as named inputs with those names (the gateway sends
OIP BYTES inputs as TorchServe gRPC input-map entries); each value is image bytes or a base64 string.
Each pair is preprocessed exactly as the official evaluation (``zoo.ckdn.preprocess_pair``) and pairs are
batched. Answer: ``{"score": float in [0, 1], "model": {...}}``.

Client errors (HTTP 400, message naming the field): a missing image, bytes that are not a decodable image,
and a pair whose aspect ratios differ by more than ``MAX_ASPECT_MISMATCH`` (both images are resized and
centre-cropped independently, so such a pair would compare different parts of the scene).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import CheckedFields, Field
from zoo.ckdn import pair_batch_to_inputs, preprocess_pair
from zoo.tensors import TensorData

# Largest allowed ratio between the two images' aspect ratios (w/h), e.g. 4:3 vs 16:9 = 1.33 passes, 1:1 vs
# 16:9 = 1.78 does not.
MAX_ASPECT_MISMATCH = 1.5


def _check_aspect(restored: Image.Image, degraded: Image.Image) -> None:
    ar_restored = restored.width / restored.height
    ar_degraded = degraded.width / degraded.height
    mismatch = max(ar_restored, ar_degraded) / min(ar_restored, ar_degraded)
    if mismatch > MAX_ASPECT_MISMATCH:
        raise RequestError(
            f"'restored' ({restored.width}x{restored.height}) and 'degraded' "
            f"({degraded.width}x{degraded.height}) have aspect ratios differing by {mismatch:.2f}x "
            f"(limit {MAX_ASPECT_MISMATCH}x): send the degraded input with the restoration made from it"
        )


class CKDNHandler(ZooHandler):
    """Scores restored images against their degraded inputs, a batch of pairs at a time."""

    FIELDS = (Field("restored", "image", required=True), Field("degraded", "image", required=True))
    EXTRA_FIELDS = "ignore"  # CKDN has always ignored other fields; refusing them would change its API

    def decode_fields(self, fields: CheckedFields) -> np.ndarray:
        _check_aspect(fields["restored"], fields["degraded"])
        return preprocess_pair(fields["restored"], fields["degraded"])

    def batch(self, items: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = torch.from_numpy(np.stack(items)).to(self.device)
        return pair_batch_to_inputs(pairs)

    def predict(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        restored, degraded = batch
        return self.model(restored, degraded).float().cpu()

    def encode(self, output: torch.Tensor, items: list[np.ndarray]) -> list[dict[str, Any]]:
        return [{"score": float(score)} for score in output.tolist()]

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return {"score": np.asarray([answer["score"]], dtype=np.float32)}
