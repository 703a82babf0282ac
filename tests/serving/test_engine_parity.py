"""The same zoo models on both engines: TorchServe (.mar) and Triton (`zoo build --engine triton`, the Python
backend running the same handler class), each behind its own gateway, answer the same requests identically.

Same weights (random, seed 0, labelled), same handler code, same inputs: task-route answers are compared byte
for byte, OIP answers tensor for tensor, errors by status and message. Triton directly: a bad request in a
dynamic batch fails alone, and every item of a request with a batch dimension is answered.

Needs the Triton venv (`make .venv-triton/.installed`: PyTriton's tritonserver, torch, this package's
dependencies); skips citing why without it (ZOO_REQUIRE_TRITON=1 makes that a failure).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from PIL import Image

from cli.process import stop_process
from cli.torchserve import TorchServe, free_port
from cli.triton import TritonError, TritonServer, find_triton
from tests.serving.gateway_support import running_gateway
from tests.support import build_archives, http_request, multipart
from zoo._registry import get_entry
from zoo.triton_repo import build_triton_model

pytestmark = pytest.mark.integration

MODELS = ["toy_echo", "detr_resnet50", "ckdn_r50"]
REPO = Path(__file__).resolve().parents[2]


def image_bytes(width: int = 64, height: int = 48, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def require_triton() -> None:
    try:
        find_triton()
    except TritonError as exc:
        if os.environ.get("ZOO_REQUIRE_TRITON") == "1":
            pytest.fail(f"Triton engine: {exc}")
        pytest.skip(f"Triton engine: {exc}")


@contextlib.contextmanager
def both_engines(work: Path, models: list[str], timeout_s: float = 300,
                 config_overrides: dict[str, dict] | None = None) -> Iterator[tuple[TorchServe, TritonServer]]:
    """A TorchServe and a tritonserver serving the same random-weight (seed 0) models, with the same
    `config_overrides` by name (e.g. reduced test sizes); stopped on exit."""
    store, repository = work / "store", work / "triton"
    overrides = config_overrides or {}
    archives = build_archives(store, models, config_overrides=overrides)
    for name in models:
        build_triton_model(get_entry(name), repository, random_weights=True, seed=0, gpu=False,
                           config_overrides=overrides.get(name))
    ts = TorchServe(store, archives, work / "ts-run")
    triton = TritonServer(repository, models, work / "triton-run")
    ts.start()
    triton.start()
    try:
        ts.wait_ready(timeout_s=timeout_s)
        triton.wait_ready(timeout_s=timeout_s)
        yield ts, triton
    finally:
        triton.stop()
        ts.stop()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Both engines over the same random-weight models, each behind a gateway: {"torchserve": gw, "triton": gw,
    "triton_server": TritonServer}."""
    require_triton()
    work = tmp_path_factory.mktemp("engine-parity")
    with both_engines(work, MODELS) as (ts, triton), running_gateway(ts, work / "gw-ts") as gw_ts, \
            running_gateway(triton, work / "gw-triton") as gw_triton:
        yield {"torchserve": gw_ts, "triton": gw_triton, "triton_server": triton}


def task(gateway, model: str, body: bytes, content_type: str, query: str = "") -> tuple[int, bytes]:
    status, _, raw = http_request(f"{gateway.http_url}/v1/models/{model}:predict{query}", body,
                                  {"Content-Type": content_type}, "POST")
    return status, raw


PNG = image_bytes()
JPEG = image_bytes(96, 80, seed=1, fmt="JPEG")
TASK_CASES = {
    "toy raw body": ("toy_echo", PNG, "application/octet-stream", ""),
    "toy json base64 + extra field": (
        "toy_echo", json.dumps({"image": base64.b64encode(PNG).decode(), "note": "hi"}).encode(),
        "application/json", ""),
    "toy query parameter": ("toy_echo", PNG, "application/octet-stream", "?sleep_ms=1"),
    "toy not an image": ("toy_echo", b"not an image", "application/octet-stream", ""),
    "toy sleep_ms out of range": ("toy_echo", PNG, "application/octet-stream", "?sleep_ms=99999"),
    "detr json threshold top_k": (
        "detr_resnet50", json.dumps({"image": base64.b64encode(JPEG).decode(), "threshold": 0, "top_k": 3}).encode(),
        "application/json", ""),
    "detr query parameters": ("detr_resnet50", JPEG, "image/jpeg", "?threshold=0&top_k=2"),
    "detr bad threshold": ("detr_resnet50", JPEG, "image/jpeg", "?threshold=2"),
    "detr unknown field": ("detr_resnet50", JPEG, "image/jpeg", "?treshold=0.5"),
    "ckdn multipart pair": ("ckdn_r50", *multipart({"restored": ("r.png", PNG, "image/png"),
                                                   "degraded": ("d.png", image_bytes(seed=2), "image/png")}), ""),
    "ckdn missing degraded": ("ckdn_r50", *multipart({"restored": ("r.png", PNG, "image/png")}), ""),
}


