"""Shared pieces of the image-classification entries: preprocessing, per-request knobs, top-k, the entry itself.

Every classification entry (``task="image-classification"``) follows one contract, so one handler
(``handlers/classify_handler.py``) and one benchmark (``bench/zoo_breadth.py``) serve them all:

* the model's ``forward(x, **knobs)`` takes a normalised ``[B, 3, crop, crop]`` batch and returns logits
  ``[B, num_classes]``; ``knobs`` are keyword arguments with defaults (AutoFormer ``subnet``, MutualNet
  ``width``/``resolution``; none for DGC);
* ``entry.config["knobs"]`` declares them: ``{name: {"choices": [...], "default": value}}``. Only declared
  names and listed values are accepted from clients (``parse_knobs``);
* ``entry.config["preprocess"]`` is the official evaluation transform (``Preprocess``): resize the shorter
  side to ``resize`` with ``interpolation``, centre-crop ``crop``, then ``(x / 255 - mean) / std``;
* ``entry.config["labels"]`` (optional) lists the class names; without it answers carry indices only.

These serving keys are stripped before the architecture is built (``build_classifier``);
``classification_entry`` writes them, and the rest of an entry, from a few declarations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource
from zoo.ckdn import center_crop_box, resized_size
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD, NormalizeConfig
from zoo.tensors import TensorSpec

SERVING_KEYS = ("knobs", "preprocess", "labels")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,  # Patch-Forensics evaluation
}


# --- building ---------------------------------------------------------------------------------------
def build_classifier(cls: Callable[..., nn.Module], **config: Any) -> nn.Module:
    """Build ``cls`` from an entry config, leaving out the serving-only keys."""
    return cls(**{k: v for k, v in config.items() if k not in SERVING_KEYS})


def classifier_builder(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The ``ModelEntry.builder`` for a classification architecture (see ``build_classifier``)."""
    return functools.partial(build_classifier, cls)


def classify_io(classes: str, image_note: str = "", knobs: Mapping[str, str] | None = None,
                max_top_k: int | None = None, knob_output: str | None = None) -> dict[str, Any]:
    """The ``inputs`` (descriptions) and typed ``outputs`` of a classification entry (one contract, one wording).

    ``classes`` names the label set ("ImageNet-1k classes"); ``image_note`` says how the image is resized
    when that is not the usual crop; ``knobs`` describes the per-request knobs; ``knob_output`` describes
    the ``knobs`` echo that knob-taking entries return. Outputs: the full softmax ``probabilities`` (so the
    OIP classification extension works on every entry) and the requested top-k."""
    image = "image (JPEG/PNG bytes, multipart field 'image', or base64 in JSON {\"image\": ...})"
    limit = f", at most {max_top_k}" if max_top_k else ""
    inputs = {"image": f"{image}; {image_note}" if image_note else image, **(knobs or {}),
              "top_k": f"optional: number of classes to return (default 5{limit})"}
    outputs = [
        TensorSpec("probabilities", "FP32", (-1,), f"softmax probability of each of the {classes}"),
        TensorSpec("top_k_indices", "INT32", (-1,), f"class indices of the top_k {classes}, best first"),
        TensorSpec("top_k_scores", "FP32", (-1,), "their softmax scores"),
        TensorSpec("top_k_labels", "BYTES", (-1,), "their class names (empty where the entry lists none)"),
    ]
    if knob_output:
        outputs.append(TensorSpec("knobs", "BYTES", (-1,), f"{knob_output}, as name=value"))
    return {"inputs": inputs, "outputs": tuple(outputs)}


# --- preprocessing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess(NormalizeConfig):
    """The official evaluation transform: torchvision ``Resize(resize) + CenterCrop(crop) + ToTensor +
    Normalize(mean, std)``, with PIL doing the resize (as torchvision does for PIL images).

    ``square=True`` is torchvision ``Resize((crop, crop))`` instead (both sides to ``crop``, aspect ratio not
    kept, no crop), the evaluation transform of e.g. BiT."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    square: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be positive and at most resize ({self.resize})")

    def as_config(self) -> dict[str, Any]:
        out = super().as_config()
        if not self.square:  # the default stays implicit (configs written before the option are unchanged)
            del out["square"]
        return out

    def image(self, img: Image.Image) -> np.ndarray:
        """One image -> the ``[crop, crop, 3]`` uint8 crop the official evaluation feeds the network."""
        img = img.convert("RGB")
        if self.square:
            size = (self.crop, self.crop)
            return np.asarray(img if img.size == size else img.resize(size, INTERPOLATIONS[self.interpolation]),
                              dtype=np.uint8)
        size = resized_size(img.width, img.height, self.resize)
        if size != img.size:
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
        return np.asarray(img.crop(center_crop_box(img.width, img.height, self.crop)), dtype=np.uint8)

    def normalize(self, images_u8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` ``(x / 255 - mean) / std`` computed in ``dtype``."""
        return normalize_u8(images_u8, self.mean, self.std, dtype)


