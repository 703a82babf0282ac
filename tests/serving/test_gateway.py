"""The gateway end to end: real TorchServe (tiny test-only `toy_echo`), real gateway subprocess, unmodified
tritonclient (HTTP, gRPC sync and asyncio): protocol parity, auth on every route, limits, deadlines,
errors, metrics, task routes, and the closed-stream guard."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from cli.gateway import GatewayProcess
from cli.torchserve import TorchServe
from proto import oip
from serving.rest import ROUTES
from tests.serving.gateway_support import FULL_KEY, TOY_KEY, bearer, infer_over_both, png_bytes, running_gateway
from tests.serving.gateway_support import image_input as support_image_input
from tests.support import http_request, json_body, multipart, running_torchserve
from zoo.toy import TOY_ECHO

pytestmark = pytest.mark.integration

PNG = png_bytes()
CONFIG = {
    "models": {
        "toy_echo": {},
        "toy_fast": {"model": "toy_echo", "deadline_s": 0.4},  # for the deadline test
        "toy_small": {"model": "toy_echo", "max_request_bytes": 4096},  # for the size-limit test
        "toy_metrics": {"model": "toy_echo"},  # counted by the metrics test alone
    },
    "auth": {"keys": [{"key": FULL_KEY, "name": "full", "models": ["*"]},
                      {"key": TOY_KEY, "name": "toy", "models": ["toy_echo"]}]},
}
AUTH = bearer(FULL_KEY)  # pass copies to tritonclient: it adds headers to the dict it is given
GRPC_AUTH = [("authorization", f"Bearer {FULL_KEY}")]


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> TorchServe:
    with running_torchserve(tmp_path_factory.mktemp("ts"), ["toy_echo"]) as server:
        yield server


@pytest.fixture(scope="module")
def gw(ts: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    with running_gateway(ts, tmp_path_factory.mktemp("gw"), CONFIG) as gateway:
        yield gateway


def direct_rest(ts: TorchServe, body: bytes, content_type: str = "application/octet-stream") -> bytes:
    status, _, answer = http_request(f"{ts.inference_url}/predictions/toy_echo", body,
                                     {"Content-Type": content_type}, "POST")
    assert status == 200, answer
    return answer


def image_input(module, data: bytes = PNG, binary: bool = True):
    return support_image_input(module, data, binary)


def without_fields(answer: bytes) -> dict:
    """A toy answer minus the field names the handler saw (they differ by transport: body vs image)."""
    doc = json.loads(answer)
    doc.pop("fields")
    return doc


# --- protocol parity with tritonclient ------------------------------------------------------------------
def test_http_client_metadata_readiness_and_infer(gw: GatewayProcess, ts: TorchServe) -> None:
    client = thttp.InferenceServerClient(gw.http_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready(headers=dict(AUTH))
    assert client.get_server_metadata(headers=dict(AUTH))["name"] == "zoo-gateway"
    meta = client.get_model_metadata("toy_echo", headers=dict(AUTH))
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": s.name, "datatype": s.datatype, "shape": [-1, *s.shape]}
                               for s in TOY_ECHO.outputs]  # the registry's declaration, batch dimension first
    assert meta["parameters"]["random_weights"] is True and "random-seeded" in meta["platform"]
    assert client.is_model_ready("toy_echo", headers=dict(AUTH))

    # binary tensors (tritonclient's default) and outputs: typed, exactly the declared ones, saying what the
    # handler's JSON answer says
    result = client.infer("toy_echo", [image_input(thttp)], headers=dict(AUTH))
    direct = json.loads(direct_rest(ts, PNG))
    response = result.get_response()
    assert [(o["name"], o["datatype"]) for o in response["outputs"]] == [(s.name, s.datatype)
                                                                         for s in TOY_ECHO.outputs]
    assert all(spec.accepts(o["datatype"], o["shape"][1:]) for spec, o in zip(TOY_ECHO.outputs,
                                                                              response["outputs"], strict=True))
    assert result.as_numpy("width").tolist() == [[16]] and result.as_numpy("height").tolist() == [[12]]
    assert result.as_numpy("mean")[0].tolist() == pytest.approx(direct["mean"])
    assert result.as_numpy("bytes").tolist() == [[direct["bytes"]]]

    # JSON tensors in and out (a JSON FP32 input becomes the handler field sleep_ms; outputs asked as JSON)
    sleep = thttp.InferInput("sleep_ms", [1], "FP32")
    sleep.set_data_from_numpy(np.array([1.0], np.float32), binary_data=False)
    outputs = [thttp.InferRequestedOutput("fields", binary_data=False),
               thttp.InferRequestedOutput("width", binary_data=False)]
    result = client.infer("toy_echo", [image_input(thttp), sleep], outputs=outputs, headers=dict(AUTH))
    doc = result.get_response()
    assert [o["name"] for o in doc["outputs"]] == ["fields", "width"] and doc["outputs"][1]["data"] == [16]
    assert doc["outputs"][0]["data"] == ["image", "sleep_ms"]


def test_model_config_and_statistics_from_torchserve(gw: GatewayProcess) -> None:
    """Model config from the archive's declared tensors and TorchServe's batching/workers (toy_echo: batch size
    1, one worker, so no dynamic batching); statistics count what the gateway served, on both protocols."""
    client = thttp.InferenceServerClient(gw.http_url.removeprefix("http://"))
    config = client.get_model_config("toy_echo", headers=dict(AUTH))
    assert (config["name"], config["max_batch_size"], config["backend"]) == ("toy_echo", 1, "torchserve")
    assert "dynamic_batching" not in config and config["instance_group"][0]["count"] == 1
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("image", "TYPE_STRING", [1])]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [(s.name, list(s.shape)) for s in TOY_ECHO.outputs]
    gconfig = tgrpc.InferenceServerClient(gw.grpc_target).get_model_config(
        "toy_echo", headers=dict(GRPC_AUTH), as_json=True)["config"]
    assert [o["name"] for o in gconfig["output"]] == [o["name"] for o in config["output"]]

    def successes() -> int:
        stats = client.get_inference_statistics("toy_echo", headers=dict(AUTH))["model_stats"]
        return sum(s["inference_stats"]["success"]["count"] for s in stats)

    before = successes()
    client.infer("toy_echo", [image_input(thttp)], headers=dict(AUTH))
    tgrpc.InferenceServerClient(gw.grpc_target).infer("toy_echo", [image_input(tgrpc)], headers=dict(GRPC_AUTH))
    assert successes() == before + 2


def test_plain_json_request_and_handler_400(gw: GatewayProcess) -> None:
    def json_infer(data: str) -> tuple[int, dict]:
        body = json.dumps({"id": "j1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                    "data": [data]}]}).encode()
        status, _, answer = http_request(f"{gw.http_url}/v2/models/toy_echo/infer", body,
                                         {**AUTH, "Content-Type": "application/json"}, "POST")
        return status, json_body(answer)

    # `image` is a binary input (its archive says so): JSON data is base64
    status, answer = json_infer(base64.b64encode(b"not an image").decode())
    assert status == 400  # the handler's own 400, with its message, through TorchServe's gRPC API
    assert answer == {"error": "'image' is not a recognised image (send JPEG or PNG bytes)"}
    status, answer = json_infer("not an image")  # not base64: the gateway says so
    assert status == 400 and "input 'image': element 0 is not base64" in answer["error"]
    status, answer = json_infer(base64.b64encode(PNG).decode())  # a base64 PNG: answered as the binary one
    assert status == 200 and answer["id"] == "j1"
    assert next(o for o in answer["outputs"] if o["name"] == "bytes")["data"] == [len(PNG)]


def test_grpc_client_sync_and_asyncio(gw: GatewayProcess, ts: TorchServe) -> None:
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    assert client.is_server_live() and client.is_server_ready(headers=dict(GRPC_AUTH))
    assert client.get_server_metadata(headers=dict(GRPC_AUTH)).name == "zoo-gateway"
    meta = client.get_model_metadata("toy_echo", headers=dict(GRPC_AUTH))
    assert meta.inputs[0].name == "image" and "random-seeded" in meta.platform
    assert client.is_model_ready("toy_echo", headers=dict(GRPC_AUTH))
    images = tgrpc.InferInput("image", [2], "BYTES")
    other = png_bytes(20, 10, (0, 0, 255))
    images.set_data_from_numpy(np.array([PNG, other], dtype=object))
    result = client.infer("toy_echo", [images], headers=dict(GRPC_AUTH), request_id="r-2")
    assert result.get_response().id == "r-2"
    assert result.as_numpy("width").tolist() == [[16], [20]]  # BYTES batch fanned out, answers in order
    directs = [json.loads(direct_rest(ts, PNG)), json.loads(direct_rest(ts, other))]
    assert result.as_numpy("mean").tolist() == [pytest.approx(d["mean"]) for d in directs]

    async def aio() -> list[int]:
        aclient = tgrpc_aio.InferenceServerClient(gw.grpc_target)
        try:
            assert await aclient.is_model_ready("toy_echo", headers=dict(GRPC_AUTH))
            tensor = tgrpc_aio.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([PNG], dtype=object))
            answer = await aclient.infer("toy_echo", [tensor], headers=dict(GRPC_AUTH))
            return answer.as_numpy("height").tolist()
        finally:
            await aclient.close()

    assert asyncio.run(aio()) == [[12]]  # one item: [1, 1]


def test_grpc_stream_infer_answers_in_order_with_inband_errors(gw: GatewayProcess) -> None:
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    answers: list = []
    done = threading.Event()

    def callback(result, error) -> None:
        answers.append((result, error))
        if len(answers) == 4:
            done.set()

    client.start_stream(callback=callback, headers=dict(GRPC_AUTH))
    try:
        for i, data in enumerate([PNG, b"broken", png_bytes(9, 9), PNG]):
            client.async_stream_infer("toy_echo", [image_input(tgrpc, data)], request_id=f"s{i}")
        assert done.wait(30)
    finally:
        client.stop_stream()
    assert answers[1][0] is None and "not a recognised image" in str(answers[1][1])
    ok = [(r.get_response().id, r.as_numpy("width").tolist()) for r, e in answers if e is None]
    assert ok == [("s0", [[16]]), ("s2", [[9]]), ("s3", [[16]])]


def test_task_route_equals_torchserve(gw: GatewayProcess, ts: TorchServe) -> None:
    url = f"{gw.http_url}/v1/models/toy_echo:predict"
    status, headers, raw = http_request(url, PNG, {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert raw == direct_rest(ts, PNG)  # byte for byte: the handler's JSON as-is
    body, ctype = multipart({"image": ("a.png", PNG, "image/png")})
    status, _, answer = http_request(url, body, {**AUTH, "Content-Type": ctype}, "POST")
    assert status == 200 and answer == direct_rest(ts, body, ctype)
    doc = json.dumps({"image": base64.b64encode(PNG).decode()}).encode()
    status, _, answer = http_request(url, doc, {**AUTH, "Content-Type": "application/json"}, "POST")
    assert status == 200
    assert without_fields(answer) == without_fields(direct_rest(ts, doc, "application/json"))
    status, _, answer = http_request(url, b"garbage", {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 400 and "not a recognised image" in json_body(answer)["error"]
    status, _, answer = http_request(url, b"--other\r\nnot multipart at all",
                                     {**AUTH, "Content-Type": "multipart/form-data; boundary=zzz"}, "POST")
    assert status == 400 and "multipart" in json_body(answer)["error"], answer


# --- auth --------------------------------------------------------------------------------------------
def _rest_path(path: str) -> str:
    return path.replace("{model}", "toy_echo").replace("{version}", "1")


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_rest_auth_on_every_route(gw: GatewayProcess, route) -> None:
    url = gw.http_url + _rest_path(route.path)
    body = PNG if route.method == "POST" else None
    ctype = {"Content-Type": "image/png"} if body else {}
    if not route.protected:
        status, _, _ = http_request(url, body, ctype, route.method)
        assert status == 200
        return
    status, headers, answer = http_request(url, body, ctype, route.method)
    assert status == 401 and "missing API key" in json_body(answer)["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, answer = http_request(url, body, {**ctype, "x-api-key": "wrong"}, route.method)
    assert status == 401 and json_body(answer)["error"] == "unknown API key"
    for key in (FULL_KEY, TOY_KEY):  # bearer and x-api-key both work
        status, _, answer = http_request(url, body, {**ctype, "x-api-key": key}, route.method)
        if route.label in ("infer", "repository_index"):
            assert status == 400  # authorised: the body is not an OIP request, nor empty or a JSON object
        else:
            assert status == 200, answer
    if "{model}" in route.path:
        status, _, answer = http_request(url.replace("toy_echo", "toy_small"), body,
                                         {**ctype, **bearer(TOY_KEY)}, route.method)
        assert status == 403 and "not allowed to use model 'toy_small'" in json_body(answer)["error"]


def test_grpc_auth_on_every_method(gw: GatewayProcess) -> None:
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    assert client.is_server_live() and client.is_server_ready()  # open
    calls = {
        "server_metadata": lambda h: client.get_server_metadata(headers=h),
        "model_metadata": lambda h: client.get_model_metadata("toy_echo", headers=h),
        "model_ready": lambda h: client.is_model_ready("toy_echo", headers=h),
        "infer": lambda h: client.infer("toy_echo", [image_input(tgrpc)], headers=h),
        "model_config": lambda h: client.get_model_config("toy_echo", headers=h),
        "model_statistics": lambda h: client.get_inference_statistics("toy_echo", headers=h),
        "repository_index": lambda h: client.get_model_repository_index(headers=h),
    }
    for name, call in calls.items():
        for headers, status in [({}, "UNAUTHENTICATED"), ({"x-api-key": "wrong"}, "UNAUTHENTICATED")]:
            with pytest.raises(InferenceServerException) as err:
                call(headers)
            assert err.value.status() == f"StatusCode.{status}", name
        call({"x-api-key": TOY_KEY})
        call({"authorization": f"Bearer {FULL_KEY}"})
    with pytest.raises(InferenceServerException) as err:
        client.infer("toy_small", [image_input(tgrpc)], headers={"x-api-key": TOY_KEY})
    assert err.value.status() == "StatusCode.PERMISSION_DENIED"
    # a stream without a key is refused
    errors: list = []
    client.start_stream(callback=lambda result, error: errors.append(error))
    with contextlib.suppress(InferenceServerException):  # the stream may already be closed by then
        client.async_stream_infer("toy_echo", [image_input(tgrpc)])
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    assert errors and "UNAUTHENTICATED" in str(errors[0].status())


# --- errors, limits, deadlines -----------------------------------------------------------------------
def test_unknown_model_and_version(gw: GatewayProcess) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/toy_echo/versions/7"):
        status, _, answer = http_request(gw.http_url + path, headers=dict(AUTH))
        assert status == 404, (path, answer)
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    status, _, answer = http_request(f"{gw.http_url}/v2/models/toy_echo/versions/7/infer", body.encode(),
                                     AUTH, "POST")
    assert status == 404 and "7" in json_body(answer)["error"]
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    for call in (lambda: client.get_model_metadata("nope", headers=dict(GRPC_AUTH)),
                 lambda: client.infer("nope", [image_input(tgrpc)], headers=dict(GRPC_AUTH)),
                 lambda: client.infer("toy_echo", [image_input(tgrpc)], model_version="7",
                                      headers=dict(GRPC_AUTH))):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND"


def test_wrong_shape_and_datatype(gw: GatewayProcess) -> None:
    url = f"{gw.http_url}/v2/models/toy_echo/infer"
    for item, message in [
        ({"name": "image", "shape": [2], "datatype": "BYTES", "data": ["a"]}, "input 'image': 1 data"),
        ({"name": "image", "shape": [1], "datatype": "STRING", "data": ["a"]}, "unknown datatype 'STRING'"),
    ]:
        status, _, answer = http_request(url, json.dumps({"inputs": [item]}).encode(), AUTH, "POST")
        assert status == 400 and message in json_body(answer)["error"]
    # tritonclient checks shapes itself, so the bad message is built by hand
    msg = oip.ModelInferRequest(model_name="toy_echo")
    msg.inputs.add(name="sleep_ms", datatype="FP32", shape=[3])
    msg.raw_input_contents.append(np.zeros(2, np.float32).tobytes())  # 8 bytes for shape [3]
    with grpc.insecure_channel(gw.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=oip.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as err:
            infer(msg, metadata=GRPC_AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("input 'sleep_ms': 8 bytes of FP32 data for shape [3] "
                                   "(expected 3 x 4 = 12 bytes)")


def test_request_size_limit(gw: GatewayProcess) -> None:
    big = png_bytes(16, 12) + b"\0" * 5000
    status, _, answer = http_request(f"{gw.http_url}/v1/models/toy_small:predict", big,
                                     {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 413 and "limit of 4096 bytes" in json_body(answer)["error"]
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    with pytest.raises(InferenceServerException) as err:
        client.infer("toy_small", [image_input(tgrpc, big)], headers=dict(GRPC_AUTH))
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    # refused from Content-Length alone, before the body is read: announce 1 GiB, send nothing
    host, port = gw.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_KEY}"
                     f"\r\nContent-Length: {1 << 30}\r\n\r\n".encode())
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413") and "over the limit" in reply


def test_large_messages_pass(gw: GatewayProcess) -> None:
    """Above gRPC's 4 MiB default in both directions of both hops (the limits follow max_request_bytes)."""
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=0)
    big = buf.getvalue()
    assert len(big) > 6_000_000
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    result = client.infer("toy_echo", [image_input(tgrpc, big)], headers=dict(GRPC_AUTH))
    assert result.as_numpy("width").tolist() == [[1500]] and result.as_numpy("bytes").tolist() == [[len(big)]]
    status, _, answer = http_request(f"{gw.http_url}/v1/models/toy_echo:predict", big,
                                     {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 200 and json_body(answer)["bytes"] == len(big)


def test_deadline(gw: GatewayProcess) -> None:
    status, _, answer = http_request(
        f"{gw.http_url}/v1/models/toy_fast:predict?sleep_ms=1500", PNG, {**AUTH, "Content-Type": "image/png"},
        "POST")
    assert status == 504 and "deadline" in json_body(answer)["error"]
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("toy_fast", [image_input(tgrpc)], parameters={"sleep_ms": 1500}, headers=dict(GRPC_AUTH))
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - started < 1.4
    # the model still answers afterwards (after the slept requests drain)
    assert client.infer("toy_echo", [image_input(tgrpc)], headers=dict(GRPC_AUTH)).as_numpy("width")[0, 0] == 16


# --- metrics -----------------------------------------------------------------------------------------
def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_request(gw: GatewayProcess) -> None:
    n_rest, n_grpc = 5, 3
    infer_over_both(gw.http_url, gw.grpc_target, "toy_metrics", PNG, FULL_KEY, n_rest, n_grpc)
    status, headers, raw = http_request(f"{gw.http_url}/metrics", headers=bearer(FULL_KEY))  # keyed: model series
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = raw.decode()
    m = {"model": "toy_metrics"}
    ok = {"route": "infer", "status": "200"}
    assert _metric(text, "zoo_gateway_requests_total", **m, **ok, protocol="rest") == n_rest
    assert _metric(text, "zoo_gateway_requests_total", **m, **ok, protocol="grpc") == n_grpc
    assert _metric(text, "zoo_gateway_request_duration_seconds_count", **m, protocol="rest") == n_rest
    assert _metric(text, "zoo_gateway_request_duration_seconds_count", **m, protocol="grpc") == n_grpc
    assert _metric(text, "zoo_gateway_backend_duration_seconds_count", **m) == n_rest + n_grpc
    assert _metric(text, "zoo_gateway_request_size_bytes_count", **m) == n_rest + n_grpc
    assert _metric(text, "zoo_gateway_response_size_bytes_count", **m) == n_rest + n_grpc
    top = {"protocol": "rest", "le": "30.0"}
    assert _metric(text, "zoo_gateway_request_duration_seconds_bucket", **m, **top) == n_rest
    assert 'le="0.001"' in text and "zoo_gateway_in_flight_requests" in text
    assert "zoo_gateway_backend_errors_total" in text


def test_openapi_lists_every_route(gw: GatewayProcess) -> None:
    status, _, raw = http_request(f"{gw.http_url}/openapi.json")
    doc = json_body(raw)
    assert status == 200 and doc["openapi"].startswith("3.")
    for route in ROUTES:
        assert route.method.lower() in doc["paths"][route.path]


# --- the closed-stream guard ---------------------------------------------------------------------------
def test_cancelled_stream_does_not_wedge_torchserve(gw: GatewayProcess) -> None:
    """A client that closes its stream before the replies arrive: afterwards unary calls and new streams
    still get answers promptly (TorchServe once hung every model until restart in this situation)."""

    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                           request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=oip.ModelStreamInferResponse.FromString)
            call = stream(metadata=GRPC_AUTH)
            for i in range(6):
                msg = oip.ModelInferRequest(model_name="toy_echo", id=f"c{i}")
                msg.inputs.add(name="image", datatype="BYTES", shape=[1])
                msg.raw_input_contents.append(len(PNG).to_bytes(4, "little") + PNG)
                msg.parameters["sleep_ms"].int64_param = 150
                await call.write(msg)
            await asyncio.sleep(0.05)
            call.cancel()  # closes the stream before any reply

    asyncio.run(cancel_midway())
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    started = time.monotonic()
    result = client.infer("toy_echo", [image_input(tgrpc)], headers=dict(GRPC_AUTH), client_timeout=20)
    assert result.as_numpy("width")[0, 0] == 16 and time.monotonic() - started < 10
    answers: list = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)),
                        headers=dict(GRPC_AUTH))
    client.async_stream_infer("toy_echo", [image_input(tgrpc)], request_id="after")
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    assert answers and answers[0][1] is None and answers[0][0].get_response().id == "after"
    assert http_request(f"{gw.http_url}/v1/models/toy_echo:predict", PNG,
                        {**AUTH, "Content-Type": "image/png"}, "POST")[0] == 200
