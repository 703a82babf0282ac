"""Patch-Forensics: image in, fake probability and per-patch heatmap out (``task="image-forensics"``).

* input: the image as the raw body, a multipart field ``image`` (or ``file``/``input``), a JSON object
  ``{"image": "<base64>", "overlay": true}``, or a named input ``image``; decoded and checked by
  ``handlers.codec`` (bad, empty, tiny or oversized images are 400/413);
* parameter ``overlay`` (JSON boolean, or true/false/1/0/yes/no as a multipart field or named input; TorchServe
  does not pass URL query parameters of a POST to handlers): also return the heatmap drawn over the image.
  Any other field, or another value, is a 400 naming the allowed ones;
* preprocessing: the entry's ``config["preprocess"]`` (official: shorter side to 299 with Lanczos, centre
  crop 299, ``(x - 0.5) / 0.5``), per request; one forward per TorchServe batch;
* answer: ``{"fake_probability", "heatmap", "patch_grid", "model"}`` plus ``"overlay_png"`` when asked for.
  ``heatmap[i][j]`` is the softmax P(fake) of patch (i, j) (``patch_grid`` = [rows, columns], 37x37 for
  block2); ``fake_probability`` is their mean, the official "after softmax" averaging of
  ``patch_discriminator_model.get_predictions`` used by the released evaluation scripts (not a vote and not
  the softmax of averaged logits). ``overlay_png`` is a base64 PNG of the uploaded image (its own size, up to
  4096 px on the longer side) with the heatmap, on an absolute 0..1 jet scale, blended over the centre crop
  the model saw (``heat * 0.3 + image * 0.5`` as the official visualisation) and the rest dimmed.
"""

from __future__ import annotations

import base64
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.fields import IMAGE, CheckedFields, Field
from zoo.classify import Preprocess
from zoo.patchforensics import FAKE_CLASS, ForensicsInput, crop_box_in_input, patch_probabilities, render_overlay
from zoo.tensors import TensorData


class PatchForensicsHandler(ZooHandler):
    """Fake probability + patch heatmap (+ optional overlay PNG) for a Patch-Forensics entry."""

    FIELDS = (IMAGE, Field("overlay", "bool", default=False))

    @cached_property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_config(self.entry.config.get("preprocess"))

    @cached_property
    def fake_class(self) -> int:
        return int(self.entry.config.get("fake_class", FAKE_CLASS))

    def setup(self, model_dir: Path) -> None:
        _ = self.preprocess  # a misdeclared entry fails at load, not on the first request
        if self.fake_class not in (0, 1):
            raise ValueError(f"{self.entry.name}: fake_class must be 0 or 1, got {self.fake_class}")

    def decode_fields(self, fields: CheckedFields) -> ForensicsInput:
        image = fields["image"]
        box = crop_box_in_input(image.width, image.height, self.preprocess)
        return ForensicsInput(self.preprocess.image(image), image if fields["overlay"] else None, box)

    # --- batch / predict / encode -----------------------------------------------------------------
    def batch(self, items: list[ForensicsInput]) -> torch.Tensor:
        return torch.from_numpy(np.stack([item.pixels for item in items]))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.preprocess.normalize(batch.to(self.device), torch.float32)
        return self.model(x).float().cpu()

    def encode(self, output: torch.Tensor, items: list[ForensicsInput]) -> list[dict[str, Any]]:
        heat = patch_probabilities(output)[:, self.fake_class]  # [B, h, w]
        answers = []
        for item_heat, item in zip(heat, items, strict=True):
            rows, cols = item_heat.shape
            answer: dict[str, Any] = {
                "fake_probability": float(item_heat.mean()),
                "heatmap": item_heat.tolist(),
                "patch_grid": [rows, cols],
            }
            if item.image is not None:
                png = render_overlay(item.image, item_heat.numpy(), item.box)
                answer["overlay_png"] = base64.b64encode(png).decode("ascii")
            answers.append(answer)
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        overlay = answer.get("overlay_png")
        return {
            "fake_probability": np.asarray([answer["fake_probability"]], dtype=np.float32),
            "heatmap": np.asarray(answer["heatmap"], dtype=np.float32),
            "patch_grid": np.asarray(answer["patch_grid"], dtype=np.int32),
            "overlay_png": [base64.b64decode(overlay)] if overlay else [],
        }
