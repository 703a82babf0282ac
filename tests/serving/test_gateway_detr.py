"""DETR (random weights, real TorchServe) through the gateway: OIP gRPC and the task route give the same
detections as TorchServe itself. Three DETR inferences in all (CPU DETR costs ~1-2 s each)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from PIL import Image

from tests.serving.gateway_support import running_gateway
from tests.support import http_request, json_body, running_torchserve

pytestmark = pytest.mark.integration

MODEL = "detr_resnet50"


def photo() -> bytes:
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((256, 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def without_batch(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "batch_size"}


def test_detr_through_the_gateway_equals_torchserve(tmp_path) -> None:
    pytest.importorskip("zoo.detr")
    image = photo()
    with running_torchserve(tmp_path / "ts", [MODEL]) as ts, running_gateway(ts, tmp_path / "gw") as gw:
        doc = json.dumps({"image": base64.b64encode(image).decode(), "threshold": 0, "top_k": 3}).encode()
        status, _, raw = http_request(f"{ts.inference_url}/predictions/{MODEL}", doc,
                                      {"Content-Type": "application/json"}, "POST")
        assert status == 200, raw
        direct = json_body(raw)
        assert len(direct["detections"]) == 3, direct

        client = tgrpc.InferenceServerClient(gw.grpc_target)
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["inputs"][0]["name"] == "image" and "random-seeded" in meta["platform"]
        tensor = tgrpc.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=object))
        result = client.infer(MODEL, [tensor], parameters={"threshold": "0", "top_k": 3})
        via_oip = {  # the typed outputs, read back into DETR's JSON layout
            "detections": [{"box": box, "score": score, "label_id": label, "label": name.decode()}
                           for box, score, label, name in zip(
                               result.as_numpy("boxes")[0].tolist(), result.as_numpy("scores")[0].tolist(),
                               result.as_numpy("labels")[0].tolist(), result.as_numpy("label_names")[0],
                               strict=True)],
            "image_size": dict(zip(("width", "height"), result.as_numpy("image_size")[0].tolist(), strict=True)),
        }

        status, _, raw = http_request(f"{gw.http_url}/v1/models/{MODEL}:predict", doc,
                                      {"Content-Type": "application/json"}, "POST")
        assert status == 200, raw
        via_task = json_body(raw)

        assert direct["model"]["weights"]["kind"] == "random-seeded"
        assert without_batch(via_task) == without_batch(direct)  # sequential calls: the same batch (of one)
        assert via_oip["image_size"] == direct["image_size"] and len(via_oip["detections"]) == 3
        for typed, expected in zip(via_oip["detections"], direct["detections"], strict=True):  # FP32 on the wire
            assert typed["box"] == pytest.approx(expected["box"], abs=1e-3)
            assert typed["score"] == pytest.approx(expected["score"], abs=1e-6)
            assert (typed["label_id"], typed["label"]) == (expected["label_id"], expected["label"])
