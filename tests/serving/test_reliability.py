"""Reliability under abuse and faults (issue 17): one regression test per finding, on a real gateway (REST +
gRPC on loopback, own event loop in a thread) in front of in-process models, so no TorchServe is needed.
The TorchServe-specific halves (its error strings, its management URL) are tested on the backend directly.

Timing figures are measured by bench/chaos.py (docs/reliability.md); here they are only functional bounds
with a wide margin for a loaded 2-core CI box.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from cli.gateway import launch
from cli.process import watch
from cli.torchserve import free_port
from proto import OIP_SERVICE, oip, serialize
from serving.backends.inprocess import InProcessBackend, InProcessModel
from serving.backends.torchserve import TorchServeBackend
from serving.config import ApiKey, BackendConfig, GatewayConfig, digest, load_config
from serving.errors import BackendUnavailable
from serving.rest import openapi_document
from tests.serving.gateway_support import FULL_KEY, TOY_KEY, bearer, png_bytes
from tests.serving.test_dataplane import Running
from tests.support import http_request, json_body

PNG = png_bytes()
AUTH = bearer(FULL_KEY)
GRPC_AUTH = (("authorization", f"Bearer {FULL_KEY}"),)
BACKEND = "local"


class Echo:
    """A model that answers its input size, sleeping `sleep_ms` (a field) first; counts what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, fields: dict[str, bytes]) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(float(fields.get("sleep_ms", b"0")) / 1000)
        return {"bytes": sum(len(v) for v in fields.values())}


ECHO = Echo()
SLOW = Echo()


def config() -> GatewayConfig:
    base = GatewayConfig(backends={BACKEND: BackendConfig(BACKEND, "inprocess")}, api_keys={
        digest(FULL_KEY): ApiKey("full", frozenset({"*"})),
        digest(TOY_KEY): ApiKey("toy", frozenset({"toy_echo"}))},
        header_timeout_s=0.5, body_timeout_s=0.5, metrics_cache_s=30.0, max_decompressed_bytes=8 << 20,
        max_json_bytes=4 << 20)
    return base.with_routes([
        base.route("toy_echo"),
        base.route("secret", model="toy_echo"),
        base.route("slow", max_concurrency=1, max_queue=2),
        base.route("idle"),
    ])


def backend() -> InProcessBackend:
    return InProcessBackend([
        InProcessModel("toy_echo", ECHO),
        InProcessModel("slow", SLOW),
        InProcessModel("idle", ECHO, ready=True),
    ], name=BACKEND)


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with Running(config(), {BACKEND: backend()}) as running:
        yield running


def rest(gw: Running, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], Any]:
    status, got, raw = http_request(f"{gw.http_url}{path}", body, headers, method, timeout=30)
    return status, got, json_body(raw) if raw[:1] in (b"{", b"[") else raw


def infer_body(name: str = "image", data: Any = "x", shape: list[int] | None = None, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape or [1], "datatype": "BYTES", "data": [data]}],
                       **extra}).encode()


def raw_http(gw: Running, request: bytes, timeout: float = 10) -> bytes:
    host, port = gw.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in request:
                break
        return b"".join(chunks)


def error_ratio_statuses(gw: Running, route: str) -> dict[str, float]:
    out = {}
    for metric in gw.gateway.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "zoo_gateway_requests_total" and sample.labels["route"] == route:
                out[sample.labels["status"]] = out.get(sample.labels["status"], 0) + sample.value
    return out