@pytest.mark.parametrize("case", list(TASK_CASES))
def test_task_routes_answer_alike_on_both_engines(engines: dict, case: str) -> None:
    model, body, content_type, query = TASK_CASES[case]
    ts_status, ts_body = task(engines["torchserve"], model, body, content_type, query)
    triton_status, triton_body = task(engines["triton"], model, body, content_type, query)
    assert (triton_status, triton_body) == (ts_status, ts_body), (case, ts_body[:500], triton_body[:500])
    if ts_status == 200:
        assert json.loads(ts_body)["model"]["weights"]["kind"] == "random-seeded"


def oip_outputs(gateway, model: str, inputs: dict[str, list[bytes]], parameters: dict) -> dict:
    client = tgrpc.InferenceServerClient(gateway.grpc_target)
    tensors = []
    for name, elements in inputs.items():
        tensor = tgrpc.InferInput(name, [len(elements)], "BYTES")
        tensor.set_data_from_numpy(np.array(elements, dtype=object))
        tensors.append(tensor)
    try:
        result = client.infer(model, tensors, parameters=parameters or None)
    except tgrpc.InferenceServerException as exc:
        return {"error": (exc.status(), exc.message())}
    return {o.name: result.as_numpy(o.name).tolist() for o in result.get_response().outputs}


@pytest.mark.parametrize(("model", "inputs", "parameters"), [
    ("toy_echo", {"image": [PNG, image_bytes(seed=3)]}, {}),
    ("detr_resnet50", {"image": [JPEG]}, {"threshold": "0", "top_k": 2}),
    ("ckdn_r50", {"restored": [PNG], "degraded": [image_bytes(seed=2)]}, {}),
    ("ckdn_r50", {"restored": [b"broken"], "degraded": [PNG]}, {}),
], ids=["toy two images", "detr", "ckdn", "ckdn bad image"])
def test_oip_inference_answers_alike_on_both_engines(engines: dict, model: str, inputs: dict,
                                                     parameters: dict) -> None:
    via_ts = oip_outputs(engines["torchserve"], model, inputs, parameters)
    via_triton = oip_outputs(engines["triton"], model, inputs, parameters)
    assert via_triton == via_ts


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_alike_on_both_engines(engines: dict, model: str) -> None:
    docs = {}
    for engine in ("torchserve", "triton"):
        status, _, raw = http_request(f"{engines[engine].http_url}/v2/models/{model}")
        assert status == 200, raw
        doc = json.loads(raw)
        assert doc["platform"].startswith(f"{engine} (weights: random-seeded)")
        docs[engine] = {k: v for k, v in doc.items() if k not in ("platform", "parameters")}
        docs[engine]["parameters"] = {k: v for k, v in doc["parameters"].items() if k != "backend"}
    assert docs["triton"] == docs["torchserve"]


def triton_direct(server: TritonServer, model: str, fields: dict[str, list[bytes]],
                  parameters: dict | None = None, typed: bool = False) -> list[bytes] | dict | str:
    """Triton's own answer: the handler's JSON per item (`output` asked for alone), or with `typed` every
    typed output (nothing asked for: all of them); an error as "status: message"."""
    client = tgrpc.InferenceServerClient(server.grpc_target)
    tensors = []
    for name, elements in fields.items():
        tensor = tgrpc.InferInput(name, [len(elements), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(elements, dtype=object).reshape(-1, 1))
        tensors.append(tensor)
    outputs = None if typed else [tgrpc.InferRequestedOutput("output")]
    try:
        result = client.infer(model, tensors, parameters=parameters, outputs=outputs)
    except tgrpc.InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"
    if typed:
        return {o.name: result.as_numpy(o.name).tolist() for o in result.get_response().outputs}
    return [bytes(v) for v in result.as_numpy("output").reshape(-1)]


def test_a_bad_request_in_a_triton_batch_fails_alone(engines: dict) -> None:
    """DETR batches up to 8 within 50 ms: one broken image among concurrent requests is that request's
    INVALID_ARGUMENT; its batch-mates are answered."""
    server = engines["triton_server"]
    images = [JPEG, b"broken", image_bytes(96, 80, seed=5, fmt="JPEG"), JPEG]
    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(lambda image: triton_direct(server, "detr_resnet50", {"image": [image]},
                                                            {"top_k": 2}), images))
    assert isinstance(results[1], str) and "INVALID_ARGUMENT" in results[1] and "not a recognised image" in results[1]
    for i in (0, 2, 3):
        assert isinstance(results[i], list) and len(json.loads(results[i][0])["detections"]) <= 2, results[i]
    assert results[0] == results[3]


