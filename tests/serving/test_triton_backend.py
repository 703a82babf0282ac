"""The Triton backend against a real Triton server (PyTriton's bundled tritonserver, CPU, numpy models).

Skips, with the reason, only where PyTriton cannot start here (see tests/serving/pytriton_support.py).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from serving.backends.triton import TritonBackend
from serving.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ModelNotFound
from serving.types import InferInput, InferRequest, RequestedOutput
from tests.serving.pytriton_support import PyTriton, pytriton_or_skip

pytestmark = pytest.mark.integration

A = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
B = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> PyTriton:
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
    from tests.serving.pytriton_support import free_ports
    asyncio.run(run(body)(f"127.0.0.1:{free_ports(1)[0]}"))
