"""DETR served by a real TorchServe: real photographs in, detections out, batching, and bad input."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.support import http_request, json_body, multipart, running_torchserve

pytestmark = pytest.mark.integration

MODEL = "detr_resnet50"


def photo_bytes(name: str, fmt: str = "JPEG", scale: float = 0.5) -> bytes:
    """A real photograph shipped with scikit-image, downscaled to keep CPU time low."""
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    img = img.convert("RGB").resize((int(img.width * scale), int(img.height * scale)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory):
    with running_torchserve(tmp_path_factory.mktemp("detr_ts"), [MODEL]) as ts:
        yield ts


def predict(ts, body: bytes, headers: dict[str, str] | None = None):
    return http_request(f"{ts.inference_url}/predictions/{MODEL}", body, headers or {}, method="POST")


def predict_with_params(ts, image: bytes, **params: str):
    """TorchServe drops query strings on raw bodies: per-request parameters travel as multipart fields."""
    body, ctype = multipart({"image": ("photo.jpg", image, "image/jpeg"), **params})
    return predict(ts, body, {"Content-Type": ctype})


def check_detections(answer: dict, width: int, height: int, threshold: float) -> None:
    assert answer["image_size"] == {"width": width, "height": height}
    assert answer["model"]["name"] == MODEL
    assert answer["model"]["weights"]["kind"] == "random-seeded"  # random weights are always labelled
    scores = [d["score"] for d in answer["detections"]]
    assert scores == sorted(scores, reverse=True)
    for det in answer["detections"]:
        assert set(det) == {"label", "label_id", "score", "box"}
        assert isinstance(det["label"], str) and isinstance(det["label_id"], int)
        assert 1 <= det["label_id"] <= 90
        assert threshold <= det["score"] <= 1.0
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def test_real_photo_raw_body(torchserve) -> None:
    body = photo_bytes("astronaut")  # 256x256 after downscale
    status, _, raw = predict(torchserve, body, {"Content-Type": "image/jpeg"})
    assert status == 200, raw
    answer = json_body(raw)
    check_detections(answer, 256, 256, 0.7)  # default threshold
    status, _, raw = predict_with_params(torchserve, body, threshold="0", top_k="5")
    assert status == 200, raw
    answer = json_body(raw)
    assert len(answer["detections"]) == 5
    check_detections(answer, 256, 256, 0.0)


def test_real_photo_multipart_and_json_agree(torchserve) -> None:
    png = photo_bytes("coffee", "PNG")  # 300x200
    body, ctype = multipart({"image": ("coffee.png", png, "image/png"), "threshold": "0", "top_k": "3"})
    status, _, raw_multi = predict(torchserve, body, {"Content-Type": ctype})
    assert status == 200, raw_multi
    payload = json.dumps({"image": base64.b64encode(png).decode(), "threshold": 0.0, "top_k": 3}).encode()
    status, _, raw_json = predict(torchserve, payload, {"Content-Type": "application/json"})
    assert status == 200, raw_json
    multi, as_json = json_body(raw_multi), json_body(raw_json)
    check_detections(multi, 300, 200, 0.0)
    assert len(multi["detections"]) == 3
    if multi["batch_size"] == as_json["batch_size"] == 1:  # same image, same padding -> same answer
        assert multi["detections"] == as_json["detections"]


def test_concurrent_requests_are_batched(torchserve) -> None:
    images = [photo_bytes(name, scale=0.25) for name in ("astronaut", "coffee", "chelsea", "rocket")] * 2
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        results = list(pool.map(lambda b: http_request(f"{torchserve.inference_url}/predictions/{MODEL}", b,
                                                       {"Content-Type": "image/jpeg"}, "POST", timeout=600), images))
    assert all(status == 200 for status, _, _ in results), [r[2][:200] for r in results if r[0] != 200]
    batch_sizes = [json_body(raw)["batch_size"] for _, _, raw in results]
    header_sizes = [int(headers.get("X-Zoo-Batch-Size", headers.get("x-zoo-batch-size", "0")))
                    for _, headers, _ in results]
    assert batch_sizes == header_sizes
    # 8 requests against one worker whose forward takes seconds on CPU: while the first batch runs, the
    # others queue up and must be drained together (batchSize 8), not one by one.
    assert max(batch_sizes) > 1, batch_sizes
    assert sum(1 for b in batch_sizes if b > 1) >= 2


def huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b"\xff\xd8\xff\xe0corrupt-jpeg" + bytes(100), "image/jpeg", 400, "image"),
        (b"", "image/jpeg", 400, "image"),
        (b"hello, this is plain text and not an image at all", "text/plain", 400, "image"),
        (b"{\"image\": \"not base64!!\"}", "application/json", 400, "base64"),
        (b"{\"picture\": \"\"}", "application/json", 400, "image"),
        (b"{not json", "application/json", 400, "JSON"),
    ],
    ids=["corrupt", "empty", "text", "bad-base64", "wrong-field", "broken-json"],
)
def test_bad_input_gets_4xx_and_worker_survives(torchserve, body, ctype, status, needle) -> None:
    got, _, raw = predict(torchserve, body, {"Content-Type": ctype})
    assert got == status, raw
    assert needle.lower() in json_body(raw)["error"].lower()


def test_huge_image_and_bad_params_then_good_request(torchserve) -> None:
    got, _, raw = predict(torchserve, huge_png(), {"Content-Type": "image/png"})
    assert got == 413, raw
    assert "20000x20000" in json_body(raw)["error"]
    got, _, raw = predict_with_params(torchserve, photo_bytes("astronaut", scale=0.25), threshold="7")
    assert got == 400 and "threshold" in json_body(raw)["error"]
    got, _, raw = predict_with_params(torchserve, photo_bytes("astronaut", scale=0.25), top_k="abc")
    assert got == 400 and "top_k" in json_body(raw)["error"]
    # the worker is still alive and serving
    got, _, raw = predict(torchserve, photo_bytes("chelsea", scale=0.25), {"Content-Type": "image/jpeg"})
    assert got == 200, raw
    workers = torchserve.model_status(MODEL)
    assert workers and all(w["status"] == "READY" for w in workers)


def test_archive_records_random_weights(torchserve) -> None:
    from zoo.mar import read_archive_meta

    meta = read_archive_meta(Path(torchserve.model_store) / f"{MODEL}.mar")
    assert meta["weights"]["kind"] == "random-seeded" and meta["weights"]["seed"] == 0
    assert meta["serve_name"] == MODEL and meta["name"] == "detr_resnet50.coco" and meta["config"]["num_queries"] == 100