def test_a_triton_request_with_a_batch_dimension_gets_one_answer_per_item(engines: dict) -> None:
    answers = triton_direct(engines["triton_server"], "toy_echo", {"image": [PNG]})
    assert isinstance(answers, list) and json.loads(answers[0])["width"] == 64
    many = triton_direct(engines["triton_server"], "ckdn_r50",
                         {"restored": [PNG, image_bytes(seed=7)], "degraded": [image_bytes(seed=2)] * 2})
    assert isinstance(many, list) and len(many) == 2
    scores = [json.loads(a)["score"] for a in many]
    single = triton_direct(engines["triton_server"], "ckdn_r50",
                           {"restored": [image_bytes(seed=7)], "degraded": [image_bytes(seed=2)]})
    assert json.loads(single[0])["score"] == pytest.approx(scores[1], abs=1e-5)


def test_triton_answers_the_typed_outputs_the_gateway_gives_for_torchserve(engines: dict) -> None:
    """A plain Triton client (no gateway) gets the registry's typed outputs, equal to the gateway's OIP answer
    over TorchServe; metadata lists exactly them (plus `output`, the readable JSON)."""
    server: TritonServer = engines["triton_server"]
    direct = triton_direct(server, "detr_resnet50", {"image": [JPEG]}, {"threshold": "0", "top_k": 2}, typed=True)
    via_ts = oip_outputs(engines["torchserve"], "detr_resnet50", {"image": [JPEG]}, {"threshold": "0", "top_k": 2})
    assert direct == via_ts
    assert list(direct) == [spec.name for spec in get_entry("detr_resnet50").outputs]
    meta = tgrpc.InferenceServerClient(server.grpc_target).get_model_metadata("detr_resnet50", as_json=True)
    assert [o["name"] for o in meta["outputs"]] == [*direct, "output"]
    two = triton_direct(server, "toy_echo", {"image": [PNG]}, typed=True)
    assert two["width"] == [[64]] and two["fields"] == [[b"image"]]


def test_triton_metrics_and_model_config(engines: dict) -> None:
    server: TritonServer = engines["triton_server"]
    status, _, raw = http_request(server.metrics_url)
    assert status == 200 and b"nv_inference_request_success" in raw
    status, _, raw = http_request(f"{server.http_url}/v2/models/detr_resnet50/config")
    config = json.loads(raw)
    assert config["max_batch_size"] == get_entry("detr_resnet50").serving.batch_size
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 50_000
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert json.loads(config["parameters"]["zoo_meta"]["string_value"])["name"] == "detr_resnet50.coco"
    assert Path(server.repository, "detr_resnet50", "1", "model.py").is_file()


def test_zoo_serve_engine_triton_serves_through_the_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    """`zoo serve --engine triton toy_echo`: builds the repository, starts tritonserver and the gateway, answers
    a task-route request, and on SIGTERM (as on Ctrl-C) stops everything (no tritonserver left)."""
    require_triton()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "ZOO_HOME": str(tmp_path / "home"), "ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""}
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--engine", "triton", "toy_echo", "--random-weights",
             "--http-port", str(http_port), "--grpc-port", str(grpc_port),
             "--engine-metrics-port", str(metrics_port), "--run-dir", str(tmp_path / "run")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "press Ctrl-C to stop" not in log.read_text(errors="replace"):
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert "Triton (loopback only)" in log.read_text()
        status, _, raw = http_request(f"http://127.0.0.1:{http_port}/v1/models/toy_echo:predict", PNG,
                                      {"Content-Type": "image/png"}, "POST")
        assert status == 200 and json.loads(raw)["width"] == 64, raw
        status, _, raw = http_request(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b'nv_inference_request_success{model="toy_echo"' in raw
        assert (tmp_path / "home" / "triton_repository" / "toy_echo" / "config.pbtxt").is_file()
    finally:
        code = stop_process(serve, 90)  # SIGTERM: `zoo serve` stops as on Ctrl-C
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert "stopped" in log.read_text()
    left = []  # tritonserver (its own session) and its stubs name the repository in their command lines
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(tmp_path).encode() in cmdline.read_bytes():
                left.append(cmdline.read_bytes().replace(b"\0", b" ")[:200])
    assert not left, f"processes of `zoo serve` outlived it: {left}"
