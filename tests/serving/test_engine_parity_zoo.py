"""Every production entry not covered by test_engine_parity.py (FTCN, the classifiers, Patch-Forensics and the
breadth-II families: CondInst, DNL, CUT/FastCUT, stereo-from-mono, SCAN) on both engines, asked directly (no
gateway) with the fields the gateway would send: the same answer bytes, and the same refusal message for a bad
request (FTCN's wall-clock `timings_ms` aside). One TorchServe and one tritonserver serve them all (random
weights, seed 0; the breadth-II models at the reduced test sizes of test_gateway_breadth.py, the same on both
engines). Slow on CPU (sixteen models loaded twice, one FTCN clip each way); skips like the other Triton tests.
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
from tests.serving.test_engine_parity import both_engines, image_bytes, require_triton
from tests.serving.test_gateway_breadth import OVERRIDES as BREADTH_OVERRIDES
from tests.support import http_request, multipart
from zoo._registry import get_entry

pytestmark = pytest.mark.integration

# Every production architecture's default entry besides DETR and CKDN (test_engine_parity.py); the other tags
# of an architecture (cut.cat2dog, dnl_r50_d8.ade20k, ...) differ only in weights and labels.
MODELS = ["addernet_resnet20", "autoformer_supernet_b", "bit_m_r50x1", "dgc_resnet18", "ftcn_tt",
          "isqrtcov_resnet50", "mutualnet_mbv2", "patchforensics_block2", "patchforensics_block3",
          "condinst_r50", "dnl_r50_d8", "cut", "fastcut", "stereo_from_mono", "scan_r18", "scan_r50"]
OVERRIDES = {**BREADTH_OVERRIDES,
             "fastcut": {"preprocess": {**get_entry("fastcut").config["preprocess"], "load_size": 64}}}
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


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TorchServe, TritonServer]]:
    require_triton()
    with both_engines(tmp_path_factory.mktemp("engine-parity-zoo"), MODELS, timeout_s=900,
                      config_overrides=OVERRIDES) as servers:
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


@pytest.mark.parametrize("model", MODELS)
def test_every_production_entry_answers_alike_on_both_engines(engines, model: str) -> None:
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
