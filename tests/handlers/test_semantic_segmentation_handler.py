"""DNLNet served by a real TorchServe: real photographs in, a palette PNG label map and class fractions out; the
typed outputs, the SDK's result and overlay, batching and bad input.

Random weights and a reduced test scale (192x96 instead of Cityscapes' 2048x1024: the archive's config
overrides) keep it fast; only the contract is checked, never what the model finds.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from clients.draw import CAPTION_BG, blend, draw_label_map
from clients.types import SemanticSegmentationResult
from handlers.semantic_segmentation_handler import CLASS_CHUNK, SemanticSegmentationHandler, label_map
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
from zoo.dnl import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, upsample_logits
from zoo.dnl import label_map as official_label_map

MODEL = "dnl_r50_d8"
TEST_SCALE = cpu_test_size(get_entry(MODEL))


torchserve, in_process = serving_fixtures(MODEL, SemanticSegmentationHandler, TEST_SCALE)


def check_answer(handler: SemanticSegmentationHandler, answer: dict, width: int, height: int) -> None:
    assert answer["image_size"] == {"width": width, "height": height} and answer["dataset"] == "cityscapes"
    assert served_as(answer) == "dnl_r50_d8.cityscapes" and answer["model"]["weights"]["kind"] == "random-seeded"
    png = image_from_b64(answer["label_map_png"])
    assert png.format == "PNG" and png.mode == "P" and png.size == (width, height)
    assert png.getpalette()[:3 * 19] == [v for color in CITYSCAPES_PALETTE for v in color]
    labels = np.asarray(png)
    counts = np.bincount(labels.ravel(), minlength=19)
    assert len(counts) == 19  # every pixel is a Cityscapes class
    rows = answer["class_fractions"]
    assert [r["index"] for r in rows] == [int(k) for k in np.flatnonzero(counts)[np.argsort(-counts[counts > 0],
                                                                                           kind="stable")]]
    for row in rows:
        assert row["label"] == CITYSCAPES_CLASSES[row["index"]]
        assert row["fraction"] == pytest.approx(counts[row["index"]] / labels.size)
    tensors = handler.tensors(answer)
    check_typed_outputs(get_entry(MODEL), tensors)
    assert tensors["class_fractions"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration
def test_real_photos_raw_multipart_and_json(torchserve, in_process) -> None:
    handler, _ = in_process
    status, answer = post_body(torchserve, MODEL, encode(photo("chelsea", (150, 100)), "JPEG"), "image/jpeg")
    assert status == 200, answer
    check_answer(handler, answer, 150, 100)

    coffee = encode(photo("coffee", (120, 80)))
    status, multi = post(torchserve, MODEL, {"image": coffee})
    assert status == 200, multi
    check_answer(handler, multi, 120, 80)
    status, as_json = post_json(torchserve, MODEL, {"image": coffee})
    assert status == 200, as_json
    assert as_json["label_map_png"] == multi["label_map_png"]

    result = SemanticSegmentationResult.from_json(multi)  # the SDK's reading of the same answer
    np.testing.assert_array_equal(result.label_map(), np.asarray(image_from_b64(multi["label_map_png"])))
    assert [c.index for c in result.class_fractions] == [r["index"] for r in multi["class_fractions"]]


@pytest.mark.integration
def test_batch_equals_singles(in_process) -> None:
    """The entry serves one image per batch (memory at Cityscapes size): the handler batches same-size images
    into one forward when TorchServe hands it several."""
    handler, context = in_process
    images = [encode(photo(name, (120, 80)), "JPEG") for name in ("astronaut", "coffee")]
    singles = [handler.handle([{"body": image}], context)[0] for image in images]
    batched = handler.handle([{"body": image} for image in images], context)
    assert context.headers[0]["X-Zoo-Batch-Size"] == "2" and not context.status
    for single, together in zip(singles, batched, strict=True):
        a, b = (np.asarray(image_from_b64(answer["label_map_png"])) for answer in (single, together))
        assert np.count_nonzero(a != b) <= 0.001 * a.size  # argmax ties may fall either way under float noise


def test_label_map_by_class_chunks_is_the_official_argmax() -> None:
    """Resizing the logits a chunk of classes at a time (memory) gives mmseg's resize-then-argmax exactly."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 150, 12, 17, generator=generator)
    logits[0, 40] = logits[0, 3]  # an exact tie across two chunks: the lower index wins, as in one argmax
    assert 150 > CLASS_CHUNK
    for img_shape, ori_shape in [((96, 136), (96, 136)), ((96, 136), (70, 101))]:
        expected = official_label_map(upsample_logits(logits, img_shape, ori_shape))[0]
        np.testing.assert_array_equal(label_map(logits, img_shape, ori_shape), expected)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"image": b"GIF89a-broken"}, "'image' is not a recognised image"),
        ({"image": encode(photo("coffee", (60, 40))), "threshold": "0.5"}, "unknown field(s) 'threshold'"),
        ({"other": "x"}, "no image in the request"),
    ],
    ids=["corrupt", "unknown-field", "no-image"],
)
def test_bad_input_gets_400_naming_the_problem(torchserve, fields: dict, needle: str) -> None:
    status, answer = post(torchserve, MODEL, fields)
    assert status == 400, answer
    assert needle in answer["error"]
    assert all(w["status"] == "READY" for w in torchserve.model_status(MODEL))


def test_draw_label_map_blends_the_palette_over_the_photo() -> None:
    image = photo("astronaut", (64, 48))
    labels = np.zeros((48, 64), dtype=np.uint8)
    labels[:, 32:] = 13  # car
    png = Image.fromarray(labels, mode="P")
    png.putpalette([v for color in CITYSCAPES_PALETTE for v in color])
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    answer = {"label_map_png": base64.b64encode(buf.getvalue()).decode(), "dataset": "cityscapes",
              "class_fractions": [{"index": 0, "label": "road", "fraction": 0.5},
                                  {"index": 13, "label": "car", "fraction": 0.5}],
              "image_size": {"width": 64, "height": 48}, "model": {"name": MODEL, "weights": {"kind": "x"}}}
    drawn = np.asarray(draw_label_map(image, SemanticSegmentationResult.from_json(answer)))
    pixels = np.asarray(image)
    everywhere = np.ones((48, 64), dtype=bool)
    assert drawn.shape[1] == 64 and drawn.shape[0] > 48
    assert tuple(drawn[10, 5]) == tuple(blend(pixels, CITYSCAPES_PALETTE[0], everywhere)[10, 5])
    assert tuple(drawn[10, 50]) == tuple(blend(pixels, CITYSCAPES_PALETTE[13], everywhere)[10, 50])
    assert tuple(drawn[-2, -2]) == CAPTION_BG