# --- 1. one small request stalls the whole gateway ----------------------------------------------------------
def test_gzip_bomb_is_refused_while_bounded_and_liveness_stays_fast(gw: Running) -> None:
    bomb = gzip.compress(b'{"inputs": [' + b" " * (200 << 20) + b"]}", compresslevel=9)
    assert len(bomb) < 400_000
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            assert rest(gw, "/v2/health/live")[0] == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        status, _, doc = rest(gw, "/v2/models/toy_echo/infer", bomb,
                              {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}, "POST")
    finally:
        done.set()
        prober.join()
    assert status == 413 and "inflates" in doc["error"]
    assert latencies and max(latencies) < 1.0
    # a large JSON part is refused before it is parsed (parsing holds the GIL, whatever thread runs it)
    big = infer_body(data="y" * (5 << 20))
    status, _, doc = rest(gw, "/v2/models/toy_echo/infer", big, AUTH, "POST")
    assert status == 413 and "binary" in doc["error"]
    # a big numeric tensor would be written as JSON for a handler-style model: refused, BYTES is the way
    header = json.dumps({"inputs": [{"name": "image", "shape": [2 << 20], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 2 << 20}}]}).encode()
    status, _, doc = rest(gw, "/v2/models/toy_echo/infer", header + bytes(2 << 20),
                          {**AUTH, "Inference-Header-Content-Length": str(len(header))}, "POST")
    assert status == 413 and "BYTES" in doc["error"]


# --- 2. overload and missing workers answer 503 + Retry-After -------------------------------------------------
@pytest.mark.parametrize("details", [
    'Model "toy_echo" has no worker to serve inference request. Please use scale workers API to add workers.',
    "org.pytorch.serve.http.ServiceUnavailableException: Model toy_echo job queue is full",
    "Worker died.",
])
def test_torchserve_capacity_errors_are_503(details: str) -> None:
    exc = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    error = TorchServeBackend("127.0.0.1:1", retry_after_s=3)._map_rpc_error(exc, "toy_echo", "")
    assert isinstance(error, BackendUnavailable) and error.http_status == 503 and error.retry_after_s == 3


def test_readiness_is_false_while_a_model_has_no_worker(gw: Running) -> None:
    model = gw.gateway.dataplane.backends[BACKEND].models["idle"]
    assert rest(gw, "/v2/models/idle/ready", headers=AUTH)[0] == 200
    model.ready = False
    try:
        gw.gateway.dataplane._ready = (-1e9, True)  # skip the readiness cache (READY_CACHE_S)
        assert rest(gw, "/v2/models/idle/ready", headers=AUTH)[0] == 503
        assert rest(gw, "/v2/health/ready")[0] == 503
    finally:
        model.ready = True
        gw.gateway.dataplane._ready = (-1e9, True)
    assert rest(gw, "/v2/health/ready")[0] == 200


