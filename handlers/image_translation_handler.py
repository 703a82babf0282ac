"""Image-to-image translation (CUT / FastCUT): one image in, the translated image out as PNG or JPEG bytes.

Input: the image as the raw body, a multipart field / named input ``image`` (or ``file``/``input``), or JSON
``{"image": "<base64>"}``. Parameters: ``format`` (``png``, the default and what the official ``test.py``
writes, or ``jpeg``), ``quality`` (JPEG quality 1..100, default 95) and ``preprocess``: ``resize`` (default,
the released test options: bicubic resize to ``load_size`` x ``load_size`` whatever the aspect ratio) or
``none`` (official ``--preprocess none``: keep the size, each side rounded to a multiple of 4; a side above
``max_side`` or rounding below 8 px is a 400 naming the limit).

Batching: requests whose network inputs have the same size run in one forward (InstanceNorm statistics are per
image, so batching changes nothing).

Answer: ``{"image": "<base64 PNG/JPEG>", "format": "png"|"jpeg", "image_size": {width, height} (of the
translated image), "input_size": {width, height}, "direction": str, "model": {...}}``. ``tensors`` maps an
answer to the typed output the entry declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import IMAGE, CheckedFields, Field
from handlers.items import Group, TranslationRequest, b64, group_by, stack_u8, unb64
from zoo.cut import TranslatePreprocess, encode_image, to_uint8

MODES = ("resize", "none")


class ImageTranslationHandler(ZooHandler):
    """CUT/FastCUT translations, batching requests whose network inputs have one size."""

    def setup(self, model_dir: Path) -> None:
        base = dict(self.config["preprocess"])
        self.preprocessors = {mode: TranslatePreprocess.from_config({**base, "mode": mode}) for mode in MODES}
        self.default_mode = str(base.get("mode", "resize"))
        self.formats = tuple(self.config.get("output_formats", ("png", "jpeg")))

    def fields(self) -> tuple[Field, ...]:
        return (
            IMAGE,
            Field("format", "choice", default=self.formats[0], choices=self.formats),
            Field("quality", "integer", default=95, bounds=(1, 100)),
            Field("preprocess", "choice", default=self.default_mode, choices=MODES),
        )

    def decode_fields(self, fields: CheckedFields) -> TranslationRequest:
        image = fields["image"]
        try:
            pixels = self.preprocessors[fields["preprocess"]].image(image)
        except ValueError as exc:  # preprocess 'none': a size the generator cannot take, named by the check
            raise RequestError(f"image '{fields.arrived_as['image']}' cannot be translated with preprocess "
                               f"'{fields['preprocess']}': {exc}") from None
        return TranslationRequest(pixels, fields["format"], fields["quality"], image.size)

    def batch(self, items: list[TranslationRequest]) -> list[Group]:
        return group_by(items, lambda item: item.pixels.shape, lambda group: stack_u8([i.pixels for i in group]))

    def predict(self, batch: list[Group]) -> dict[int, np.ndarray]:
        """The translated ``[h, w, 3]`` uint8 image of every request, by its index in the batch."""
        normalize = self.preprocessors["resize"].normalize  # mean/std are the same in both modes
        out = {}
        for group in batch:
            fake = self.model(normalize(group.inputs.to(self.device)))
            out.update(zip(group.indices, to_uint8(fake), strict=True))
        return out

    def encode(self, output: dict[int, np.ndarray], items: list[TranslationRequest]) -> list[dict[str, Any]]:
        answers = []
        for i, item in enumerate(items):
            image = output[i]
            answers.append({
                "image": b64(encode_image(image, item.fmt, item.quality)),
                "format": item.fmt,
                "image_size": {"width": int(image.shape[1]), "height": int(image.shape[0])},
                "input_size": {"width": item.input_size[0], "height": item.input_size[1]},
                "direction": self.config.get("direction", ""),
            })
        return answers

    def tensors(self, answer: dict[str, Any]) -> dict[str, np.ndarray | list[bytes]]:
        """One answer -> the typed output the entry declares: image BYTES [1] (PNG or JPEG, as ``format``)."""
        return {"image": [unb64(answer["image"])]}
