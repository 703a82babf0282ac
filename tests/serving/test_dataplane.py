"""The data plane through both front-ends, with no TorchServe: a real gateway (REST + gRPC servers on loopback
ports, its own event loop in a thread) in front of the in-process backend serving the real tiny `toy_echo`
network (zoo/toy.py) from a Python callable wired in here (serving/ itself never imports torch or zoo).

Covers what every request shares (serving/dataplane.py): metering, in-flight count and gauge, size limits
(413), routing (404) and aliases, auth (401/403), deadlines (504), error kinds, ModelStreamInfer, the model
repository (discovery, aliases), and a video stream session's one count.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image
from tritonclient.utils import InferenceServerException

from handlers.toy_handler import ToyHandler
from proto import oip
from serving.backends.base import ListedModel
from serving.backends.inprocess import InProcessBackend, InProcessModel
from serving.config import ApiKey, BackendConfig, GatewayConfig, digest
from serving.dataplane import DataPlane
from serving.errors import InvalidInput
from serving.metrics import GatewayMetrics
from serving.repository import ModelRepository
from tests.serving.gateway_support import (
    FULL_KEY,
    TOY_KEY,
    Running,
    bearer,
    in_process_gateway,
    infer_over_both,
    png_bytes,
)
from tests.serving.gateway_support import image_input as support_image_input
from tests.support import http_request, json_body, multipart
from zoo.toy import TOY_ECHO

PNG = png_bytes()
ALIAS_KEY = "alias-key-89ab"  # allowed only the alias `toy_echo_v0`: may use toy_echo under either name
AUTH = bearer(FULL_KEY)
GRPC_AUTH = [("authorization", f"Bearer {FULL_KEY}")]
BACKEND = "local"
JSON_TYPE = "application/json"


# --- the model, wired in from outside serving/ -------------------------------------------------------------
class ToyEcho:
    """toy_echo's handler contract (handlers/toy_handler.py) around the real ToyEcho network."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = TOY_ECHO.build().eval()
        self.calls = 0

    def expected_mean(self, png: bytes) -> list[float]:
        means = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32).reshape(-1, 3).mean(0) / 255
        with torch.no_grad():
            return [round(float(v), 6) for v in self.net(torch.from_numpy(means)[None])[0]]

    async def __call__(self, fields: dict[str, bytes]) -> dict[str, Any]:
        self.calls += 1
        data = next((fields[k] for k in ("image", "body", "data") if k in fields), None)
        if data is None:
            raise InvalidInput("no image: send image bytes as the body or a field 'image'")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # noqa: BLE001 - the client's bytes are not an image
            raise InvalidInput(f"field is not an image: {exc}") from None
        sleep_ms = float(fields.get("sleep_ms", b"0"))
        if sleep_ms:
            await asyncio.sleep(sleep_ms / 1000)
        return {"width": image.width, "height": image.height, "mean": self.expected_mean(data),
                "bytes": len(data), "fields": sorted(fields)}


def broken(fields: dict[str, bytes]) -> Any:
    raise RuntimeError("weights on fire")


def detector(fields: dict[str, bytes]) -> dict[str, Any]:
    """A stand-in detector for stream sessions: one box, DETR's answer layout."""
    return {"detections": [{"box": [1.0, 2.0, 8.0, 9.0], "score": 0.9, "label_id": 1, "label": "thing"}],
            "image_size": {"width": 16, "height": 12}}


TOY = ToyEcho()


def config() -> GatewayConfig:
    base = GatewayConfig(backends={BACKEND: BackendConfig(BACKEND, "inprocess")}, api_keys={
        digest(FULL_KEY): ApiKey("full", frozenset({"*"})),
        digest(TOY_KEY): ApiKey("toy", frozenset({"toy_echo"})),
        digest(ALIAS_KEY): ApiKey("alias", frozenset({"toy_echo_v0"}))})
    return base.with_routes([
        base.route("toy_echo", aliases=["toy_echo_v0"]),
        base.route("toy_fast", model="toy_echo", deadline_s=0.3),
        base.route("toy_small", model="toy_echo", max_request_bytes=4096),
        base.route("toy_metrics", model="toy_echo"),
        base.route("broken"),
        base.route("det"),
        base.route("toy_typed"),
    ])


