"""The Triton backend against a real Triton server (PyTriton's bundled tritonserver, CPU, numpy models).

Skips, with the reason, only where PyTriton cannot start here (see tests/serving/pytriton_support.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from cli.gateway import GatewayProcess, launch
from serving.app import make_backend
from serving.backends.triton import TritonBackend
from serving.config import BackendConfig, ConfigError, load_config
from serving.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ModelNotFound
from serving.types import InferInput, InferRequest, RequestedOutput
from tests.serving.pytriton_support import PyTriton, free_ports, pytriton_or_skip, start_or_skip
from tests.support import http_request

pytestmark = pytest.mark.integration

A = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
B = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyTriton]:
    with pytriton_or_skip(tmp_path_factory.mktemp("pytriton")) as server:
        yield server


def add_sub_request(a: np.ndarray = A, b: np.ndarray = B, **kwargs) -> InferRequest:
    return InferRequest("add_sub", [InferInput.from_numpy("INPUT0", a), InferInput.from_numpy("INPUT1", b)],
                        **kwargs)


def run(coro_fn):
    """Run `coro_fn(backend)` with a fresh backend on a fresh loop (closed afterwards)."""
    async def main(url: str):
        backend = TritonBackend(url, models=["add_sub", "upper"])
        await backend.start()
        try:
            return await coro_fn(backend)
        finally:
            await backend.close()
    return main


def direct_grpc(triton: PyTriton, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Triton's own answer, asked directly with tritonclient.grpc (the reference for the gateway)."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        tensors = []
        for name, array in inputs.items():
            dt = "BYTES" if array.dtype == object else "FP32"
            t = grpcclient.InferInput(name, list(array.shape), dt)
            t.set_data_from_numpy(array)
            tensors.append(t)
        result = client.infer(model, tensors)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


# --- configuration (no server needed) -----------------------------------------------------------------
def test_backend_from_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({
        "backends": {"tri": {"type": "triton", "url": "grpc://127.0.0.1:8001", "max_reconnect_s": 1}},
        "models": {"calc": {"backend": "tri", "model": "add_sub"}, "shout": {"backend": "tri", "model": "upper"}},
        "server": {"retry_after_s": 3},
    }))
    config = load_config(path)
    backend = make_backend(config.backends["tri"], config)
    assert isinstance(backend, TritonBackend)
    assert (backend.name, backend.url, backend.models, backend.retry_after_s, backend.max_reconnect_s) == \
        ("tri", "127.0.0.1:8001", ["add_sub", "upper"], 3, 1.0)
    for options, message in [({}, "needs 'url'"), ({"url": "127.0.0.1:1", "grpc": "x"}, "unknown option grpc"),
                             ({"url": "http://127.0.0.1:8000"}, "gRPC endpoint")]:
        with pytest.raises(ConfigError, match=message):
            make_backend(BackendConfig("tri", "triton", options), config)


# --- the backend alone ------------------------------------------------------------------------------
def test_backend_health_metadata(triton: PyTriton) -> None:
    async def body(b: TritonBackend):
        assert await b.live() and await b.ready()
        assert await b.model_ready("add_sub") and await b.model_ready("add_sub", "1")
        with pytest.raises(ModelNotFound):
            await b.model_ready("no_such_model")
        with pytest.raises(ModelNotFound):
            await b.model_ready("add_sub", "7")
        meta = await b.model_metadata("add_sub")
        assert meta["name"] == "add_sub" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
                                  {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]
        with pytest.raises(ModelNotFound):
            await b.model_metadata("no_such_model")
    asyncio.run(run(body)(triton.grpc_url))


def test_backend_infer_matches_triton(triton: PyTriton) -> None:
    expected = direct_grpc(triton, "add_sub", {"INPUT0": A, "INPUT1": B})
    text = np.array([[b"hello"], [b"\xff\x00bin"]], dtype=object)
    expected_text = direct_grpc(triton, "upper", {"TEXT": text})

    async def body(b: TritonBackend):
        req = add_sub_request(id="req-1")
        resp = await b.infer(req, time.monotonic() + 30)
        assert (resp.model_name, resp.model_version, resp.id) == ("add_sub", "1", "req-1")
        got = {o.name: o.as_numpy() for o in resp.outputs}
        assert set(got) == {"OUTPUT0", "OUTPUT1"}
        for name in got:
            np.testing.assert_array_equal(got[name], expected[name])
        np.testing.assert_allclose(got["OUTPUT0"], A + B)

        req.outputs = [RequestedOutput("OUTPUT1")]
        resp = await b.infer(req, None)
        assert [o.name for o in resp.outputs] == ["OUTPUT1"]

        text_in = InferInput.from_bytes_list("TEXT", [b"hello", b"\xff\x00bin"], [2, 1])
        resp = await b.infer(InferRequest("upper", [text_in]), None)
        out = resp.output("TEXT")
        assert (out.datatype, out.shape, out.data) == ("BYTES", [2, 1], [b"HELLO", b"\xff\x00BIN"])
        assert out.data == list(expected_text["TEXT"].reshape(-1))
        assert resp.output("LENGTH").as_numpy().reshape(-1).tolist() == [5, 5]
    asyncio.run(run(body)(triton.grpc_url))


def test_backend_errors(triton: PyTriton) -> None:
    async def body(b: TritonBackend):
        wrong_shape = add_sub_request(A[:, :3].copy(), B[:, :3].copy())
        with pytest.raises(InvalidInput, match="unexpected shape for input"):
            await b.infer(wrong_shape, None)
        wrong_type = add_sub_request(A.astype(np.int32))
        with pytest.raises(InvalidInput, match="data-type"):
            await b.infer(wrong_type, None)
        with pytest.raises(ModelNotFound):
            await b.infer(InferRequest("no_such_model", [InferInput.from_numpy("INPUT0", A)]), None)
        slow = InferRequest("sleep", [InferInput.from_numpy("SECONDS", np.array([[1.5]], np.float32))])
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.infer(slow, time.monotonic() + 0.3)
        assert time.monotonic() - start < 1.2
        with pytest.raises(DeadlineExceeded):
            await b.infer(slow, time.monotonic() - 1)
    asyncio.run(run(body)(triton.grpc_url))


def test_backend_unreachable_is_503() -> None:
    async def body(b: TritonBackend):
        assert not await b.live() and not await b.ready()
        req = add_sub_request()
        with pytest.raises(BackendUnavailable) as err:
            await b.infer(req, time.monotonic() + 5)
        assert err.value.http_status == 503 and err.value.retry_after_s == 1
    asyncio.run(run(body)(f"127.0.0.1:{free_ports(1)[0]}"))


# --- through the gateway ----------------------------------------------------------------------------
def gateway_config(triton: PyTriton) -> dict:
    return {
        "backends": {"triton": {"type": "triton", "url": f"grpc://{triton.grpc_url}"}},
        "models": {
            "calc": {"backend": "triton", "model": "add_sub"},
            "shout": {"backend": "triton", "model": "upper"},
            "nap": {"backend": "triton", "model": "sleep", "deadline_s": 0.5},
        },
        "server": {"retry_after_s": 2},
    }


@contextlib.contextmanager
def running_gateway(config: dict, workdir: Path) -> Iterator[GatewayProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = launch(["--config", str(path), "--http-port", "0", "--grpc-port", "0"],
                     env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""})
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(triton: PyTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(gateway_config(triton), tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


def http_infer(url: str, model: str, arrays: dict[str, np.ndarray], binary: bool = True,
               outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        inputs = []
        for name, array in arrays.items():
            item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array, binary_data=binary)
            inputs.append(item)
        requested = None
        if outputs:
            requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
        result = client.infer(model, inputs, outputs=requested)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        client.close()


def grpc_infer(target: str, model: str, arrays: dict[str, np.ndarray],
               outputs: list[str] | None = None, timeout: float | None = None) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(target)
    try:
        inputs = []
        for name, array in arrays.items():
            item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            inputs.append(item)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        result = client.infer(model, inputs, outputs=requested, client_timeout=timeout)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


TEXT = np.array([[b"hello"], [b"zoo \xc3\xa9"]], dtype=object)
BINARY_TEXT = np.array([[b"\xff\x00bin"]], dtype=object)


def test_gateway_http_infer_equals_triton(triton: PyTriton, gateway: GatewayProcess) -> None:
    for binary in (True, False):
        expected = http_infer(triton.http_url, "add_sub", {"INPUT0": A, "INPUT1": B}, binary)
        assert_same(http_infer(gateway.http_url, "calc", {"INPUT0": A, "INPUT1": B}, binary), expected)
        np.testing.assert_allclose(expected["OUTPUT1"], A - B)
        expected = http_infer(triton.http_url, "upper", {"TEXT": TEXT}, binary)
        assert_same(http_infer(gateway.http_url, "shout", {"TEXT": TEXT}, binary), expected)
    expected = http_infer(triton.http_url, "upper", {"TEXT": BINARY_TEXT}, True, ["TEXT"])
    got = http_infer(gateway.http_url, "shout", {"TEXT": BINARY_TEXT}, True, ["TEXT"])
    assert_same(got, expected)
    assert got["TEXT"].reshape(-1).tolist() == [b"\xff\x00BIN"]


def test_gateway_grpc_infer_equals_triton(triton: PyTriton, gateway: GatewayProcess) -> None:
    expected = grpc_infer(triton.grpc_url, "add_sub", {"INPUT0": A, "INPUT1": B})
    assert_same(grpc_infer(gateway.grpc_target, "calc", {"INPUT0": A, "INPUT1": B}), expected)
    expected = grpc_infer(triton.grpc_url, "add_sub", {"INPUT0": A, "INPUT1": B}, ["OUTPUT1"])
    assert_same(grpc_infer(gateway.grpc_target, "calc", {"INPUT0": A, "INPUT1": B}, ["OUTPUT1"]), expected)
    text = np.concatenate([TEXT, BINARY_TEXT])
    expected = grpc_infer(triton.grpc_url, "upper", {"TEXT": text})
    assert_same(grpc_infer(gateway.grpc_target, "shout", {"TEXT": text}), expected)


def test_gateway_task_route(gateway: GatewayProcess) -> None:
    status, headers, raw = http_request(gateway.http_url + "/v1/models/shout:predict", b"zoo gateway",
                                        {"Content-Type": "application/octet-stream"})
    assert status == 200, raw
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    assert outputs["TEXT"]["data"] == ["ZOO GATEWAY"] and outputs["LENGTH"]["data"] == [11]
    # a model without BYTES inputs cannot take raw bytes: a clear 400, not a crash
    status, _, raw = http_request(gateway.http_url + "/v1/models/calc:predict", b"zoo",
                                  {"Content-Type": "application/octet-stream"})
    assert status == 400 and "has 2 inputs (INPUT0, INPUT1)" in json.loads(raw)["error"]


def test_gateway_metadata_and_readiness(triton: PyTriton, gateway: GatewayProcess) -> None:
    direct = httpclient.InferenceServerClient(triton.http_url)
    via_http = httpclient.InferenceServerClient(gateway.http_url.removeprefix("http://"))
    via_grpc = grpcclient.InferenceServerClient(gateway.grpc_target)
    try:
        reference = direct.get_model_metadata("add_sub")
        for client in (via_http, via_grpc):
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("calc") and client.is_model_ready("calc", "1")
        assert not via_http.is_model_ready("no_such_model")  # 404
        with pytest.raises(InferenceServerException, match="unknown model"):
            via_grpc.is_model_ready("no_such_model")  # the gateway answers NOT_FOUND
        meta = via_http.get_model_metadata("calc")
        assert meta["name"] == "calc" and meta["versions"] == reference["versions"] == ["1"]
        assert meta["inputs"] == reference["inputs"] and meta["outputs"] == reference["outputs"]
        assert meta["platform"] == reference["platform"]
        gmeta = via_grpc.get_model_metadata("calc", as_json=True)
        assert gmeta["name"] == "calc"
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in reference["inputs"]]
    finally:
        direct.close()
        via_http.close()
        via_grpc.close()


def test_gateway_passes_tritons_model_config_through(triton: PyTriton, gateway: GatewayProcess) -> None:
    """Triton's own config (PyTriton: max_batch_size 8, dims [4]) under the public name, over both protocols."""
    reference = httpclient.InferenceServerClient(triton.http_url).get_model_config("add_sub")
    config = httpclient.InferenceServerClient(gateway.http_url.removeprefix("http://")).get_model_config("calc")
    assert config["name"] == "calc" and config["max_batch_size"] == reference["max_batch_size"] == 8
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        (i["name"], i["data_type"], i["dims"]) for i in reference["input"]]
    gconfig = grpcclient.InferenceServerClient(gateway.grpc_target).get_model_config("calc", as_json=True)["config"]
    assert [o["name"] for o in gconfig["output"]] == [o["name"] for o in reference["output"]]


