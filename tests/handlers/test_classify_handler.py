"""The generic classification handler: decoding and knob validation in process, batch grouping by knob
setting against direct model calls, and AutoFormer served end to end through a real TorchServe (one
archive, three subnets chosen per request).

Random weights: answers are checked for form, consistency and knob routing, never for class quality.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from handlers.classify_handler import ClassifyHandler
from handlers.codec import RequestError
from tests.handlers.served import encode, photo
from tests.support import http_request, json_body, multipart, running_torchserve
from zoo import get_entry
from zoo.classify import ClassifyInput

AUTOFORMER = "autoformer_supernet_b"
BATCH_HEADER = "x-zoo-batch-size"


CAT = encode(photo("chelsea", (120, 80)), "JPEG")
COFFEE = encode(photo("coffee", (96, 64)))


def handler_for(name: str) -> ClassifyHandler:
    """A handler bound to an entry without TorchServe (enough for decode/batch/encode)."""
    handler = ClassifyHandler()
    handler.entry = get_entry(name)
    handler.device = torch.device("cpu")
    handler.meta = {"weights": {"kind": "random-seeded"}}
    return handler


# --- in process --------------------------------------------------------------------------------------
def test_decode_takes_knobs_from_fields_json_and_query_alike() -> None:
    handler = handler_for("mutualnet_mbv2")
    raw = handler.decode({"body": COFFEE, "width": b"0.7", "resolution": "160"}, 0)
    as_json = handler.decode({"body": json.dumps({"image": base64.b64encode(COFFEE).decode(), "width": 0.7,
                                                  "resolution": 160, "top_k": 3}).encode()}, 0)
    parsed = handler.decode({"body": {"image": base64.b64encode(COFFEE).decode(), "width": "0.70",
                                      "resolution": 160.0}}, 0)  # TorchServe-parsed JSON, lenient numbers
    default = handler.decode({"image": bytearray(COFFEE)}, 0)
    assert raw.pixels.shape == (224, 224, 3) and raw.pixels.dtype == np.uint8
    assert np.array_equal(raw.pixels, as_json.pixels) and np.array_equal(raw.pixels, default.pixels)
    assert raw.knobs == as_json.knobs == parsed.knobs == {"width": 0.7, "resolution": 160}
    assert (raw.top_k, as_json.top_k) == (5, 3)
    assert default.knobs == {"width": 1.0, "resolution": 224}


@pytest.mark.parametrize(
    ("model", "request_", "needle"),
    [
        (AUTOFORMER, {"body": CAT, "subnet": "huge"}, "'subnet' must be one of tiny, small, base; got 'huge'"),
        (AUTOFORMER, {"body": CAT, "width": "0.7"}, "unknown field(s) 'width'"),
        (AUTOFORMER, {"body": CAT, "subnet": 3}, "'subnet' must be one of tiny, small, base"),
        ("mutualnet_mbv2", {"body": CAT, "width": "0.8"}, "'width' must be one of 0.7, 0.9, 1.0; got '0.8'"),
        ("mutualnet_mbv2", {"body": CAT, "resolution": "160.5"}, "'resolution' must be one of 224, 192, 160, 128"),
        ("mutualnet_mbv2", {"body": CAT, "width": True}, "'width' must be one of"),
        ("dgc_resnet18", {"body": CAT, "subnet": "tiny"}, "allowed: image, top_k"),
        ("dgc_resnet18", {"body": CAT, "top_k": "1001"}, "'top_k' must be between 1 and 1000"),
        ("dgc_resnet18", {"body": b"not an image"}, "is not a recognised image"),
        ("dgc_resnet18", {"body": json.dumps({"top_k": 3}).encode()}, "no image in the request"),
    ],
    ids=["af-subnet", "af-foreign-knob", "af-subnet-type", "mn-width", "mn-resolution", "mn-bool",
         "dgc-no-knobs", "dgc-top-k", "dgc-bad-image", "dgc-no-image"],
)
def test_bad_requests_are_400_naming_the_allowed_values(model: str, request_: dict, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        handler_for(model).decode(request_, 0)
    assert err.value.status == 400 and needle in err.value.message


def test_a_mixed_batch_is_grouped_by_knobs_and_equals_direct_calls() -> None:
    """MutualNet (small, seeded random weights): one handler batch with three knob settings."""
    handler = handler_for("mutualnet_mbv2")
    torch.manual_seed(0)
    handler.model = handler.entry.build().eval()
    for module in handler.model.modules():  # fan-in init keeps the signal alive through the depthwise convs
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
    settings = [(1.0, 224), (0.7, 160), (1.0, 224), (0.9, 128)]
    items = [handler.decode({"body": img, "width": str(w), "resolution": str(r), "top_k": "4"}, 0)
             for img, (w, r) in zip([CAT, COFFEE, COFFEE, CAT], settings, strict=True)]
    groups = handler.batch(items)
    assert [(g[0]["width"], g[0]["resolution"], g[1]) for g in groups] == [
        (1.0, 224, [0, 2]), (0.7, 160, [1]), (0.9, 128, [3])]
    with torch.inference_mode():
        logits = handler.predict(groups)
        direct = [handler.model(handler.preprocess.normalize(torch.from_numpy(item.pixels.copy()[None])),
                                **item.knobs)[0] for item in items]
    assert len(logits) == len(items)
    for got, want in zip(logits, direct, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # batch of 2 vs 1: float32 rounding
    assert (direct[0] - direct[1]).abs().max() > 0.1  # the groups really ran different sub-networks
    answers = handler.encode(logits, items)
    assert [a["knobs"] for a in answers] == [item.knobs for item in items]
    assert all(len(a["top_k"]) == 4 for a in answers)


def test_labels_from_the_entry_config_name_the_classes() -> None:
    handler = handler_for("dgc_resnet18")
    handler.__dict__["labels"] = [f"class {i}" for i in range(1000)]  # an entry that carries names
    logits = torch.full((1000,), -5.0)
    logits[[7, 3]] = torch.tensor([4.0, 3.0])
    answer = handler.encode([logits], [ClassifyInput(np.zeros((224, 224, 3), np.uint8), {}, 2)])[0]
    assert [(p["index"], p["label"]) for p in answer["top_k"]] == [(7, "class 7"), (3, "class 3")]
    assert answer["knobs"] == {} and answer["top_k"][0]["score"] > answer["top_k"][1]["score"]


# --- served end to end: AutoFormer, one archive, three subnets ------------------------------------
@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory):
    with running_torchserve(tmp_path_factory.mktemp("classify_ts"), [AUTOFORMER]) as ts:
        yield ts


def predict(ts, body: bytes, headers: dict[str, str] | None = None):
    return http_request(f"{ts.inference_url}/predictions/{AUTOFORMER}", body, headers or {}, method="POST")


def as_json(image: bytes, **params) -> tuple[bytes, dict[str, str]]:
    return (json.dumps({"image": base64.b64encode(image).decode(), **params}).encode(),
            {"Content-Type": "application/json"})


def multipart_request(image: bytes, **params: str) -> tuple[bytes, dict[str, str]]:
    fields = {"image": ("image.jpg", image, "image/jpeg")}
    fields.update({name: (name, value.encode(), "text/plain") for name, value in params.items()})
    body, ctype = multipart(fields)
    return body, {"Content-Type": ctype}


def answer_of(result, subnet: str, k: int = 5) -> dict:
    """Check one 200 answer's form and return it."""
    status, _, raw = result
    assert status == 200, raw
    answer = json_body(raw)
    assert set(answer) == {"top_k", "knobs", "model"}
    assert answer["knobs"] == {"subnet": subnet}
    assert answer["model"]["name"] == AUTOFORMER and answer["model"]["weights"]["kind"] == "random-seeded"
    preds = answer["top_k"]
    assert len(preds) == k and all(set(p) == {"label", "index", "score"} for p in preds)
    assert all(p["label"] is None and 0 <= p["index"] < 1000 for p in preds)  # no names: indices only
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] and sum(scores) <= 1 + 1e-6
    assert len({p["index"] for p in preds}) == k
    return answer


