"""CKDN served by a real TorchServe: (restored, degraded) pairs in, scores out, batching, and bad input.

Random weights: only the contract is checked (range, labelling, batching equivalence), never quality ordering.
"""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from handlers.ckdn_handler import MAX_ASPECT_MISMATCH, CKDNHandler
from handlers.codec import RequestError
from tests.support import http_request, json_body, multipart, running_torchserve

MODEL = "ckdn_r50"
BATCH_HEADER = "x-zoo-batch-size"


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    """A real photograph shipped with scikit-image, downscaled to keep CPU time low."""
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.Resampling.BILINEAR)


def degrade(img: Image.Image, seed: int) -> Image.Image:
    """Blur plus Gaussian noise: a stand-in for a restoration model's degraded input."""
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    noisy = blurred + np.random.default_rng(seed).normal(0, 8, blurred.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_pair(name: str, size: tuple[int, int], seed: int) -> tuple[bytes, bytes]:
    """(restored JPEG, degraded PNG): the "restoration" is a sharpened copy of the degraded image."""
    degraded = degrade(photo(name, size), seed)
    restored = degraded.filter(ImageFilter.UnsharpMask(radius=2, percent=120))
    return encode(restored, "JPEG"), encode(degraded, "PNG")


PAIRS = [
    make_pair("astronaut", (128, 128), 0),
    make_pair("coffee", (150, 100), 1),
    make_pair("chelsea", (150, 100), 2),
    make_pair("rocket", (144, 96), 3),
]


def multipart_pair(restored: bytes, degraded: bytes) -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart({"restored": ("restored.jpg", restored, "image/jpeg"),
                             "degraded": ("degraded.png", degraded, "image/png")})
    return body, {"Content-Type": ctype}


def json_pair(restored: bytes, degraded: bytes) -> tuple[bytes, dict[str, str]]:
    payload = {"restored": base64.b64encode(restored).decode(),
               "degraded": base64.b64encode(degraded).decode()}
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


# --- in-process decode (no server): the named-input shapes the gateway's gRPC path produces ------------
def test_decode_accepts_named_inputs_as_bytes_or_base64() -> None:
    handler = CKDNHandler()
    restored, degraded = PAIRS[1]
    as_bytes = handler.decode({"restored": bytearray(restored), "degraded": degraded}, 0)
    as_text = handler.decode({"restored": base64.b64encode(restored).decode(),
                              "degraded": base64.b64encode(degraded).decode()}, 0)
    raw_json = handler.decode({"body": json_pair(restored, degraded)[0]}, 0)  # JSON sent without a JSON type
    assert as_bytes.shape == (2, 288, 288, 3)
    assert np.array_equal(as_bytes, as_text) and np.array_equal(as_bytes, raw_json)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        ({"restored": PAIRS[0][0]}, "missing image 'degraded'"),
        ({"body": b"\xff\xd8\xffnot-a-pair"}, "missing image 'restored' and 'degraded'"),
        ({"restored": PAIRS[0][0], "degraded": b"GIF89a-broken"}, "'degraded' is not a recognised image"),
        ({"restored": "not base64!", "degraded": PAIRS[0][1]}, "'restored' is a string but not valid base64"),
        ({"restored": PAIRS[0][0], "degraded": encode(photo("camera", (300, 100)), "PNG")}, "aspect ratios"),
    ],
    ids=["missing-degraded", "raw-single-image", "corrupt-degraded", "bad-base64", "aspect"],
)
def test_decode_errors_name_the_problem(request_, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        CKDNHandler().decode(request_, 0)
    assert err.value.status == 400 and needle in err.value.message


def test_aspect_limit_allows_small_mismatch() -> None:
    restored = encode(photo("astronaut", (160, 120)), "PNG")  # 4:3
    degraded = encode(photo("astronaut", (160, 90)), "PNG")  # 16:9 -> 1.33x apart
    assert (16 / 9) / (4 / 3) < MAX_ASPECT_MISMATCH
    assert CKDNHandler().decode({"restored": restored, "degraded": degraded}, 0).shape == (2, 288, 288, 3)


# --- served end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory):
    with running_torchserve(tmp_path_factory.mktemp("ckdn_ts"), [MODEL]) as ts:
        yield ts


def predict(ts, body: bytes, headers: dict[str, str]):
    return http_request(f"{ts.inference_url}/predictions/{MODEL}", body, headers, method="POST")


def score_of(result) -> float:
    status, _, raw = result
    assert status == 200, raw
    answer = json_body(raw)
    assert set(answer) == {"score", "model"}
    assert answer["model"]["name"] == MODEL
    assert answer["model"]["weights"]["kind"] == "random-seeded"  # random weights are always labelled
    assert 0.0 <= answer["score"] <= 1.0
    return answer["score"]


def batch_size_of(result) -> int:
    headers = {k.lower(): v for k, v in result[1].items()}
    return int(headers[BATCH_HEADER])


@pytest.mark.integration
def test_multipart_and_json_give_the_same_score(torchserve) -> None:
    multi = predict(torchserve, *multipart_pair(*PAIRS[0]))
    as_json = predict(torchserve, *json_pair(*PAIRS[0]))
    assert score_of(multi) == pytest.approx(score_of(as_json), abs=1e-6)
    assert batch_size_of(multi) == batch_size_of(as_json) == 1


@pytest.mark.integration
def test_concurrent_pairs_are_batched_and_match_singles(torchserve) -> None:
    singles = [score_of(predict(torchserve, *multipart_pair(*pair))) for pair in PAIRS]
    for _attempt in range(3):  # TorchServe forms batches from whatever has arrived within maxBatchDelay
        with ThreadPoolExecutor(max_workers=len(PAIRS)) as pool:
            results = list(pool.map(lambda pair: predict(torchserve, *json_pair(*pair)), PAIRS))
        batched = [score_of(r) for r in results]
        np.testing.assert_allclose(batched, singles, rtol=0, atol=1e-6)
        if max(batch_size_of(r) for r in results) > 1:
            break
    else:
        pytest.fail("4 concurrent pairs were never batched together in 3 attempts")


def multipart_parts(**parts: bytes) -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart({name: (f"{name}.img", data, "application/octet-stream")
                             for name, data in parts.items()})
    return body, {"Content-Type": ctype}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("make_request", "needle"),
    [
        (lambda: multipart_parts(restored=PAIRS[0][0]), "missing image 'degraded'"),
        (lambda: (json.dumps({"degraded": base64.b64encode(PAIRS[0][1]).decode()}).encode(),
                  {"Content-Type": "application/json"}), "missing image 'restored'"),
        (lambda: multipart_parts(restored=PAIRS[0][0], degraded=b"\x89PNG\r\n\x1a\n" + bytes(64)),
         "'degraded'"),
        (lambda: multipart_parts(restored=PAIRS[0][0], degraded=encode(photo("camera", (240, 80)), "PNG")),
         "aspect ratios"),
    ],
    ids=["missing-degraded", "missing-restored", "corrupt-degraded", "aspect-mismatch"],
)
def test_bad_pairs_get_400_and_the_worker_survives(torchserve, make_request, needle: str) -> None:
    status, _, raw = predict(torchserve, *make_request())
    assert status == 400, raw
    answer = json_body(raw)
    assert needle in answer["error"] and answer["model"] == MODEL
    score_of(predict(torchserve, *multipart_pair(*PAIRS[1])))  # the next good request is served
    workers = torchserve.model_status(MODEL)
    assert workers and all(w["status"] == "READY" for w in workers)


@pytest.mark.integration
def test_bad_pair_in_a_batch_fails_alone(torchserve) -> None:
    requests = [multipart_parts(restored=PAIRS[2][0]), multipart_pair(*PAIRS[2]), multipart_pair(*PAIRS[3])]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        results = list(pool.map(lambda r: predict(torchserve, *r), requests))
    assert results[0][0] == 400 and "'degraded'" in json_body(results[0][2])["error"]
    assert all(0.0 <= score_of(r) <= 1.0 for r in results[1:])


@pytest.mark.integration
def test_archive_records_random_weights_and_batching(torchserve) -> None:
    import zipfile

    import yaml

    from zoo.mar import read_archive_meta

    mar = Path(torchserve.model_store) / f"{MODEL}.mar"
    meta = read_archive_meta(mar)
    assert meta["serve_name"] == MODEL and meta["name"] == "ckdn_r50.pipal"
    assert meta["weights"]["kind"] == "random-seeded"
    with zipfile.ZipFile(mar) as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    assert (config["batchSize"], config["maxBatchDelay"]) == (16, 20)
