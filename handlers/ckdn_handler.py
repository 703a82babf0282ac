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

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from handlers.base import ZooHandler
from handlers.codec import RequestError, decode_on_device
from handlers.fields import CheckedFields, Field
from zoo.ckdn import CROP_SIZE, pair_batch_to_inputs, preprocess_pair, preprocess_pair_tensors
from zoo.device_image import EncodedImage
from zoo.runtime import warmup_batches
from zoo.tensors import TensorData

# Largest allowed ratio between the two images' aspect ratios (w/h), e.g. 4:3 vs 16:9 = 1.33 passes, 1:1 vs
# 16:9 = 1.78 does not.
MAX_ASPECT_MISMATCH = 1.5


def _size(image: Image.Image | EncodedImage) -> tuple[int, int]:
    """(width, height) as the model will see it (after EXIF rotation)."""
    return image.upright_size if isinstance(image, EncodedImage) else image.size


def _check_aspect(restored: Image.Image | EncodedImage, degraded: Image.Image | EncodedImage) -> None:
    (rw, rh), (dw, dh) = _size(restored), _size(degraded)
    ar_restored = rw / rh
    ar_degraded = dw / dh
    mismatch = max(ar_restored, ar_degraded) / min(ar_restored, ar_degraded)
    if mismatch > MAX_ASPECT_MISMATCH:
        raise RequestError(
            f"'restored' ({rw}x{rh}) and 'degraded' "
            f"({dw}x{dh}) have aspect ratios differing by {mismatch:.2f}x "
            f"(limit {MAX_ASPECT_MISMATCH}x): send the degraded input with the restoration made from it"
        )


class CKDNHandler(ZooHandler):
    """Scores restored images against their degraded inputs, a batch of pairs at a time."""

    FIELDS = (Field("restored", "image", required=True), Field("degraded", "image", required=True))
    EXTRA_FIELDS = "ignore"  # CKDN has always ignored other fields; refusing them would change its API

    def fields(self) -> tuple[Field, ...]:
        if self.runtime.device_preprocess:  # headers checked here, pixels decoded on the device
            return tuple(replace(f, kind="encoded_image") for f in self.FIELDS)
        return self.FIELDS

    def decode_fields(self, fields: CheckedFields) -> np.ndarray | torch.Tensor:
        _check_aspect(fields["restored"], fields["degraded"])
        if not self.runtime.device_preprocess:
            return preprocess_pair(fields["restored"], fields["degraded"])
        restored, degraded = (decode_on_device(fields[name], self.device, fields.arrived_as[name])
                              for name in ("restored", "degraded"))
        return preprocess_pair_tensors(restored, degraded)

    def batch(self, items: list[np.ndarray] | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(items[0], torch.Tensor):
            pairs = torch.stack(items)
        else:
            pairs = torch.from_numpy(np.stack(items)).to(self.device)
        padded = self.runtime.batch_bucket(len(pairs))  # a compiled model sees declared batch sizes only
        if padded > len(pairs):
            pairs = torch.cat([pairs, pairs.new_zeros((padded - len(pairs), *pairs.shape[1:]))])
        return pair_batch_to_inputs(pairs)

    def predict(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        restored, degraded = batch
        return self.model(restored, degraded).float().cpu()

    def encode(self, output: torch.Tensor, items: list[np.ndarray]) -> list[dict[str, Any]]:
        return [{"score": float(score)} for score in output[: len(items)].tolist()]  # padded rows dropped

    def warmup(self) -> None:
        for batch in warmup_batches(self.runtime):
            pairs = torch.zeros((batch, 2, CROP_SIZE, CROP_SIZE, 3), dtype=torch.uint8, device=self.device)
            self.model(*pair_batch_to_inputs(pairs))

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        return {"score": np.asarray([answer["score"]], dtype=np.float32)}