def batch_size_of(result) -> int:
    return int({k.lower(): v for k, v in result[1].items()}[BATCH_HEADER])


@pytest.fixture(scope="module")
def singles(torchserve) -> dict[str, dict]:
    """One answer per subnet for the cat photo, each request alone (multipart or JSON)."""
    return {
        "tiny": answer_of(predict(torchserve, *multipart_request(CAT, subnet="tiny")), "tiny"),
        "small": answer_of(predict(torchserve, *as_json(CAT, subnet="small")), "small"),
        "base": answer_of(predict(torchserve, *as_json(CAT, subnet="base")), "base"),
    }


@pytest.mark.integration
def test_one_archive_serves_three_different_subnets(singles: dict[str, dict], torchserve) -> None:
    tops = {name: [(p["index"], round(p["score"], 6)) for p in a["top_k"]] for name, a in singles.items()}
    assert len({tuple(t) for t in tops.values()}) == 3, tops  # three different networks answered
    default = answer_of(predict(torchserve, CAT, {"Content-Type": "image/jpeg"}), "base")  # raw body: default
    assert [p["index"] for p in default["top_k"]] == [p["index"] for p in singles["base"]["top_k"]]
    np.testing.assert_allclose([p["score"] for p in default["top_k"]],
                               [p["score"] for p in singles["base"]["top_k"]], atol=1e-6)


