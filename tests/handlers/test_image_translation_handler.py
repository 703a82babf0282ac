"""CUT served by a real TorchServe: real photographs in, translated PNG/JPEG bytes out; the typed output, the
SDK's result and side-by-side drawing, batching and bad input.

Random weights and a reduced square size (64 instead of 256: the archive's config overrides) keep it fast;
only the contract is checked, never the translation.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clients.draw import draw_translation
from clients.types import TranslationResult
from handlers.image_translation_handler import ImageTranslationHandler
from tests.handlers.served import (
    check_typed_outputs,
    cpu_test_size,
    encode,
    image_from_b64,
    photo,
    post,
    post_body,
    post_json,
    served_as,
    serving_fixtures,
)
from zoo import get_entry

MODEL = "cut"  # cut.horse2zebra, the architecture's default tag
TEST_SIZE = cpu_test_size(get_entry(MODEL))
SQUARE = TEST_SIZE["preprocess"]["load_size"]
PHOTOS = [encode(photo(name, size), "JPEG") for name, size in
          (("chelsea", (150, 100)), ("coffee", (120, 80)), ("astronaut", (96, 96)))]


torchserve, in_process = serving_fixtures(MODEL, ImageTranslationHandler, TEST_SIZE)


@pytest.mark.integration
def test_real_photos_png_jpeg_and_own_size(torchserve, in_process) -> None:
    handler, _ = in_process
    status, answer = post_body(torchserve, MODEL, PHOTOS[0], "image/jpeg")
    assert status == 200, answer
    assert answer["format"] == "png" and answer["direction"] == "horse -> zebra"
    assert answer["image_size"] == {"width": SQUARE, "height": SQUARE}
    assert answer["input_size"] == {"width": 150, "height": 100}
    assert served_as(answer) == "cut.horse2zebra"
    png = image_from_b64(answer["image"])
    assert png.format == "PNG" and png.mode == "RGB" and png.size == (SQUARE, SQUARE)
    check_typed_outputs(get_entry(MODEL), handler.tensors(answer))

    status, jpeg = post(torchserve, MODEL, {"image": PHOTOS[0], "format": "JPEG", "quality": "80"})
    assert status == 200, jpeg
    assert jpeg["format"] == "jpeg" and image_from_b64(jpeg["image"]).format == "JPEG"

    status, own = post(torchserve, MODEL, {"image": encode(photo("coffee", (98, 62))), "preprocess": "none"})
    assert status == 200, own
    assert own["image_size"] == {"width": 96, "height": 64}  # sides rounded to multiples of 4
    assert image_from_b64(own["image"]).size == (96, 64)

    status, as_json = post_json(torchserve, MODEL, {"image": PHOTOS[0]})
    assert status == 200 and as_json["image"] == answer["image"]

    result = TranslationResult.from_json(answer)
    np.testing.assert_array_equal(np.asarray(result.image()), np.asarray(png))
    assert result.model.random_weights and result.input_size == (150, 100)


@pytest.mark.integration
def test_concurrent_requests_are_batched_and_match_singles(torchserve, in_process) -> None:
    singles = [post(torchserve, MODEL, {"image": image})[1]["image"] for image in PHOTOS]
    with ThreadPoolExecutor(max_workers=len(PHOTOS)) as pool:
        concurrent = list(pool.map(lambda image: post(torchserve, MODEL, {"image": image})[1]["image"], PHOTOS))
    handler, context = in_process
    batched = handler.handle([{"body": image} for image in PHOTOS], context)
    assert context.headers[0]["X-Zoo-Batch-Size"] == "3" and not context.status
    for single, other, together in zip(singles, concurrent, batched, strict=True):
        a = np.asarray(image_from_b64(single), dtype=np.int16)
        for b in (image_from_b64(other), image_from_b64(together["image"])):
            assert np.abs(a - np.asarray(b, dtype=np.int16)).max() <= 1  # truncation to uint8 under float noise


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"image": PHOTOS[1], "format": "gif"}, "'format' must be one of ['png', 'jpeg'], got 'gif'"),
        ({"image": PHOTOS[1], "quality": "0"}, "'quality' must be between 1 and 100, got 0"),
        ({"image": PHOTOS[1], "preprocess": "crop"}, "'preprocess' must be one of ['resize', 'none']"),
        ({"image": encode(photo("camera", (1100, 40))), "preprocess": "none"},
         "image is 1100x40; with preprocess mode 'none' each side must be at most 1024 px"),
        ({"image": b"\x89PNG\r\n\x1a\n" + bytes(40)}, "'image'"),
    ],
    ids=["format", "quality", "preprocess", "too-large-for-own-size", "corrupt"],
)
def test_bad_input_gets_400_naming_the_problem(torchserve, fields: dict, needle: str) -> None:
    status, answer = post(torchserve, MODEL, fields)
    assert status == 400, answer
    assert needle in answer["error"]
    assert all(w["status"] == "READY" for w in torchserve.model_status(MODEL))


def test_draw_translation_puts_input_and_output_side_by_side() -> None:
    source = photo("chelsea", (96, 64))
    translated = photo("coffee", (64, 64))
    answer = {"image": base64.b64encode(encode(translated)).decode(), "format": "png", "direction": "a -> b",
              "image_size": {"width": 64, "height": 64}, "input_size": {"width": 96, "height": 64},
              "model": {"name": MODEL, "weights": {"kind": "random-seeded", "seed": 0}}}
    drawn = draw_translation(source, TranslationResult.from_json(answer))
    pixels = np.asarray(drawn)
    banner = drawn.height - (64 + max(12, 64 // 22) + 12)  # the panels sit under the caption banner
    assert drawn.width == 96 + 8 + 64
    np.testing.assert_array_equal(pixels[banner:banner + 64, 96 + 8:], np.asarray(translated))  # right: output
    np.testing.assert_array_equal(pixels[banner:banner + 64, :96], np.asarray(source))  # left: the input
