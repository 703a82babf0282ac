"""Generic image classification: image in, top-k classes out, with per-request model knobs.

Serves every ``task="image-classification"`` entry (AutoFormer, MutualNet, DGC, ...) from what the entry's
config declares (see ``zoo/classify.py``):

* input: the image as the raw body, a multipart field ``image`` (or ``file``/``input``), a JSON object
  ``{"image": "<base64>", ...}``, or a named input ``image`` (the gateway's gRPC path); decoded and checked
  by ``handlers.codec`` (bad, empty, tiny or oversized images are 400/413);
* parameters, as JSON fields, multipart fields or named inputs (TorchServe does not pass URL query
  parameters of a POST to handlers, so they cannot be used): ``top_k``
  (1..num_classes, default 5) and the entry's knobs (``config["knobs"]``, e.g. AutoFormer ``subnet``,
  MutualNet ``width``/``resolution``). A knob value outside its choices, or any field the model does not
  take, is a 400 naming the allowed values/fields;
* preprocessing: ``config["preprocess"]`` (resize the shorter side, centre crop, mean/std), per request;
* batching: a TorchServe batch is split into groups of identical knob settings, one forward per group;
* answer: ``{"top_k": [{"label", "index", "score"}], "knobs": {...}, "model": {...}}``; ``label`` is the
  class name when the entry lists them (``config["labels"]``), else null; ``score`` is the softmax
  probability.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.base import ZooHandler
from handlers.fields import IMAGE, CheckedFields, Field
from zoo.classify import ClassifyInput, Knob, Preprocess, knob_specs, top_k
from zoo.tensors import TensorData

DEFAULT_TOP_K = 5


class ClassifyHandler(ZooHandler):
    """Top-k classification for any classification entry, grouping each batch by knob setting."""

    # --- what the entry declares (validated when the worker starts) -------------------------------
    @cached_property
    def knobs(self) -> dict[str, Knob]:
        return knob_specs(self.entry.config)

    @cached_property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_config(self.entry.config.get("preprocess"))

    @cached_property
    def labels(self) -> list[str] | None:
        labels = self.entry.config.get("labels")
        return list(labels) if labels else None

    @cached_property
    def num_classes(self) -> int:
        return int(self.entry.config.get("num_classes", len(self.labels or ())) or 1000)

    def setup(self, model_dir: Path) -> None:
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{self.entry.name}: {len(self.labels)} labels for {self.num_classes} classes")
        _ = self.preprocess  # a misdeclared entry fails at load, not on the first request

    # --- request fields: top_k and the entry's knobs (each knob parses and names its own choices) --------
    def fields(self) -> tuple[Field, ...]:
        return (
            IMAGE,
            Field("top_k", "integer", default=min(DEFAULT_TOP_K, self.num_classes), bounds=(1, self.num_classes)),
            *(Field(name, "custom", default=knob.default, parse=knob.parse) for name, knob in self.knobs.items()),
        )

    def decode_fields(self, fields: CheckedFields) -> ClassifyInput:
        knobs = {name: fields[name] for name in self.knobs}
        return ClassifyInput(self.preprocess.image(fields["image"]), knobs, fields["top_k"])

    # --- batch / predict / encode -----------------------------------------------------------------
    def batch(self, items: list[ClassifyInput]) -> list[tuple[dict[str, Any], list[int], torch.Tensor]]:
        """Group the batch by knob setting: ``[(knobs, item indices, uint8 [n, crop, crop, 3])]``."""
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(tuple(sorted(item.knobs.items())), []).append(i)
        return [(dict(key), indices, torch.from_numpy(np.stack([items[i].pixels for i in indices])))
                for key, indices in groups.items()]

    def predict(self, batch: list[tuple[dict[str, Any], list[int], torch.Tensor]]) -> list[torch.Tensor]:
        logits: dict[int, torch.Tensor] = {}
        for knobs, indices, pixels in batch:
            x = self.preprocess.normalize(pixels.to(self.device), torch.float32)
            out = self.model(x, **knobs).float().cpu()
            logits.update(zip(indices, out, strict=True))
        return [logits[i] for i in range(len(logits))]

    def encode(self, output: list[torch.Tensor], items: list[ClassifyInput]) -> list[dict[str, Any]]:
        answers = []
        for logits, item in zip(output, items, strict=True):
            best = top_k(logits[None], item.top_k, self.labels)[0]
            answers.append({
                "top_k": [{"label": p.label, "index": p.index, "score": p.score} for p in best],
                "knobs": item.knobs,
                "_probabilities": torch.softmax(logits.float(), dim=-1).numpy(),  # typed answer only
            })
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        best = answer["top_k"]
        outputs: dict[str, TensorData] = {
            "probabilities": answer["_probabilities"].astype(np.float32),
            "top_k_indices": np.asarray([p["index"] for p in best], dtype=np.int32),
            "top_k_scores": np.asarray([p["score"] for p in best], dtype=np.float32),
            "top_k_labels": [(p["label"] or "").encode() for p in best],
        }
        if any(spec.name == "knobs" for spec in self.entry.outputs):
            outputs["knobs"] = [f"{name}={value}".encode() for name, value in answer["knobs"].items()]
        return outputs