def test_gateway_errors(gateway: GatewayProcess) -> None:
    # unknown public model: 404 / NOT_FOUND (REST readiness and metadata too)
    for path in ("/v2/models/no_such_model", "/v2/models/no_such_model/ready"):
        assert http_request(gateway.http_url + path)[0] == 404
    with pytest.raises(InferenceServerException) as err:
        http_infer(gateway.http_url, "no_such_model", {"INPUT0": A})
    assert "unknown model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(gateway.grpc_target, "no_such_model", {"INPUT0": A})
    assert err.value.status() == "StatusCode.NOT_FOUND"
    # a version Triton does not have: 404 from Triton, through the gateway
    status, _, body = http_request(gateway.http_url + "/v2/models/calc/versions/7")
    assert status == 404, body

    # wrong shape: Triton's 400 / INVALID_ARGUMENT with its message
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
    ]}).encode()
    status, _, raw = http_request(gateway.http_url + "/v2/models/calc/infer", body,
                                  {"Content-Type": "application/json"})
    assert status == 400 and "unexpected shape for input" in json.loads(raw)["error"]
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(gateway.grpc_target, "calc", {"INPUT0": A[:, :3].copy(), "INPUT1": B[:, :3].copy()})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected shape for input" in err.value.message()

    # the route's deadline (0.5 s) passes while Triton sleeps 1.5 s: 504 / DEADLINE_EXCEEDED
    body = json.dumps({"inputs": [{"name": "SECONDS", "datatype": "FP32", "shape": [1, 1], "data": [1.5]}]})
    started = time.monotonic()
    status, _, raw = http_request(gateway.http_url + "/v2/models/nap/infer", body.encode(),
                                  {"Content-Type": "application/json"})
    assert status == 504, raw
    assert time.monotonic() - started < 1.4
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(gateway.grpc_target, "nap", {"SECONDS": np.array([[1.5]], np.float32)})
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_gateway_triton_killed_is_503_then_recovers(tmp_path: Path) -> None:
    server = PyTriton(tmp_path)
    start_or_skip(server)
    try:
        with running_gateway(gateway_config(server), tmp_path / "gateway") as gw:
            arrays = {"INPUT0": A, "INPUT1": B}
            assert_same(grpc_infer(gw.grpc_target, "calc", arrays), {"OUTPUT0": A + B, "OUTPUT1": A - B})

            server.kill()  # tritonserver and all: connection refused from now on
            body = json.dumps({"inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [2, 4], "data": A.reshape(-1).tolist()},
                {"name": "INPUT1", "datatype": "FP32", "shape": [2, 4], "data": B.reshape(-1).tolist()},
            ]}).encode()
            status, headers, raw = http_request(gw.http_url + "/v2/models/calc/infer", body,
                                                {"Content-Type": "application/json"})
            assert status == 503, raw
            assert headers.get("Retry-After") == "2"
            assert "unavailable" in json.loads(raw)["error"]
            with pytest.raises(InferenceServerException) as err:
                grpc_infer(gw.grpc_target, "calc", arrays)
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert http_request(gw.http_url + "/v2/health/ready")[0] == 503
            assert http_request(gw.http_url + "/v2/health/live")[0] == 200
            assert http_request(gw.http_url + "/v2/models/calc/ready")[0] == 503

            # Triton back on the same ports: the gateway's channel reconnects by itself within seconds
            server.start()
            server.wait_ready()
            end = time.monotonic() + 15
            while True:
                try:
                    got = grpc_infer(gw.grpc_target, "calc", arrays)
                    break
                except InferenceServerException as exc:
                    if exc.status() != "StatusCode.UNAVAILABLE" or time.monotonic() > end:
                        raise
                    time.sleep(0.2)
            assert_same(got, {"OUTPUT0": A + B, "OUTPUT1": A - B})
            assert http_request(gw.http_url + "/v2/health/ready")[0] == 200
    finally:
        server.stop()
