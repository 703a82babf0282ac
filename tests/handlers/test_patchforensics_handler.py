"""The Patch-Forensics handler: request decoding and parameter validation in process, the answer against a
direct model call, and the block2 model served end to end through a real TorchServe (raw, multipart and
JSON requests, heatmap and overlay, 400s that leave the worker alive, one batch mixing requests).

Random weights: answers are checked for form and consistency with the model, never for detection quality.
"""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.codec import RequestError
from handlers.patchforensics_handler import PatchForensicsHandler
from tests.support import http_request, json_body, multipart, running_torchserve
from zoo import get_entry
from zoo.patchforensics import fake_probability

MODEL = "patchforensics_block2"
BATCH_HEADER = "x-zoo-batch-size"


def photo(size: tuple[int, int]) -> Image.Image:
    """A real face photograph shipped with scikit-image (the astronaut), downscaled."""
    from skimage import data

    return Image.fromarray(data.astronaut()).convert("RGB").resize(size, Image.Resampling.BILINEAR)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


FACE = encode(photo((160, 120)), "JPEG")  # landscape: resized to 398x299 and centre-cropped
SMALL = encode(photo((64, 64)))


def handler_for(name: str = MODEL) -> PatchForensicsHandler:
    """A handler bound to an entry without TorchServe (enough for decode/batch/predict/encode)."""
    handler = PatchForensicsHandler()
    handler.entry = get_entry(name)
    handler.device = torch.device("cpu")
    handler.meta = {"weights": {"kind": "random-seeded"}}
    torch.manual_seed(0)
    handler.model = handler.entry.build().eval()
    return handler


