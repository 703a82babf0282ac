"""Stereo-from-mono served by a real TorchServe: a stereo pair made by shifting a real photograph horizontally,
disparity out as an array and a 16-bit PNG; the typed outputs, the SDK's result and colourised drawing,
batching and bad pairs.

Random weights and a reduced network size (128x128 instead of KITTI's 1280x384: the archive's config
overrides) keep it fast; only the contract is checked, never the depth.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clients.draw import disparity_colors, draw_disparity
from clients.types import DisparityResult
from handlers.stereo_depth_handler import StereoDepthHandler
from tests.handlers.served import (
    check_typed_outputs,
    cpu_test_size,
    encode,
    photo,
    post,
    post_json,
    served_as,
    serving_fixtures,
)
from zoo import get_entry
from zoo.stereo_mono import decode_png16

MODEL = "stereo_from_mono"
TEST_SIZE = cpu_test_size(get_entry(MODEL))


def shifted_pair(name: str, size: tuple[int, int], shift: int) -> tuple[bytes, bytes]:
    """(left, right) PNGs: two crops of one photo `shift` px apart, so left(x) shows what right(x - shift) shows."""
    width, height = size
    wide = photo(name, (width + shift, height))
    return encode(wide.crop((0, 0, width, height))), encode(wide.crop((shift, 0, shift + width, height)))


PAIR = shifted_pair("astronaut", (120, 90), 6)


torchserve, in_process = serving_fixtures(MODEL, StereoDepthHandler, TEST_SIZE)


def disparity_of(answer: dict) -> np.ndarray:
    return DisparityResult.from_json(answer).disparity


@pytest.mark.integration
def test_shifted_photo_pair_multipart_and_json(torchserve, in_process) -> None:
    handler, _ = in_process
    status, answer = post(torchserve, MODEL, {"left": PAIR[0], "right": PAIR[1]})
    assert status == 200, answer
    assert answer["image_size"] == {"width": 120, "height": 90}
    assert served_as(answer) == "stereo_from_mono.hourglass"
    assert answer["model"]["weights"]["kind"] == "random-seeded"
    disparity = disparity_of(answer)
    assert disparity.dtype == np.float32 and disparity.shape == (90, 120)
    assert answer["stats"]["min"] == pytest.approx(float(disparity.min()))
    assert answer["stats"]["max"] == pytest.approx(float(disparity.max()))
    assert 0 <= disparity.min() <= disparity.max() <= 192 * 120 / 128  # the network's range, in original pixels
    png = Image.open(io.BytesIO(base64.b64decode(answer["disparity_png16"])))
    assert png.format == "PNG" and png.mode in ("I;16", "I") and png.size == (120, 90)
    np.testing.assert_allclose(decode_png16(base64.b64decode(answer["disparity_png16"])), disparity, atol=1 / 256)
    tensors = handler.tensors(answer)
    check_typed_outputs(get_entry(MODEL), tensors)
    np.testing.assert_array_equal(tensors["disparity"], disparity)

    status, half = post_json(torchserve, MODEL, {"left": PAIR[0], "right": PAIR[1], "dtype": "float16"})
    assert status == 200, half
    assert half["disparity"]["dtype"] == "float16"
    half_typed = handler.tensors(half)  # the declared output is FP32 whatever the JSON's dtype: the half values
    check_typed_outputs(get_entry(MODEL), half_typed)
    np.testing.assert_array_equal(half_typed["disparity"], disparity_of(half).astype(np.float32))
    np.testing.assert_allclose(disparity_of(half).astype(np.float32), disparity, rtol=1e-3, atol=1e-2)

    result = DisparityResult.from_json(answer)  # the SDK's reading
    np.testing.assert_allclose(result.disparity_from_png16(), disparity, atol=1 / 256)


@pytest.mark.integration
def test_batch_equals_singles(in_process) -> None:
    """The entry serves one pair per batch (memory at KITTI size): pairs TorchServe hands over together run in one
    forward, at one network size whatever their own sizes."""
    handler, context = in_process
    pairs = [PAIR, shifted_pair("coffee", (100, 70), 4)]
    requests = [{"left": left, "right": right} for left, right in pairs]
    singles = [handler.handle([request], context)[0] for request in requests]
    batched = handler.handle(requests, context)
    assert context.headers[0]["X-Zoo-Batch-Size"] == "2" and not context.status
    for single, together in zip(singles, batched, strict=True):
        np.testing.assert_allclose(disparity_of(together), disparity_of(single), atol=1e-3)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"left": PAIR[0], "right": encode(photo("astronaut", (100, 90)))},
         "'left' (120x90) and 'right' (100x90) must have the same size"),
        ({"left": PAIR[0]}, "missing image 'right'"),
        ({"image": PAIR[0]}, "missing image 'left' and 'right'"),
        ({"left": PAIR[0], "right": b"not an image"}, "'right' is not a recognised image"),
        ({"left": PAIR[0], "right": PAIR[1], "dtype": "float64"}, "'dtype' must be one of ['float32', 'float16']"),
    ],
    ids=["unequal-sizes", "missing-right", "single-image", "corrupt-right", "dtype"],
)
def test_bad_pairs_get_400_naming_the_problem(torchserve, fields: dict, needle: str) -> None:
    status, answer = post(torchserve, MODEL, fields)
    assert status == 400, answer
    assert needle in answer["error"]
    assert all(w["status"] == "READY" for w in torchserve.model_status(MODEL))


def test_draw_disparity_shows_the_view_and_the_colourised_map() -> None:
    left = photo("astronaut", (64, 48))
    disparity = np.tile(np.linspace(0, 20, 64, dtype=np.float32), (48, 1))
    answer = {"disparity": {"dtype": "float32", "shape": [48, 64],
                            "data": base64.b64encode(disparity.astype("<f4").tobytes()).decode()},
              "disparity_png16": "", "stats": {"min": 0.0, "max": 20.0, "mean": 10.0},
              "image_size": {"width": 64, "height": 48}, "model": {"name": MODEL, "weights": {"kind": "x"}}}
    drawn = draw_disparity(left, DisparityResult.from_json(answer))
    pixels = np.asarray(drawn)
    top = drawn.height - (48 + max(12, 48 // 22) + 12)
    assert drawn.width == 64 + 8 + 64
    np.testing.assert_array_equal(pixels[top:top + 48, :64], np.asarray(left))
    np.testing.assert_array_equal(pixels[top:top + 48, 72:], disparity_colors(disparity, 20.0))
    assert tuple(pixels[top + 10, 72]) != tuple(pixels[top + 10, -1])  # far (left) and near (right) differ
