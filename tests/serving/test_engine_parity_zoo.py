"""Every production entry not covered by test_engine_parity.py (every tag: FTCN, the classifiers,
Patch-Forensics, CondInst, DNL, CUT/FastCUT, stereo-from-mono, SCAN) on both engines, asked directly (no
gateway) with the fields the gateway would send: the same answer bytes, and the same refusal message for a bad
request (FTCN's wall-clock `timings_ms` aside). One TorchServe and one tritonserver serve them all (random
weights, seed 0; the dense-output models at `cpu_test_size`, the same on both engines). Slow on CPU (23 models
loaded twice, one FTCN clip each way); skips like the other Triton tests.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from cli.torchserve import TorchServe
from cli.triton import TritonServer
from tests.face_videos import astronaut_video
from tests.handlers.served import cpu_test_size
from tests.serving.test_engine_parity import both_engines, image_bytes, require_triton
from tests.support import http_request, multipart
from zoo._registry import get_entry, list_models

pytestmark = pytest.mark.integration

# Every production entry (every tag of every architecture) besides DETR and CKDN, which test_engine_parity.py
# covers through gateways; the dense-output ones at a CPU test size, the same on both engines.
COVERED_ELSEWHERE = {"detr_resnet50", "ckdn_r50"}
MODELS = [entry.serve_name for entry in sorted(list_models(), key=lambda e: e.name)
          if not entry.task.startswith("test-") and entry.name.split(".")[0] not in COVERED_ELSEWHERE]
OVERRIDES = {name: size for name in MODELS if (size := cpu_test_size(get_entry(name)))}
# Served in two halves, one after the other: all 23 at once (a TorchServe worker and a Triton stub process each)
# peak at ~15 GB on a 24 GB machine; a half stays near 8 GB.
GROUPS = (MODELS[::2], MODELS[1::2])
PNG = image_bytes(72, 64, seed=4)
LEFT, RIGHT = image_bytes(96, 72, seed=5), image_bytes(96, 72, seed=6)


def requests_for(model: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(a valid request's fields, a bad one's): payloads as bytes, parameters as their text."""
    task = get_entry(model).task
    if task == "deepfake-detection":
        return {"video": astronaut_video(32)}, {"video": b"this is not a video" * 100}
    if task == "image-forensics":
        return {"image": PNG, "overlay": b"true"}, {"image": b"not an image"}
    if task == "instance-segmentation":
        return {"image": PNG, "threshold": b"0.0"}, {"image": PNG, "threshold": b"1.5"}
    if task == "semantic-segmentation":
        return {"image": PNG}, {"image": b"not an image"}
    if task == "image-translation":
        return {"image": PNG, "format": b"png"}, {"image": PNG, "format": b"gif"}
    if task == "stereo-depth":
        return {"left": LEFT, "right": RIGHT, "dtype": b"float16"}, {"left": LEFT, "right": PNG}
    return {"image": PNG, "top_k": b"3"}, {"image": PNG, "top_k": b"0"}


@pytest.fixture(scope="class")
def engines(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TorchServe, TritonServer]]:
    """Both engines serving the test class's group of MODELS."""
    require_triton()
    models = GROUPS[request.cls.GROUP]
    with both_engines(tmp_path_factory.mktemp("engine-parity-zoo"), models, timeout_s=900,
                      config_overrides={m: OVERRIDES[m] for m in models if m in OVERRIDES}) as servers:
        yield servers


def via_torchserve(ts: TorchServe, model: str, fields: dict[str, bytes]) -> tuple[int, bytes]:
    body, ctype = multipart({name: (name, data, "application/octet-stream") for name, data in fields.items()})
    status, _, raw = http_request(f"{ts.inference_url}/predictions/{model}", body, {"Content-Type": ctype},
                                  timeout=600)
    return status, raw


def via_triton(triton: TritonServer, model: str, fields: dict[str, bytes]) -> tuple[int, bytes]:
    """Declared inputs as BYTES tensors, the rest as parameters, and `output` alone asked for: as the gateway's
    Triton backend sends a task-route request."""
    client = tgrpc.InferenceServerClient(triton.grpc_target)
    declared = set(get_entry(model).inputs)
    tensors, parameters = [], {}
    for name, data in fields.items():
        if name in declared:
            tensor = tgrpc.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            tensors.append(tensor)
        else:
            parameters[name] = data.decode()
    try:
        result = client.infer(model, tensors, parameters=parameters or None, client_timeout=600,
                              outputs=[tgrpc.InferRequestedOutput("output")])  # the handler's JSON answer
    except tgrpc.InferenceServerException as exc:
        status = 400 if exc.status() == "StatusCode.INVALID_ARGUMENT" else 500
        return status, exc.message().encode()
    return 200, bytes(result.as_numpy("output").reshape(-1)[0])


class TestFirstHalf:
    GROUP = 0

    @pytest.mark.parametrize("model", GROUPS[GROUP])
    def test_answers_alike_on_both_engines(self, engines, model: str) -> None:
        answers_alike(engines, model)


class TestSecondHalf:
    GROUP = 1

    @pytest.mark.parametrize("model", GROUPS[GROUP])
    def test_answers_alike_on_both_engines(self, engines, model: str) -> None:
        answers_alike(engines, model)


def answers_alike(engines: tuple[TorchServe, TritonServer], model: str) -> None:
    """The same answer bytes for a good request and the same refusal for a bad one, on both engines."""
    ts, triton = engines
    good, bad = requests_for(model)
    ts_status, ts_answer = via_torchserve(ts, model, good)
    triton_status, triton_answer = via_triton(triton, model, good)
    assert ts_status == triton_status == 200, (ts_answer[:300], triton_answer[:300])
    if b'"timings_ms"' in ts_answer:  # FTCN reports its stages' wall-clock times: no two runs share those
        ts_doc, triton_doc = json.loads(ts_answer), json.loads(triton_answer)
        assert set(ts_doc.pop("timings_ms")) == set(triton_doc.pop("timings_ms"))
        assert triton_doc == ts_doc
    else:
        assert triton_answer == ts_answer
    assert json.loads(ts_answer)["model"]["weights"]["kind"] == "random-seeded"
    ts_status, ts_error = via_torchserve(ts, model, bad)
    triton_status, triton_error = via_triton(triton, model, bad)
    assert ts_status == triton_status == 400, (ts_error[:300], triton_error[:300])
    assert triton_error.decode() == json.loads(ts_error)["error"]