# --- in process --------------------------------------------------------------------------------------
def test_decode_reads_the_image_and_overlay_from_every_request_form() -> None:
    handler = handler_for()
    raw = handler.decode({"body": FACE}, 0)
    as_json = handler.decode({"body": json.dumps({"image": base64.b64encode(FACE).decode(), "overlay": True})
                              .encode()}, 0)
    parsed = handler.decode({"body": {"image": base64.b64encode(FACE).decode(), "overlay": "yes"}}, 0)
    form = handler.decode({"image": bytearray(FACE), "overlay": b"false"}, 0)
    assert raw.pixels.shape == (299, 299, 3) and raw.pixels.dtype == np.uint8
    assert all(np.array_equal(raw.pixels, other.pixels) for other in (as_json, parsed, form))
    assert raw.image is None and form.image is None  # the upload is kept only for an overlay
    assert as_json.image.size == parsed.image.size == (160, 120)
    left, top, right, bottom = as_json.box
    assert (top, bottom) == (0.0, 120.0) and right - left == pytest.approx(120.0, abs=0.5)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        ({"body": FACE, "overlay": "maybe"}, "'overlay' must be true or false; got 'maybe'"),
        ({"body": json.dumps({"image": base64.b64encode(FACE).decode(), "overlay": 2}).encode()},
         "'overlay' must be true or false; got 2"),
        ({"body": FACE, "threshold": "0.5"}, "unknown field(s) 'threshold' for patchforensics_block2; "
                                             "allowed: image, overlay"),
        ({"body": b"not an image"}, "is not a recognised image"),
        ({"body": json.dumps({"overlay": True}).encode()}, "no image in the request"),
        ({"body": json.dumps({"image": "%%%"}).encode()}, "not valid base64"),
    ],
    ids=["overlay-word", "overlay-number", "unknown-field", "bad-image", "no-image", "bad-base64"],
)
def test_bad_requests_are_400_naming_the_problem(request_: dict, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        handler_for().decode(request_, 0)
    assert err.value.status == 400 and needle in err.value.message


def test_answer_is_the_model_heatmap_and_its_mean() -> None:
    handler = handler_for()
    items = [handler.decode({"body": FACE, "overlay": "true"}, 0), handler.decode({"body": SMALL}, 0)]
    with torch.inference_mode():
        logits = handler.predict(handler.batch(items))
        direct = handler.model(handler.preprocess.normalize(torch.from_numpy(items[0].pixels.copy()[None])))
    answers = handler.encode(logits, items)
    assert logits.shape == (2, 2, 37, 37)
    torch.testing.assert_close(logits[:1], direct, rtol=1e-5, atol=1e-6)
    for answer, row in zip(answers, logits, strict=True):
        heat = np.asarray(answer["heatmap"])
        assert answer["patch_grid"] == [37, 37] and heat.shape == (37, 37)
        assert answer["fake_probability"] == pytest.approx(float(fake_probability(row[None])[0]), abs=1e-7)
        assert answer["fake_probability"] == pytest.approx(heat.mean(), abs=1e-7)
        assert np.allclose(heat, torch.softmax(row, 0)[0].numpy(), atol=1e-7)  # class 0 is fake
    assert Image.open(io.BytesIO(base64.b64decode(answers[0]["overlay_png"]))).size == (160, 120)
    assert "overlay_png" not in answers[1]


# --- served end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory):
    with running_torchserve(tmp_path_factory.mktemp("patchforensics_ts"), [MODEL]) as ts:
        yield ts


def predict(ts, body: bytes, headers: dict[str, str] | None = None):
    return http_request(f"{ts.inference_url}/predictions/{MODEL}", body, headers or {}, method="POST")


def as_json(image: bytes, **params) -> tuple[bytes, dict[str, str]]:
    return (json.dumps({"image": base64.b64encode(image).decode(), **params}).encode(),
            {"Content-Type": "application/json"})


def multipart_request(image: bytes, **params: str) -> tuple[bytes, dict[str, str]]:
    fields = {"image": ("face.jpg", image, "image/jpeg")}
    fields.update({name: (name, value.encode(), "text/plain") for name, value in params.items()})
    body, ctype = multipart(fields)
    return body, {"Content-Type": ctype}


def answer_of(result, overlay: bool) -> dict:
    """Check one 200 answer's form and return it."""
    status, _, raw = result
    assert status == 200, raw
    answer = json_body(raw)
    assert set(answer) == {"fake_probability", "heatmap", "patch_grid", "model"} | ({"overlay_png"} if overlay
                                                                                      else set())
    assert answer["model"]["name"] == MODEL and answer["model"]["weights"]["kind"] == "random-seeded"
    heat = np.asarray(answer["heatmap"], dtype=float)
    assert answer["patch_grid"] == [37, 37] and heat.shape == tuple(answer["patch_grid"])
    assert ((heat >= 0) & (heat <= 1)).all() and 0.0 <= answer["fake_probability"] <= 1.0
    assert answer["fake_probability"] == pytest.approx(heat.mean(), abs=1e-6)
    return answer


@pytest.fixture(scope="module")
def plain(torchserve) -> dict:
    return answer_of(predict(torchserve, FACE, {"Content-Type": "image/jpeg"}), overlay=False)


@pytest.mark.integration
def test_raw_json_and_multipart_requests_agree_and_overlay_decodes_to_the_input_size(torchserve, plain) -> None:
    with_overlay = answer_of(predict(torchserve, *as_json(FACE, overlay=True)), overlay=True)
    form = answer_of(predict(torchserve, *multipart_request(FACE, overlay="true")), overlay=True)
    quiet = answer_of(predict(torchserve, *as_json(FACE, overlay=False)), overlay=False)
    for other in (with_overlay, form, quiet):
        assert other["fake_probability"] == pytest.approx(plain["fake_probability"], abs=1e-6)
        assert np.allclose(other["heatmap"], plain["heatmap"], atol=1e-6)
    for answer in (with_overlay, form):
        png = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
        assert png.format == "PNG" and png.size == (160, 120)
    handler = handler_for()  # the archive's seeded random weights are entry.build() under seed 0
    with torch.inference_mode():
        local = handler.encode(handler.predict(handler.batch([handler.decode({"body": FACE}, 0)])),
                               [handler.decode({"body": FACE}, 0)])[0]
    assert np.allclose(local["heatmap"], plain["heatmap"], atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("make_request", "needle"),
    [
        (lambda: as_json(FACE, overlay="sometimes"), "'overlay' must be true or false; got 'sometimes'"),
        (lambda: multipart_request(FACE, overlay="2"), "'overlay' must be true or false; got '2'"),
        (lambda: as_json(FACE, layer="block3"), "unknown field(s) 'layer'"),
        (lambda: (b"\x89PNG\r\n\x1a\n" + bytes(40), {"Content-Type": "image/png"}), "'body'"),
        (lambda: (encode(Image.new("RGB", (4, 300))), {"Content-Type": "image/png"}), "at least 8 px"),
    ],
    ids=["overlay-json", "overlay-multipart", "unknown-field", "corrupt-image", "tiny-image"],
)
def test_bad_requests_get_400_and_the_worker_survives(torchserve, plain, make_request, needle: str) -> None:
    status, _, raw = predict(torchserve, *make_request())
    assert status == 400, raw
    answer = json_body(raw)
    assert needle in answer["error"] and answer["model"] == MODEL
    workers = torchserve.model_status(MODEL)
    assert workers and all(w["status"] == "READY" for w in workers)
    again = answer_of(predict(torchserve, FACE, {"Content-Type": "image/jpeg"}), overlay=False)
    assert again["fake_probability"] == pytest.approx(plain["fake_probability"], abs=1e-6)


@pytest.mark.integration
def test_a_bad_request_in_a_batch_fails_alone(torchserve, plain) -> None:
    requests = [as_json(FACE, overlay=True), as_json(FACE, overlay="nope"), (FACE, {"Content-Type": "image/jpeg"})]
    for _attempt in range(3):  # TorchServe batches whatever arrives within maxBatchDelay
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            results = list(pool.map(lambda r: predict(torchserve, *r), requests))
        assert results[1][0] == 400 and "'overlay' must be true or false" in json_body(results[1][2])["error"]
        first, third = answer_of(results[0], overlay=True), answer_of(results[2], overlay=False)
        for answer in (first, third):
            assert answer["fake_probability"] == pytest.approx(plain["fake_probability"], abs=1e-6)
        sizes = [int({k.lower(): v for k, v in r[1].items()}[BATCH_HEADER]) for r in (results[0], results[2])]
        if max(sizes) > 1:
            break
    else:
        pytest.fail("3 concurrent requests were never batched together in 3 attempts")