@pytest.mark.integration
def test_mixed_subnets_in_one_batch_match_single_requests(singles: dict[str, dict], torchserve) -> None:
    subnets = ["tiny", "small", "tiny"]
    for _attempt in range(3):  # TorchServe batches whatever arrives within maxBatchDelay
        with ThreadPoolExecutor(max_workers=len(subnets)) as pool:
            results = list(pool.map(lambda s: predict(torchserve, *as_json(CAT, subnet=s)), subnets))
        for subnet, result in zip(subnets, results, strict=True):
            answer = answer_of(result, subnet)
            assert [p["index"] for p in answer["top_k"]] == [p["index"] for p in singles[subnet]["top_k"]]
            np.testing.assert_allclose([p["score"] for p in answer["top_k"]],
                                       [p["score"] for p in singles[subnet]["top_k"]], atol=1e-5)
        if max(batch_size_of(r) for r in results) > 1:
            break
    else:
        pytest.fail("3 concurrent requests were never batched together in 3 attempts")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("make_request", "needle"),
    [
        (lambda: as_json(CAT, subnet="large"), "'subnet' must be one of tiny, small, base; got 'large'"),
        (lambda: multipart_request(CAT, subnet="B"), "'subnet' must be one of tiny, small, base; got 'B'"),
        (lambda: as_json(CAT, width=0.7), "unknown field(s) 'width'"),
        (lambda: as_json(CAT, top_k=0), "'top_k' must be between 1 and 1000"),
        (lambda: (b"\x89PNG\r\n\x1a\n" + bytes(40), {"Content-Type": "image/png"}), "'body'"),
    ],
    ids=["bad-subnet", "bad-subnet-multipart", "foreign-knob", "top-k", "corrupt-image"],
)
def test_bad_knobs_get_400_and_the_worker_survives(torchserve, make_request, needle: str) -> None:
    status, _, raw = predict(torchserve, *make_request())
    assert status == 400, raw
    answer = json_body(raw)
    assert needle in answer["error"] and answer["model"] == AUTOFORMER
    workers = torchserve.model_status(AUTOFORMER)
    assert workers and all(w["status"] == "READY" for w in workers)


@pytest.mark.integration
def test_bad_request_in_a_batch_fails_alone(torchserve) -> None:
    requests = [as_json(COFFEE, subnet="tiny", top_k=2), as_json(COFFEE, subnet="xl"), as_json(COFFEE, subnet="tiny")]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        results = list(pool.map(lambda r: predict(torchserve, *r), requests))
    assert results[1][0] == 400 and "'subnet' must be one of" in json_body(results[1][2])["error"]
    first, third = answer_of(results[0], "tiny", k=2), answer_of(results[2], "tiny")
    assert [p["index"] for p in first["top_k"]] == [p["index"] for p in third["top_k"][:2]]


@pytest.mark.integration
def test_archive_declares_the_knobs(torchserve) -> None:
    from zoo.mar import read_archive_meta

    meta = read_archive_meta(Path(torchserve.model_store) / f"{AUTOFORMER}.mar")
    assert meta["task"] == "image-classification"
    assert meta["config"]["knobs"] == {"subnet": {"choices": ["tiny", "small", "base"], "default": "base"}}
    assert meta["config"]["preprocess"]["interpolation"] == "bicubic"