# --- 3. the version path segment never reaches another model ----------------------------------------------------
def test_version_segments_are_validated(gw: Running) -> None:
    for version in ("..%2Fsecret", "..%2F..%2Fapi-description", "1%2F..", "a..b"):
        status, _, doc = rest(gw, f"/v2/models/toy_echo/versions/{version}", headers=bearer(TOY_KEY))
        assert status == 400 and "invalid model version" in doc["error"], version
    assert rest(gw, "/v2/models/toy_echo/versions/1", headers=bearer(TOY_KEY))[0] == 200
    channel = grpc.insecure_channel(gw.grpc_target)
    for method, cls in (("ModelMetadata", oip.ModelMetadataRequest), ("ModelReady", oip.ModelReadyRequest)):
        stub = channel.unary_unary(f"/{OIP_SERVICE}/{method}", request_serializer=serialize,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            stub(cls(name="toy_echo", version="../secret"), metadata=(("x-api-key", TOY_KEY),), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_torchserve_management_urls_are_quoted() -> None:
    backend = TorchServeBackend("127.0.0.1:1", management_url="http://ts")
    seen: list[str] = []

    class Session:
        def get(self, url: str, **kwargs: Any) -> Any:
            seen.append(url)
            raise OSError("stop here")

    backend._http = Session()  # type: ignore[assignment]
    with pytest.raises(OSError):
        asyncio.run(backend._describe("toy_echo", "../ckdn_r50"))
    assert seen == ["http://ts/models/toy_echo/..%2Fckdn_r50"]


# --- 4. metric labels stay bounded ------------------------------------------------------------------------------
def test_unknown_versions_share_one_metrics_label(gw: Running) -> None:
    for i in range(30):
        rest(gw, f"/v2/models/toy_echo/versions/{1000 + i}/ready", headers=AUTH)
    versions = {s.labels["version"] for m in gw.gateway.metrics.registry.collect() for s in m.samples
                if s.name == "zoo_gateway_requests_total" and s.labels["model"] == "toy_echo"}
    assert not any(v.startswith("10") for v in versions) and "_other" in versions


# --- 5. /metrics is cached and keeps model names from anonymous scrapers --------------------------------------
def test_metrics_is_cached_and_redacted_for_anonymous_scrapers(gw: Running) -> None:
    backend = gw.gateway.dataplane.backends[BACKEND]
    asked = []
    live = backend.live

    async def counting_live() -> bool:
        asked.append(1)
        return await live()

    backend.live = counting_live  # type: ignore[method-assign]
    try:
        rest(gw, "/v2/models/toy_echo", headers=AUTH)
        threads = [threading.Thread(target=http_request, args=(f"{gw.http_url}/metrics",)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(asked) <= 1  # one backend refresh per metrics_cache_s, however many scrapers
    finally:
        backend.live = live  # type: ignore[method-assign]
    status, _, anonymous = http_request(f"{gw.http_url}/metrics")
    assert status == 200 and b'model="' not in anonymous and b"zoo_gateway_in_flight_requests" in anonymous
    status, _, keyed = http_request(f"{gw.http_url}/metrics", headers=AUTH)
    assert status == 200 and b'model="toy_echo"' in keyed


# --- 6. header and body read timeouts -----------------------------------------------------------------------------
def test_slow_headers_are_cut_and_a_stalled_body_is_408(gw: Running) -> None:
    host, port = gw.http_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        assert sock.recv(100) == b""  # closed by the gateway
    assert time.monotonic() - started < 5
    answer = raw_http(gw, b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\nx-api-key: " + FULL_KEY.encode()
                      + b"\r\nContent-Length: 100\r\n\r\n{\"inp")
    assert answer.startswith(b"HTTP/1.1 408") and b"application/json" in answer


# --- 7. zoo serve dies with its children -------------------------------------------------------------------------
def test_watch_returns_the_child_that_died_at_once() -> None:
    children = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                for name in ("TorchServe", "gateway")}
    try:
        stop = threading.Event()
        threading.Timer(0.3, children["gateway"].kill).start()
        started = time.monotonic()
        assert watch(children, stop, poll_s=0.05) == "gateway"
        assert time.monotonic() - started < 5
        stop.set()
        assert watch({"TorchServe": children["TorchServe"]}, stop) is None
    finally:
        for proc in children.values():
            proc.kill()
            proc.wait()


# --- 8. load shedding, and queued work cancelled at its deadline ------------------------------------------------
def test_overload_is_shed_with_retry_after_and_queued_work_expires_unsent(gw: Running) -> None:
    results: list[tuple[int, dict[str, str]]] = []

    def call(sleep_ms: int = 400) -> None:
        status, headers, _ = rest(gw, f"/v1/models/slow:predict?sleep_ms={sleep_ms}", b"x", AUTH, "POST")
        results.append((status, headers))

    before = SLOW.calls
    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) >= 1 and 503 in statuses, statuses
    assert all(h.get("Retry-After") for status, h in results if status == 503)
    assert SLOW.calls - before == statuses.count(200)  # shed requests never reached the model
    # a request queued behind a busy model past its (client's) deadline is never sent
    channel = grpc.insecure_channel(gw.grpc_target)
    infer = channel.unary_unary(f"/{OIP_SERVICE}/ModelInfer", request_serializer=serialize,
                                response_deserializer=oip.ModelInferResponse.FromString)
    busy = threading.Thread(target=call, args=(800,))
    busy.start()
    time.sleep(0.2)
    before = SLOW.calls
    request = oip.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="body", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"x")
    with pytest.raises(grpc.RpcError) as err:
        infer(request, metadata=GRPC_AUTH, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    busy.join()
    time.sleep(0.2)
    assert SLOW.calls == before  # expired in the gateway's queue, never sent
    assert rest(gw, "/v1/models/slow:predict", b"x", AUTH, "POST")[0] == 200  # back to normal at once
    channel.close()


def test_statistics_report_the_time_spent_waiting_in_the_models_queue(gw: Running) -> None:
    """Triton's "queue" statistic is the wait for a slot in the gateway's per-model queue (max_concurrency 1
    here): a request sent while another holds the slot for 400 ms waits about that long, and compute_input is
    what is left of the time before the backend call."""
    def stats() -> dict[str, Any]:
        status, _, doc = rest(gw, "/v2/models/slow/stats", headers=AUTH)
        assert status == 200, doc
        return doc["model_stats"][0]["inference_stats"]

    before = stats()
    busy = threading.Thread(target=rest, args=(gw, "/v1/models/slow:predict?sleep_ms=400", b"x", AUTH, "POST"))
    busy.start()
    time.sleep(0.1)
    assert rest(gw, "/v1/models/slow:predict", b"x", AUTH, "POST")[0] == 200
    busy.join()
    after = stats()
    waited_ns = after["queue"]["ns"] - before["queue"]["ns"]
    counted = {kind: after[kind]["count"] - before[kind]["count"] for kind in ("queue", "success")}
    assert counted == {"queue": 2, "success": 2}
    assert 0.2e9 <= waited_ns <= 0.5e9, waited_ns  # one waited ~0.3 s, the other not at all
    assert after["compute_input"]["ns"] - before["compute_input"]["ns"] < waited_ns


# --- 9. client errors are 4xx with a JSON body naming the problem ---------------------------------------------
@pytest.mark.parametrize(("body", "needle"), [
    (infer_body(outputs=5), "outputs"),
    (infer_body(name="\ud800"), "surrogate"),
    (infer_body(data="\udfff"), "surrogate"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"], "parameters": {"\\ud800": 1}}]}',
     "surrogate"),
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    (infer_body(shape=[1] * 65), "dimensions"),
])
def test_client_errors_are_400_json(gw: Running, body: bytes, needle: str) -> None:
    status, headers, doc = rest(gw, "/v2/models/toy_echo/infer", body, {**AUTH, "Content-Type": "application/json"},
                                "POST")
    assert status == 400 and needle in doc["error"], doc


def test_broken_gzip_body_is_400_json(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    for body, needle in ((b"not gzip at all", "malformed request body"), (gzip.compress(infer_body())[:20], "JSON")):
        status, _, doc = rest(gw, "/v2/models/toy_echo/infer", body,
                              {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}, "POST")
        assert status == 400 and needle in doc["error"], doc
    time.sleep(0.2)  # aiohttp drains the rest of the body after the answer, and fails to inflate it again
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_invalid_utf8_api_key_is_401_json(gw: Running) -> None:
    for path in (b"/v2/models/toy_echo", b"/v1/streams/toy_echo"):
        answer = raw_http(gw, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\xed\r\n"
                          b"Connection: close\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:200]
        assert "API key" in json.loads(body)["error"]


# --- 10. disconnects, malformed protobuf, the OpenAPI document ----------------------------------------------------
def test_client_gone_mid_upload_is_499_not_an_error(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    before = error_ratio_statuses(gw, "infer").get("499", 0)
    host, port = gw.http_url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\nx-api-key: " + FULL_KEY.encode()
                         + b"\r\nContent-Length: 1000000\r\n\r\n" + b"{" * 1000)
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while error_ratio_statuses(gw, "infer").get("499", 0) == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert error_ratio_statuses(gw, "infer").get("499", 0) == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unparseable_http_is_not_logged_as_an_error(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = raw_http(gw, b"POST /v2/model\xed/x HTTP/1.1\r\nHost: x\r\nx-ap\xcd-key: k\r\n"
                          b"Connection: close\r\n\r\n")
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Error handling request" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("request_bytes", [
    b"POST /v2/model\xed/x HTTP/1.1\r\nHost: x\r\nx-ap\xcd-key: k\r\n\r\n",  # header name bytes
    b"GET /v2/health/live HTTP/9.9\r\n\r\n",  # unknown HTTP version
    b"BREW /v2 HTTP/1.1\r\nHost: x\r\n\r\n",  # unknown method
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",  # header too long
    b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["header-bytes", "http-9.9", "method", "long-header", "bad-chunk"])
def test_what_aiohttp_refuses_itself_is_a_json_error(gw: Running, request_bytes: bytes) -> None:
    """Requests refused by aiohttp's HTTP parser, before any route or middleware: still the gateway's JSON
    error form (JsonErrorsRequestHandler), and the connection is closed."""
    answer = raw_http(gw, request_bytes.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer[:200]
    assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n", head
    assert json.loads(body)["error"].startswith("malformed HTTP request: "), body


def test_malformed_protobuf_is_invalid_argument(gw: Running) -> None:
    channel = grpc.insecure_channel(gw.grpc_target)
    for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
        stub = channel.unary_unary(f"/{OIP_SERVICE}/{method}", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            stub(b"\xff\xff\xff\xff\x0f", metadata=GRPC_AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "malformed protobuf" in err.value.details()
    channel.close()


def test_openapi_is_as_strict_as_the_server() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    assert schemas["InferenceRequest"]["properties"]["inputs"]["minItems"] == 1
    assert schemas["Tensor"]["properties"]["shape"]["maxItems"] == 64
    version = next(p for p in doc["paths"]["/v2/models/{model}/versions/{version}"]["get"]["parameters"]
                   if p["name"] == "version")
    assert "pattern" in version["schema"]
    predict = doc["paths"]["/v1/models/{model}:predict"]["post"]["requestBody"]
    assert "8 pixels" in predict["description"]
    # what schemathesis (bench/chaos.py) found the server refusing although the document allowed it
    assert "data" in schemas["Tensor"]["required"]
    typed = openapi_document([{"name": "toy_echo", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                               "outputs": [{"name": "width", "datatype": "INT64", "shape": [-1, 1]}]}])
    inputs = typed["paths"]["/v2/models/toy_echo/infer"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]["inputs"]
    image = inputs["items"]["oneOf"][0]
    assert inputs["minItems"] == 1 and "data" in image["required"]
    assert image["properties"]["shape"]["items"]["minimum"] == 1  # a BYTES input: one model call per element


@pytest.mark.parametrize("body", [b"null", b"[]", b"\x00", b'{"ready": "yes"}', b"[" * 5000])
def test_repository_index_refuses_a_body_it_would_have_ignored(gw: Running, body: bytes) -> None:
    status, headers, answer = rest(gw, "/v2/repository/index", body, {**AUTH, "Content-Type": "application/json"},
                                   "POST")
    assert status == 400 and headers["Content-Type"] == "application/json", answer
    assert "must be empty or a JSON object" in answer["error"]


def test_repository_index_takes_no_body_or_a_ready_filter(gw: Running) -> None:
    for body in (b"", b"  ", b"{}", b'{"ready": false}', b'{"ready": true}'):
        status, _, answer = rest(gw, "/v2/repository/index", body, {**AUTH, "Content-Type": "application/json"},
                                 "POST")
        assert status == 200 and {m["name"] for m in answer} >= {"toy_echo"}, (body, answer)


# --- operations: key reload, access log, TLS ----------------------------------------------------------------------
def test_api_keys_reload_without_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"key": "old-key", "name": "old", "models": ["*"]}]))
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump({"backends": {BACKEND: {"type": "inprocess"}},
                                        "auth": {"keys_file": "keys.yaml"}}))
    cfg = load_config(cfg_path)
    running = Running(cfg.with_routes([cfg.route("toy_echo")]), {BACKEND: backend()})
    try:
        assert rest(running, "/v2/models/toy_echo", headers=bearer("old-key"))[0] == 200
        keys.write_text(yaml.safe_dump([{"key": "new-key", "name": "new", "models": ["toy_echo"]}]))
        assert running.gateway.reload_keys()
        assert rest(running, "/v2/models/toy_echo", headers=bearer("old-key"))[0] == 401
        assert rest(running, "/v2/models/toy_echo", headers=bearer("new-key"))[0] == 200
        keys.write_text("- [broken")
        assert not running.gateway.reload_keys()  # a broken file keeps the keys in force
        assert rest(running, "/v2/models/toy_echo", headers=bearer("new-key"))[0] == 200
    finally:
        running.stop()


def test_sighup_reloads_the_keys_of_a_gateway_process(tmp_path: Path) -> None:
    """The reload as an operator triggers it: a real `python -m serving.app` process, its keys file
    (ZOO_API_KEYS_FILE) rewritten, then `kill -HUP`. `GET /v2` checks the key and asks no backend, so a
    TorchServe address where nothing listens is enough. The reload counter says when a broken file was read."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"key": "old-key", "name": "old", "models": ["*"]}]))
    gateway = launch(["--torchserve-grpc", f"127.0.0.1:{free_port()}", "--models", "toy_echo",
                      "--http-port", "0", "--grpc-port", "0"],
                     env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": str(keys), "ZOO_GATEWAY_LOG_LEVEL": "WARNING"})

    def status(key: str) -> int:
        return http_request(f"{gateway.http_url}/v2", headers=bearer(key), timeout=10)[0]

    def reloads(result: str) -> float:
        text = http_request(f"{gateway.http_url}/metrics", timeout=10)[2].decode()
        line = f'zoo_gateway_api_key_reloads_total{{result="{result}"}} '
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line))

    def hup_and_wait(result: str) -> None:
        before = reloads(result)
        os.kill(gateway.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while reloads(result) == before:
            assert time.monotonic() < deadline, f"no {result} key reload 10 s after SIGHUP"
            time.sleep(0.05)

    try:
        assert (status("old-key"), status("new-key")) == (200, 401)
        keys.write_text(yaml.safe_dump([{"key": "new-key", "name": "new", "models": ["toy_echo"]}]))
        hup_and_wait("ok")
        assert (status("old-key"), status("new-key")) == (401, 200)
        keys.write_text("- [broken")
        hup_and_wait("failed")
        assert (status("old-key"), status("new-key")) == (401, 200)  # a broken file keeps the keys in force
        assert gateway.proc.poll() is None
    finally:
        gateway.stop()


def test_one_json_access_line_per_request(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zoo.access"):
        status, headers, _ = rest(gw, "/v2/models/toy_echo", headers={**AUTH, "X-Request-ID": "req-42"})
    assert status == 200 and headers["X-Request-ID"] == "req-42"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "zoo.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["request_id"], line["model"], line["route"], line["status"], line["key"]) == \
        ("req-42", "toy_echo", "model_metadata", 200, "full")
    assert line["latency_ms"] >= 0 and FULL_KEY not in json.dumps(line)


def test_tls_on_rest_and_grpc_with_client_certificates(tmp_path: Path) -> None:
    ssl_mod = pytest.importorskip("ssl")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=zoo-ca",
                "-keyout", "ca.key", "-out", "ca.crt")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is not available")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt")
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump({"backends": {BACKEND: {"type": "inprocess"}}, "server": {"tls": {
        "cert_file": "server.crt", "key_file": "server.key", "client_ca_file": "ca.crt"}}}))
    cfg = load_config(cfg_path)
    running = Running(cfg.with_routes([cfg.route("toy_echo")]), {BACKEND: backend()})
    try:
        url = running.http_url.replace("http://", "https://")
        context = ssl_mod.create_default_context(cafile=str(tmp_path / "ca.crt"))
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        with urllib.request.urlopen(f"{url}/v2/health/live", context=context, timeout=10) as resp:
            assert json.loads(resp.read()) == {"live": True}
        bare = ssl_mod.create_default_context(cafile=str(tmp_path / "ca.crt"))  # no client certificate
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/v2/health/live", context=bare, timeout=10).read()
        credentials = grpc.ssl_channel_credentials(
            (tmp_path / "ca.crt").read_bytes(), (tmp_path / "client.key").read_bytes(),
            (tmp_path / "client.crt").read_bytes())
        channel = grpc.secure_channel(running.grpc_target, credentials)
        live = channel.unary_unary(f"/{OIP_SERVICE}/ServerLive", request_serializer=serialize,
                                   response_deserializer=oip.ServerLiveResponse.FromString)
        assert live(oip.ServerLiveRequest(), timeout=10).live
        channel.close()
    finally:
        running.stop()