def normalize_u8(images_u8: Tensor, mean: Iterable[float], std: Iterable[float],
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """ToTensor + Normalize on a uint8 ``[B, H, W, 3]`` batch, in the run dtype (bit-equal to torchvision in
    float32): ``x = u8 / 255``, then ``(x - mean) / std``."""
    dev = images_u8.device
    x = images_u8.permute(0, 3, 1, 2).to(dtype).div(255)
    m = torch.tensor(tuple(mean), dtype=dtype, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=dtype, device=dev).view(1, 3, 1, 1)
    return (x - m) / s


# --- knobs --------------------------------------------------------------------------------------------
class KnobError(ValueError):
    """A request asked for a knob or value the model does not support (a client error)."""


@dataclass(frozen=True)
class Knob:
    """One per-request setting: its allowed values (all of one type), the default and, where an entry declares
    it, what it sets (``meaning``, for the entry's input description)."""

    name: str
    choices: tuple[Any, ...]
    default: Any
    meaning: str = ""

    def describe(self) -> str:
        """The entry's input description: ``optional: a | b (default a), <meaning>``."""
        return f"optional: {' | '.join(str(c) for c in self.choices)} (default {self.default}), {self.meaning}"

    def as_config(self) -> dict[str, Any]:
        """The ``entry.config["knobs"][name]`` form that ``knob_specs`` reads back."""
        return {"choices": list(self.choices), "default": self.default}

    def parse(self, raw: Any) -> Any:
        """A client's value (JSON value, form text or bytes) -> the matching choice, or KnobError."""
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode("utf-8", errors="replace")
        kind = type(self.choices[0])
        value: Any = None
        try:
            if isinstance(raw, bool):
                raise ValueError
            if kind is str:
                value = raw.strip() if isinstance(raw, str) else None
            elif kind is int:
                number = float(raw)
                value = int(number) if number.is_integer() else None
            elif kind is float:
                value = float(raw)
                value = value if math.isfinite(value) else None
        except (TypeError, ValueError):
            value = None
        for choice in self.choices:
            if value is not None and value == choice:
                return choice
        allowed = ", ".join(str(c) for c in self.choices)
        raise KnobError(f"'{self.name}' must be one of {allowed}; got {raw!r}")


def knob_specs(config: Mapping[str, Any]) -> dict[str, Knob]:
    """The knobs an entry declares in ``config["knobs"]`` (``{}`` for a model without any)."""
    specs = {}
    for name, spec in (config.get("knobs") or {}).items():
        choices = tuple(spec["choices"])
        if not choices or len({type(c) for c in choices}) != 1:
            raise ValueError(f"knob {name!r}: choices must be non-empty and of one type, got {choices}")
        if spec["default"] not in choices:
            raise ValueError(f"knob {name!r}: default {spec['default']!r} is not among {choices}")
        specs[name] = Knob(name, choices, spec["default"])
    return specs


def parse_knobs(specs: Mapping[str, Knob], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validated knob settings: every declared knob, taking the request's value or the default."""
    return {name: (knob.parse(raw[name]) if raw.get(name) is not None else knob.default)
            for name, knob in specs.items()}


def knob_settings(specs: Mapping[str, Knob]) -> list[dict[str, Any]]:
    """Every combination of knob values in declaration order (one ``{}`` for a model without knobs)."""
    settings: list[dict[str, Any]] = [{}]
    for name, knob in specs.items():
        settings = [{**s, name: c} for s in settings for c in knob.choices]
    return settings


# --- requests and outputs -----------------------------------------------------------------------------
class ClassifyInput(NamedTuple):
    """One decoded request: the preprocessed crop, its validated knob settings and how many classes to return."""

    pixels: np.ndarray  # [crop, crop, 3] uint8
    knobs: dict[str, Any]
    top_k: int


class Prediction(NamedTuple):
    index: int
    label: str | None
    score: float


def top_k(logits: Tensor, k: int, labels: list[str] | None = None) -> list[list[Prediction]]:
    """Softmax probabilities of the ``k`` best classes per row, best first."""
    probs = torch.softmax(logits.float(), dim=-1)
    scores, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        [Prediction(int(i), labels[int(i)] if labels else None, float(s)) for s, i in zip(row_s, row_i, strict=True)]
        for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


# --- registry entries ---------------------------------------------------------------------------------
def classification_entry(
    *,
    name: str,
    architecture: Callable[..., nn.Module],
    config: Mapping[str, Any],
    preprocess: Preprocess,
    classes: str,
    weights: WeightsSource,
    license: str,
    paper: str,
    description: str,
    labels: Sequence[str] | None = None,
    knobs: Sequence[Knob] = (),
    knob_output: str | None = None,
    image_note: str = "",
    max_top_k: int | None = None,
    batch_size: int = 8,
) -> ModelEntry:
    """An opt-in ``image-classification`` entry served by ``handlers.classify_handler``.

    ``config`` holds the architecture's arguments; the serving keys (``knobs``, ``preprocess``, ``labels``) are
    added after them. ``classes``/``image_note``/``max_top_k``/``knob_output`` word the I/O description
    (``classify_io``), each knob's ``meaning`` its input line."""
    return ModelEntry(
        name=name,
        task="image-classification",
        builder=classifier_builder(architecture),
        config={**config, "knobs": {k.name: k.as_config() for k in knobs}, "preprocess": preprocess.as_config(),
                "labels": None if labels is None else list(labels)},
        handler="handlers.classify_handler",
        **classify_io(classes, image_note, {k.name: k.describe() for k in knobs}, max_top_k, knob_output),
        weights=weights,
        license=license,
        paper=paper,
        serving=ServingConfig(batch_size=batch_size, max_batch_delay_ms=20, response_timeout_s=120),
        default_serve=False,
        description=description,
    )