def backend() -> InProcessBackend:
    return InProcessBackend([
        InProcessModel("toy_echo", TOY, inputs={"image": "image bytes"}),
        InProcessModel("broken", broken),
        InProcessModel("det", detector),
        InProcessModel("toy_typed", TOY, inputs={"image": "image bytes"}, outputs=TOY_ECHO.outputs,
                       tensors=lambda answer: ToyHandler.tensors(ToyHandler(), answer)),
    ], name=BACKEND)


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with in_process_gateway(config(), {BACKEND: backend()}) as running:
        yield running


def image_input(module: Any, data: bytes = PNG) -> Any:
    return support_image_input(module, data)


def rest(gw: Running, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], Any]:
    status, got_headers, raw = http_request(f"{gw.http_url}{path}", body, headers, method, timeout=30)
    return status, got_headers, json_body(raw)


# --- inference through both front-ends -------------------------------------------------------------------
def test_rest_grpc_and_task_route_serve_the_real_model(gw: Running) -> None:
    expected = TOY.expected_mean(PNG)
    result = thttp.InferenceServerClient(gw.http_url.removeprefix("http://")).infer(
        "toy_echo", [image_input(thttp)], headers=dict(AUTH))
    answer = json.loads(result.as_numpy("output")[0])
    assert (answer["width"], answer["height"], answer["mean"]) == (16, 12, expected)
    assert result.as_numpy("width").tolist() == [16] and result.get_response()["model_name"] == "toy_echo"
    gresult = tgrpc.InferenceServerClient(gw.grpc_target).infer("toy_echo", [image_input(tgrpc)],
                                                                 headers=dict(GRPC_AUTH))
    assert json.loads(gresult.as_numpy("output")[0])["mean"] == expected
    status, _, doc = rest(gw, "/v1/models/toy_echo:predict?sleep_ms=0", PNG,
                          {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 200 and doc["mean"] == expected and doc["fields"] == ["body", "sleep_ms"]
    body, ctype = multipart({"image": ("x.png", PNG, "image/png")})
    status, _, doc = rest(gw, "/v1/models/toy_echo:predict", body, {**AUTH, "Content-Type": ctype}, "POST")
    assert status == 200 and doc["fields"] == ["image"] and doc["bytes"] == len(PNG)


def test_metadata_readiness_and_index(gw: Running) -> None:
    status, _, meta = rest(gw, "/v2/models/toy_echo", headers=AUTH)
    assert status == 200 and meta["name"] == "toy_echo" and meta["platform"] == "inprocess"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    status, _, ready = rest(gw, "/v2/models/toy_echo/versions/1/ready", headers=AUTH)
    assert status == 200 and ready == {"name": "toy_echo", "ready": True}
    assert rest(gw, "/v2/health/ready")[0] == 200
    status, _, index = rest(gw, "/v2/repository/index", b"{}", {**AUTH, "Content-Type": JSON_TYPE}, "POST")
    assert [row["name"] for row in index] == ["broken", "det", "toy_echo", "toy_fast", "toy_metrics", "toy_small",
                                                 "toy_typed"]
    assert {row["state"] for row in index} == {"READY"}
    status, _, index = rest(gw, "/v2/repository/index", b"", bearer(TOY_KEY), "POST")
    assert [row["name"] for row in index] == ["toy_echo"]
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    assert client.is_model_ready("toy_echo", headers=dict(GRPC_AUTH))
    assert client.get_model_metadata("toy_echo", headers=dict(GRPC_AUTH)).platform == "inprocess"


def test_alias_reaches_the_route_and_is_echoed(gw: Running) -> None:
    before = gw.metric("zoo_gateway_requests_total", model="toy_echo", version="", protocol="rest",
                       route="infer", status="200")
    result = thttp.InferenceServerClient(gw.http_url.removeprefix("http://")).infer(
        "toy_echo_v0", [image_input(thttp)], headers=dict(AUTH))
    assert result.get_response()["model_name"] == "toy_echo_v0"
    gresult = tgrpc.InferenceServerClient(gw.grpc_target).infer("toy_echo_v0", [image_input(tgrpc)],
                                                                 headers=dict(GRPC_AUTH))
    assert gresult.get_response().model_name == "toy_echo_v0"
    assert rest(gw, "/v2/models/toy_echo_v0", headers=AUTH)[2]["name"] == "toy_echo_v0"
    assert rest(gw, "/v2/models/toy_echo_v0/ready", headers=AUTH)[2]["name"] == "toy_echo_v0"
    # one metrics label per route, whatever name the client used
    assert gw.metric("zoo_gateway_requests_total", model="toy_echo", version="", protocol="rest", route="infer",
                     status="200") == before + 1
    assert gw.metric("zoo_gateway_requests_total", model="toy_echo_v0", version="", protocol="rest",
                     route="infer", status="200") == 0
    # a key allowed one name of a route may use it under its other names; not other routes
    for name in ("toy_echo_v0", "toy_echo"):
        assert rest(gw, f"/v2/models/{name}", headers=bearer(ALIAS_KEY))[0] == 200
    assert rest(gw, "/v2/models/toy_fast", headers=bearer(ALIAS_KEY))[0] == 403


# --- metering and in-flight ---------------------------------------------------------------------------------
def test_every_request_is_metered_once(gw: Running) -> None:
    n_rest, n_grpc = 4, 3
    infer_over_both(gw.http_url, gw.grpc_target, "toy_metrics", PNG, FULL_KEY, n_rest, n_grpc)
    m = {"model": "toy_metrics"}
    for protocol, n in (("rest", n_rest), ("grpc", n_grpc)):
        assert gw.metric("zoo_gateway_requests_total", **m, version="", protocol=protocol, route="infer",
                         status="200") == n
        assert gw.metric("zoo_gateway_request_duration_seconds_count", **m, protocol=protocol, route="infer") == n
        assert gw.metric("zoo_gateway_request_size_bytes_count", **m, protocol=protocol, route="infer") == n
        assert gw.metric("zoo_gateway_response_size_bytes_count", **m, protocol=protocol, route="infer") == n
        assert gw.metric("zoo_gateway_request_size_bytes_sum", **m, protocol=protocol, route="infer") > n * len(PNG)
    assert gw.metric("zoo_gateway_backend_duration_seconds_count", **m, backend=BACKEND) == n_rest + n_grpc
    # metadata routes are metered too, without a request size
    rest(gw, "/v2/models/toy_metrics", headers=AUTH)
    assert gw.metric("zoo_gateway_requests_total", **m, version="", protocol="rest", route="model_metadata",
                     status="200") == 1
    assert gw.metric("zoo_gateway_request_size_bytes_count", **m, protocol="rest", route="model_metadata") == 0
    # health, metrics and the OpenAPI document are not
    rest(gw, "/v2/health/live")
    status, _, text = http_request(f"{gw.http_url}/metrics")
    assert status == 200 and b'route="health"' not in text and b"zoo_gateway_in_flight_requests" in text


def test_in_flight_counts_a_request_while_it_runs(gw: Running) -> None:
    dp = gw.gateway.dataplane
    results: list[int] = []
    for protocol in ("rest", "grpc"):
        if protocol == "rest":
            def call() -> None:
                results.append(rest(gw, "/v1/models/toy_echo:predict?sleep_ms=400", PNG, AUTH, "POST")[0])
        else:
            def call() -> None:
                tgrpc.InferenceServerClient(gw.grpc_target).infer(
                    "toy_echo", [image_input(tgrpc)], parameters={"sleep_ms": 400}, headers=dict(GRPC_AUTH))
                results.append(200)
        worker = threading.Thread(target=call)
        worker.start()
        deadline = time.monotonic() + 5
        while gw.metric("zoo_gateway_in_flight_requests", protocol=protocol) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gw.metric("zoo_gateway_in_flight_requests", protocol=protocol) == 1 and dp.in_flight.count == 1
        worker.join(10)
        assert gw.metric("zoo_gateway_in_flight_requests", protocol=protocol) == 0 and dp.in_flight.count == 0
    assert results == [200, 200]


def test_per_model_in_flight_gauge_rises_under_concurrent_load_and_returns_to_zero(gw: Running) -> None:
    """`zoo_gateway_model_in_flight{model}` is the autoscaling signal (deploy/k8s KEDA ScaledObject and HPA)."""
    def gauge() -> float:
        return gw.metric("zoo_gateway_model_in_flight", model="toy_echo")

    def call() -> None:
        rest(gw, "/v1/models/toy_echo:predict?sleep_ms=600", PNG, AUTH, "POST")

    workers = [threading.Thread(target=call) for _ in range(3)]
    for worker in workers:
        worker.start()
    deadline, peak = time.monotonic() + 5, 0.0
    while peak < 3 and time.monotonic() < deadline:
        peak = max(peak, gauge())
        time.sleep(0.01)
    for worker in workers:
        worker.join(10)
    assert peak == 3 and gauge() == 0
    assert gw.metric("zoo_gateway_model_queued", model="toy_echo") == 0


# --- refusals: 413, 404, 401/403 ------------------------------------------------------------------------------
def test_size_limit_names_size_and_limit(gw: Running) -> None:
    big = PNG + b"\0" * 5000
    status, _, doc = rest(gw, "/v1/models/toy_small:predict", big, {**AUTH, "Content-Type": "image/png"}, "POST")
    assert status == 413 and doc["error"] == f"request of {len(big)} bytes is over the limit of 4096 bytes"
    body, ctype = multipart({"image": ("x.png", big, "image/png")})
    assert rest(gw, "/v1/models/toy_small:predict", body, {**AUTH, "Content-Type": ctype}, "POST")[0] == 413
    # chunked: counted as it arrives
    host, port = gw.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        chunk = b"\0" * 3000
        sock.sendall(f"POST /v1/models/toy_small:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_KEY}"
                     f"\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413") and "at least 6000 bytes is over the limit of 4096 bytes" in reply
    with pytest.raises(InferenceServerException) as err:
        tgrpc.InferenceServerClient(gw.grpc_target).infer("toy_small", [image_input(tgrpc, big)],
                                                          headers=dict(GRPC_AUTH))
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "over the limit of 4096 bytes" in str(err.value)
    assert gw.metric("zoo_gateway_requests_total", model="toy_small", version="", protocol="grpc", route="infer",
                     status="413") == 1
    assert gw.metric("zoo_gateway_requests_total", model="toy_small", version="", protocol="rest",
                     route="predict", status="413") == 3


def test_unknown_model_and_version(gw: Running) -> None:
    status, _, doc = rest(gw, "/v2/models/nope/infer", b"{}", AUTH, "POST")
    assert status == 404 and "unknown model 'nope'" in doc["error"] and "toy_echo" in doc["error"]
    assert rest(gw, "/v2/models/toy_echo/versions/9", headers=AUTH)[0] == 404
    with pytest.raises(InferenceServerException) as err:
        tgrpc.InferenceServerClient(gw.grpc_target).infer("nope", [image_input(tgrpc)], headers=dict(GRPC_AUTH))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert gw.metric("zoo_gateway_requests_total", model="_unknown", version="", protocol="grpc", route="infer",
                     status="404") >= 1


def test_auth_401_and_403_on_both_protocols(gw: Running) -> None:
    status, headers, _ = rest(gw, "/v2/models/toy_echo")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert rest(gw, "/v2/models/toy_echo", headers=bearer("wrong"))[0] == 401
    assert rest(gw, "/v2/models/toy_echo", headers={"x-api-key": TOY_KEY})[0] == 200
    assert rest(gw, "/v2/models/toy_fast", headers=bearer(TOY_KEY))[0] == 403
    assert rest(gw, "/v2/models/nope", headers=bearer(TOY_KEY))[0] == 403  # no probing of names
    assert rest(gw, "/v2", headers=bearer(TOY_KEY))[0] == 200
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    for headers, code in [({}, "UNAUTHENTICATED"), ({"authorization": f"Bearer {TOY_KEY}"}, "PERMISSION_DENIED")]:
        with pytest.raises(InferenceServerException) as err:
            client.infer("toy_fast", [image_input(tgrpc)], headers=headers)
        assert err.value.status() == f"StatusCode.{code}"
    assert client.is_server_live()  # open
    assert gw.metric("zoo_gateway_requests_total", model="_unknown", version="", protocol="grpc", route="infer",
                     status="401") >= 1


# --- deadlines and error kinds ----------------------------------------------------------------------------------
def test_deadlines_route_and_client(gw: Running) -> None:
    before = gw.metric("zoo_gateway_backend_errors_total", backend=BACKEND, kind="deadline_exceeded")
    started = time.monotonic()
    status, _, doc = rest(gw, "/v1/models/toy_fast:predict?sleep_ms=2000", PNG, AUTH, "POST")
    assert status == 504 and "deadline" in doc["error"] and time.monotonic() - started < 1.5
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    with pytest.raises(InferenceServerException) as err:
        client.infer("toy_fast", [image_input(tgrpc)], parameters={"sleep_ms": 2000}, headers=dict(GRPC_AUTH))
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # the client's own deadline, when sooner than the route's 60 s, is the one that counts
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("toy_echo", [image_input(tgrpc)], parameters={"sleep_ms": 3000}, headers=dict(GRPC_AUTH),
                     client_timeout=0.5)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - started < 2.0
    assert gw.metric("zoo_gateway_backend_errors_total", backend=BACKEND, kind="deadline_exceeded") >= before + 2
    assert gw.metric("zoo_gateway_requests_total", model="toy_fast", version="", protocol="rest", route="predict",
                     status="504") == 1


def test_error_kinds_invalid_input_backend_error_and_unavailable(gw: Running) -> None:
    status, _, doc = rest(gw, "/v1/models/toy_echo:predict", b"not an image", AUTH, "POST")
    assert status == 400 and "not an image" in doc["error"]
    assert gw.metric("zoo_gateway_backend_errors_total", backend=BACKEND, kind="invalid_input") >= 1
    status, _, doc = rest(gw, "/v1/models/broken:predict", PNG, AUTH, "POST")
    assert status == 500 and "RuntimeError: weights on fire" in doc["error"]
    assert gw.metric("zoo_gateway_backend_errors_total", backend=BACKEND, kind="backend_error") >= 1
    # request parsing errors never reach the backend
    status, _, doc = rest(gw, "/v2/models/toy_echo/infer", b'{"inputs": []}', AUTH, "POST")
    assert status == 400 and "non-empty 'inputs'" in doc["error"]
    local = gw.gateway.dataplane.backends[BACKEND]
    local.available = False
    try:
        status, headers, _ = rest(gw, "/v1/models/toy_echo:predict", PNG, AUTH, "POST")
        assert status == 503 and headers["Retry-After"] == "1"
        with pytest.raises(grpc.RpcError) as err:
            with grpc.insecure_channel(gw.grpc_target) as channel:
                channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=oip.ModelInferResponse.FromString)(
                    _infer_message("toy_echo"), metadata=GRPC_AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(err.value.trailing_metadata())["retry-after"] == "1"
        assert rest(gw, "/v2/health/ready")[0] == 503
    finally:
        local.available = True
    for status in ("400", "500", "503"):
        assert gw.metric("zoo_gateway_requests_total", model="toy_echo" if status != "500" else "broken",
                         version="", protocol="rest", route="predict", status=status) >= 1


def _infer_message(model: str, data: bytes = PNG, request_id: str = "", sleep_ms: int = 0) -> Any:
    msg = oip.ModelInferRequest(model_name=model, id=request_id)
    msg.inputs.add(name="image", datatype="BYTES", shape=[1])
    msg.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    if sleep_ms:
        msg.parameters["sleep_ms"].int64_param = sleep_ms
    return msg


# --- ModelStreamInfer --------------------------------------------------------------------------------------------
def test_stream_infer_in_order_with_in_band_errors(gw: Running) -> None:
    requests = [_infer_message("toy_echo", request_id="a", sleep_ms=200), _infer_message("nope", request_id="b"),
                _infer_message("toy_small", PNG + b"\0" * 5000, request_id="c"),
                _infer_message("toy_echo_v0", request_id="d")]
    with grpc.insecure_channel(gw.grpc_target) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=oip.ModelStreamInferResponse.FromString)
        replies = list(call(iter(requests), metadata=GRPC_AUTH, timeout=30))
    assert [r.infer_response.id for r in replies] == ["a", "b", "c", "d"]
    assert [bool(r.error_message) for r in replies] == [False, True, True, False]
    assert "unknown model 'nope'" in replies[1].error_message
    assert "over the limit of 4096 bytes" in replies[2].error_message
    assert replies[3].infer_response.model_name == "toy_echo_v0"
    stream = {"version": "", "protocol": "grpc", "route": "stream_infer"}
    assert gw.metric("zoo_gateway_requests_total", model="toy_echo", **stream, status="200") >= 2
    assert gw.metric("zoo_gateway_requests_total", model="_unknown", **stream, status="404") == 1
    assert gw.metric("zoo_gateway_requests_total", model="toy_small", **stream, status="413") == 1
    assert gw.metric("zoo_gateway_response_size_bytes_count", model="toy_small", protocol="grpc",
                     route="stream_infer") == 1


# --- a video stream session counts once, through the same path ------------------------------------------------------
def test_websocket_stream_session_is_admitted_and_counted_once(gw: Running) -> None:
    async def session(model: str, key: str) -> tuple[int, list[dict[str, Any]]]:
        url = f"{gw.http_url}/v1/streams/{model}?api_key={key}"
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url) as ws:
                    for i in range(3):
                        await ws.send_str(json.dumps({"index": i, "capture_time_s": i / 30}))
                        await ws.send_bytes(PNG)
                    await ws.send_str(json.dumps({"end": True}))
                    return 200, [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, []

    status, answers = asyncio.run(session("det", FULL_KEY))
    assert status == 200 and [a["index"] for a in answers] == [0, 1, 2]
    assert asyncio.run(session("det", TOY_KEY))[0] == 403
    assert asyncio.run(session("nope", FULL_KEY))[0] == 404
    labels = {"version": "", "protocol": "rest", "route": "stream"}
    deadline = time.monotonic() + 5
    while gw.metric("zoo_gateway_requests_total", model="det", **labels, status="200") < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.metric("zoo_gateway_requests_total", model="det", **labels, status="200") == 1
    # refused before routing: no model label (as any request refused for its key)
    assert gw.metric("zoo_gateway_requests_total", model="_unknown", **labels, status="403") == 1
    assert gw.metric("zoo_gateway_requests_total", model="_unknown", **labels, status="404") == 1
    assert gw.metric("zoo_gateway_request_duration_seconds_count", model="det", protocol="rest", route="stream") == 0


# --- the model repository --------------------------------------------------------------------------------------------
def test_repository_discovers_backend_models_and_their_aliases() -> None:
    local = backend()
    local.models["toy_echo"].aliases = ("toy_echo_v0",)
    cfg = GatewayConfig(backends={BACKEND: BackendConfig(BACKEND, "inprocess")}, deadline_s=5.0)
    backends = {BACKEND: local}
    dp = DataPlane(cfg, backends, GatewayMetrics(), ModelRepository(cfg, backends, refresh_interval_s=0.0))

    async def run() -> None:
        await dp.start()
        repo = dp.repository
        assert repo.names() == ["broken", "det", "toy_echo", "toy_typed"]
        assert cfg.models == {}  # the config is untouched
        assert repo.get("toy_echo_v0") is repo.get("toy_echo") and repo.get("toy_echo").deadline_s == 5.0
        assert repo.names_of("toy_echo_v0") == ("toy_echo", "toy_echo_v0")
        # a model the backend starts serving later is found on first use
        local.add(InProcessModel("late", TOY))
        assert (await repo.resolve("late")).model == "late"
        with pytest.raises(Exception, match="unknown model 'never'"):
            await repo.resolve("never")
        await dp.close()

    asyncio.run(run())


def test_repository_aliases_and_configured_routes() -> None:
    cfg = config()
    repo = ModelRepository(cfg)
    assert repo.names() == sorted(cfg.models) and not repo.discovers
    assert repo.get("toy_echo_v0").public_name == "toy_echo"
    repo.add_alias("toy", "toy_fast")
    assert repo.get("toy").public_name == "toy_fast" and repo.get("toy_fast").aliases == ("toy",)
    repo.add_alias("toy_echo_v0", "toy_fast")  # taken by another route: skipped
    assert repo.get("toy_echo_v0").public_name == "toy_echo"
    repo.update(cfg.route("toy_fast", model="toy_echo"))  # replaced without its alias
    assert repo.get("toy") is None and "toy_fast" in repo
    assert cfg.models["toy_fast"].deadline_s == 0.3 and "toy" not in cfg.models["toy_fast"].aliases
    assert ListedModel("x").aliases == ()
    with pytest.raises(Exception, match="cannot alias unknown model"):
        repo.add_alias("a", "missing")


def test_every_error_is_json_with_exactly_the_json_content_type(gw: Running) -> None:
    cases = [("/v2/nowhere", None, "GET", 404, "no route GET /v2/nowhere"),
             ("/v2/models/toy_echo/infer", None, "GET", 405, "GET is not allowed on /v2/models/toy_echo/infer"),
             ("/v2/models/nope", None, "GET", 404, "unknown model 'nope'"),
             ("/v2/models/toy_echo/infer", b"{not json", "POST", 400, "request body is not valid JSON")]
    for path, body, method, status, needle in cases:
        got, headers, doc = rest(gw, path, body, dict(AUTH), method)
        assert (got, headers["Content-Type"]) == (status, JSON_TYPE), path
        assert needle in doc["error"], doc
    assert rest(gw, "/v2", None, dict(AUTH))[1]["Content-Type"] == JSON_TYPE  # answers too


def test_typed_in_process_model_answers_its_declared_outputs(gw: Running) -> None:
    status, _, meta = rest(gw, "/v2/models/toy_typed", None, dict(AUTH))
    assert status == 200 and [o["name"] for o in meta["outputs"]] == [s.name for s in TOY_ECHO.outputs]
    result = thttp.InferenceServerClient(gw.http_url.removeprefix("http://")).infer(
        "toy_typed", [image_input(thttp)], headers=dict(AUTH))
    assert result.as_numpy("width").tolist() == [[16]] and result.as_numpy("mean")[0].tolist() == pytest.approx(
        TOY.expected_mean(PNG))
    assert [o["name"] for o in result.get_response()["outputs"]] == [s.name for s in TOY_ECHO.outputs]
