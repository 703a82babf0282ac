"""CondInst served by a real TorchServe: real photographs in, COCO RLE instances out; the typed outputs, the SDK's
result and overlay, batching and bad input.

Random weights and a reduced test size (short side 128, long side at most 192: the archive's config overrides)
keep it fast; only the contract is checked, never what the model finds.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from clients.draw import CAPTION_BG, blend, draw_instances, label_color
from clients.types import InstanceSegmentationResult
from handlers.instance_segmentation_handler import InstanceSegmentationHandler
from tests.handlers.served import (
    check_typed_outputs,
    cpu_test_size,
    encode,
    photo,
    post,
    post_body,
    post_json,
    served_as,
    serving_fixtures,
)
from zoo import get_entry
from zoo.condinst import COCO_CONTIGUOUS_IDS, decode_rle
from zoo.mar import read_archive_meta

pytestmark = pytest.mark.integration

MODEL = "condinst_r50"
TEST_SIZE = cpu_test_size(get_entry(MODEL))
SAME_SIZE = [encode(photo(name, (128, 96)), "JPEG") for name in ("astronaut", "coffee", "chelsea")]


torchserve, in_process = serving_fixtures(MODEL, InstanceSegmentationHandler, TEST_SIZE)


def check_answer(handler: InstanceSegmentationHandler, answer: dict, width: int, height: int,
                 threshold: float = 0.0) -> None:
    assert answer["image_size"] == {"width": width, "height": height}
    assert served_as(answer) == "condinst_r50.coco_ms1x" and answer["model"]["weights"]["kind"] == "random-seeded"
    instances = answer["instances"]
    assert instances, "random weights still give instances above CondInst's 0.05 candidate threshold"
    assert [i["score"] for i in instances] == sorted((i["score"] for i in instances), reverse=True)
    for inst in instances:
        assert set(inst) == {"label", "label_id", "score", "box", "mask"}
        assert inst["label_id"] in COCO_CONTIGUOUS_IDS and isinstance(inst["label"], str)
        assert threshold <= inst["score"] <= 1
        x1, y1, x2, y2 = inst["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert inst["mask"]["size"] == [height, width] and isinstance(inst["mask"]["counts"], str)
    check_typed_outputs(get_entry(MODEL), handler.tensors(answer))


def test_real_photos_raw_multipart_and_json(torchserve, in_process) -> None:
    handler, _ = in_process
    status, answer = post_body(torchserve, MODEL, encode(photo("astronaut", (128, 128)), "JPEG"), "image/jpeg")
    assert status == 200, answer
    check_answer(handler, answer, 128, 128)

    coffee = encode(photo("coffee", (150, 100)))
    status, multi = post(torchserve, MODEL, {"image": coffee, "threshold": "0.3"})
    assert status == 200, multi
    check_answer(handler, multi, 150, 100, 0.3)
    status, as_json = post_json(torchserve, MODEL, {"image": coffee, "threshold": 0.3})  # type: ignore[dict-item]
    assert status == 200, as_json
    assert as_json["instances"] == multi["instances"]


def test_typed_outputs_rle_and_the_sdk_result_agree(torchserve, in_process) -> None:
    status, answer = post(torchserve, MODEL, {"image": SAME_SIZE[0]})
    assert status == 200, answer
    tensors = in_process[0].tensors(answer)
    result = InstanceSegmentationResult.from_json(answer)
    assert len(result) == len(tensors["scores"]) == len(tensors["masks_rle"])
    np.testing.assert_array_equal(tensors["labels"], [i.label_id for i in result])
    np.testing.assert_allclose(tensors["boxes"], np.asarray([i.box for i in result], dtype=np.float32))
    for inst, rle_json in zip(result, tensors["masks_rle"], strict=True):
        rle = json.loads(rle_json)
        np.testing.assert_array_equal(inst.mask(), decode_rle(rle))  # the SDK's numpy decoder = pycocotools
        assert inst.mask().shape == (96, 128)


def test_batch_equals_singles(torchserve, in_process) -> None:
    singles = [post(torchserve, MODEL, {"image": image})[1] for image in SAME_SIZE]
    with ThreadPoolExecutor(max_workers=len(SAME_SIZE)) as pool:
        concurrent = list(pool.map(lambda image: post(torchserve, MODEL, {"image": image})[1], SAME_SIZE))
    handler, context = in_process
    batched = handler.handle([{"body": image} for image in SAME_SIZE], context)  # one forward of 3
    assert context.headers[0]["X-Zoo-Batch-Size"] == "3" and not context.status
    for single, *others in zip(singles, concurrent, batched, strict=True):
        for other in others:
            assert_same_instances(single["instances"], other["instances"])


def assert_same_instances(expected: list[dict], got: list[dict]) -> None:
    """Same instances up to float noise of a different batch: labels, boxes and scores to 1e-4, masks to 1 %."""
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert a["label_id"] == b["label_id"]
        np.testing.assert_allclose(b["box"], a["box"], atol=1e-3)
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        ma, mb = decode_rle(a["mask"]), decode_rle(b["mask"])
        assert np.count_nonzero(ma != mb) <= 0.01 * ma.size


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"image": b"\xff\xd8\xffnot-a-jpeg" + bytes(64)}, "'image'"),
        ({"image": SAME_SIZE[0], "threshold": "2"}, "'threshold' must be between 0.0 and 1.0, got 2.0"),
        ({"image": SAME_SIZE[0], "top_k": "3"}, "unknown field(s) 'top_k'"),
        ({"image": encode(photo("camera", (4200, 8)))}, "too elongated: the test resize (short side 128, long side "
                                                        "at most 192) leaves a side of 0 pixels"),
        ({"threshold": "0.5"}, "no image in the request"),
    ],
    ids=["corrupt", "threshold-out-of-range", "unknown-field", "too-elongated", "no-image"],
)
def test_bad_input_gets_400_naming_the_problem(torchserve, fields: dict, needle: str) -> None:
    status, answer = post(torchserve, MODEL, fields)
    assert status == 400, answer
    assert needle in answer["error"] and answer["model"] in (MODEL, "condinst_r50.coco_ms1x")
    assert all(w["status"] == "READY" for w in torchserve.model_status(MODEL))


def test_archive_records_random_weights_and_the_test_size(torchserve) -> None:
    meta = read_archive_meta(Path(torchserve.model_store) / f"{MODEL}.mar")
    assert meta["weights"]["kind"] == "random-seeded" and meta["config_overrides"] == TEST_SIZE
    assert meta["config"]["min_size_test"] == 800  # the entry itself is unchanged


def test_draw_instances_blends_masks_and_boxes_over_the_photo() -> None:
    """The overlay on an answer of the handler's shape: mask pixels blended in the label colour, the rest intact."""
    image = photo("astronaut", (120, 90))
    mask = np.zeros((90, 120), dtype=np.uint8)
    mask[20:60, 30:80] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    answer = {"image_size": {"width": 120, "height": 90},
              "model": {"name": MODEL, "weights": {"kind": "random-seeded", "seed": 0}},
              "instances": [{"label": "person", "label_id": 1, "score": 0.9, "box": [30.0, 20.0, 80.0, 60.0],
                             "mask": {"size": [90, 120], "counts": rle["counts"].decode()}}]}
    drawn = np.asarray(draw_instances(image, InstanceSegmentationResult.from_json(answer)))
    pixels = np.asarray(image)
    color = label_color(1)
    assert drawn.shape[1] == 120 and drawn.shape[0] > 90  # the caption strip is under the image
    inside = blend(pixels, color, np.ones((90, 120), dtype=bool))
    assert tuple(drawn[40, 55]) == tuple(inside[40, 55]) != tuple(pixels[40, 55])  # mask: blended
    assert tuple(drawn[80, 10]) == tuple(pixels[80, 10])  # outside mask and box: the photo
    assert tuple(drawn[40, 30]) == color  # the box's left edge
    assert tuple(drawn[-2, 2]) == CAPTION_BG
