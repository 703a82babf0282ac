"""Unit tests of the protocol layer: REST JSON / binary / gRPC <-> InferRequest round trips, validation,
the error table, the OIP <-> TorchServe handler mapping and the config. No servers."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.http._utils import _get_inference_request

from proto import oip
from serving import errors
from serving.backends.fields import answers_to_response, fan_out, typed_answer
from serving.backends.torchserve import handler_error
from serving.config import load_config, parse_keys_env
from serving.types import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    deserialize_bytes,
    serialize_bytes,
)
from zoo.tensors import ANSWER_FIELD, ANSWER_TENSORS, as_tensor, encode_tensors

ARRAYS = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([0, 7, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[1, 2], [3, 4294967295]], dtype=np.uint32),
    "UINT64": np.array([2**64 - 1, 0], dtype=np.uint64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-32768, 5], dtype=np.int16),
    "INT32": np.arange(6, dtype=np.int32).reshape(2, 3) - 3,
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -1.25, 65504], dtype=np.float16),
    "FP32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "FP64": np.array([[np.pi, -np.e]], dtype=np.float64),
    "BF16": np.array([1.0, -2.5, 3.140625], dtype=np.float32),  # exactly representable in bfloat16
}
BYTES = [b"", b"caf\xc3\xa9", b"\x00\xff binary"]


def _request() -> InferRequest:
    inputs = [InferInput.from_numpy(dt, a, dt) for dt, a in ARRAYS.items()]
    inputs.append(InferInput.from_bytes_list("BYTES", BYTES, [3]))
    return InferRequest("m", inputs, "2", "req-1", {"p_str": "x", "p_int": 3, "p_bool": True, "p_f": 0.5},
                        [RequestedOutput("out", {"binary_data": True})])


def _assert_same(a: InferRequest, b: InferRequest) -> None:
    assert [t.name for t in a.inputs] == [t.name for t in b.inputs]
    for x, y in zip(a.inputs, b.inputs, strict=True):
        assert (x.datatype, x.shape) == (y.datatype, y.shape)
        if x.datatype == "BYTES":
            assert x.data == y.data
        else:
            np.testing.assert_array_equal(x.as_numpy(), y.as_numpy())
    assert (a.model_name, a.model_version, a.id) == (b.model_name, b.model_version, b.id)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_rest_round_trip_every_datatype(binary: bool) -> None:
    request = _request()
    if not binary:  # JSON cannot carry non-UTF-8 BYTES
        request.inputs[-1] = InferInput.from_bytes_list("BYTES", [b"", "café".encode()], [2])
    body, header = request.to_rest(binary_inputs=binary)
    assert (header is not None) == binary
    parsed = InferRequest.from_rest(body, header, "m", "2")
    _assert_same(request, parsed)
    assert parsed.parameters == request.parameters
    assert parsed.binary_output("out") and not parsed.binary_output("other")


def test_grpc_round_trip_every_datatype_through_tritons_own_messages() -> None:
    request = _request()
    wire = request.to_grpc(oip.ModelInferRequest).SerializeToString()
    triton_msg = triton_pb2.ModelInferRequest.FromString(wire)  # field numbers agree with Triton's
    assert [t.name for t in triton_msg.inputs] == [t.name for t in request.inputs]
    assert triton_msg.parameters["p_f"].double_param == 0.5
    parsed = InferRequest.from_grpc(oip.ModelInferRequest.FromString(triton_msg.SerializeToString()))
    _assert_same(request, parsed)
    assert parsed.parameters == request.parameters


def test_grpc_typed_contents_are_read() -> None:
    msg = triton_pb2.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="INT32", shape=[2, 2])
    t.contents.int_contents.extend([1, 2, 3, 4])
    s = msg.inputs.add(name="s", datatype="BYTES", shape=[2])
    s.contents.bytes_contents.extend([b"a", b"bc"])
    parsed = InferRequest.from_grpc(oip.ModelInferRequest.FromString(msg.SerializeToString()))
    np.testing.assert_array_equal(parsed.input("x").as_numpy(), [[1, 2], [3, 4]])
    assert parsed.input("s").data == [b"a", b"bc"]


def test_tritonclient_requests_parse() -> None:
    """What tritonclient.http and .grpc put on the wire parses to the same tensors."""
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    http_inputs = [thttp.InferInput("a", [1, 4], "FP32"), thttp.InferInput("s", [2], "BYTES")]
    http_inputs[0].set_data_from_numpy(a)
    http_inputs[1].set_data_from_numpy(np.array([b"x", b"\xffy"], dtype=object))
    body, header = _get_inference_request(http_inputs, "id7", None, 0, False, False, 0, None, None)
    parsed = InferRequest.from_rest(body, header, "m")
    np.testing.assert_array_equal(parsed.input("a").as_numpy(), a)
    assert parsed.input("s").data == [b"x", b"\xffy"] and parsed.id == "id7"
    assert parsed.binary_output("anything")  # tritonclient asks for binary outputs by default

    grpc_input = tgrpc.InferInput("a", [1, 4], "FP32")
    grpc_input.set_data_from_numpy(a)
    msg = triton_pb2.ModelInferRequest(model_name="m", inputs=[grpc_input._get_tensor()],
                                       raw_input_contents=[grpc_input._get_content()])
    parsed = InferRequest.from_grpc(oip.ModelInferRequest.FromString(msg.SerializeToString()))
    np.testing.assert_array_equal(parsed.input("a").as_numpy(), a)


def test_response_round_trips_and_non_utf8_bytes_go_binary() -> None:
    response = InferResponse("m", [InferOutput.from_numpy("f", np.ones((2, 2), np.float32)),
                                   InferOutput.from_bytes_list("b", [b"\xff\x00"])], "1", "id")
    body, header = response.to_rest(binary=False)
    doc = json.loads(body[:header])
    assert "data" in doc["outputs"][0] and doc["outputs"][1]["parameters"]["binary_data_size"] == 6
    back = InferResponse.from_rest(body, header)
    assert back.output("b").data == [b"\xff\x00"]
    np.testing.assert_array_equal(back.output("f").as_numpy(), np.ones((2, 2)))
    wire = response.to_grpc(oip.ModelInferResponse).SerializeToString()
    triton_msg = triton_pb2.ModelInferResponse.FromString(wire)
    assert len(triton_msg.raw_output_contents) == 2
    assert InferResponse.from_grpc(oip.ModelInferResponse.FromString(wire)).output("b").data == [b"\xff\x00"]


def test_bytes_serialization() -> None:
    raw = serialize_bytes(BYTES)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == (5).to_bytes(4, "little")
    assert deserialize_bytes(raw, 3, "t") == BYTES
    with pytest.raises(errors.InvalidInput, match="overruns"):
        deserialize_bytes(raw[:-1], 3, "input 't'")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "input 'x': 3 data elements"),
        ({"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}, "input 'x': INT32 data must be"),
        ({"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}, "do not fit UINT8"),
        ({"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}, "input 'x': unknown datatype 'FP99'"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "negative dimension"),
        ({"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}, "BOOL data must be booleans"),
        ({"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 3]}, "BYTES data must be strings"),
        ({"name": "x", "shape": [2], "datatype": "FP32"}, "input 'x': needs 'data'"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
         "overruns"),
    ],
)
def test_invalid_inputs_name_the_tensor(item: dict, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message.replace("(", r"\(")):
        InferRequest.from_rest(json.dumps({"inputs": [item]}).encode(), None, "m")


def test_binary_size_must_match_shape() -> None:
    header = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    with pytest.raises(errors.InvalidInput, match=r"input 'x': 8 bytes of FP32 data for shape \[3\]"):
        InferRequest.from_rest(header + b"\0" * 8, len(header), "m")
    header = header.replace(b'"binary_data_size": 8', b'"binary_data_size": 12')
    assert InferRequest.from_rest(header + b"\0" * 12, len(header), "m").input("x").numel == 3
    with pytest.raises(errors.InvalidInput, match="1 bytes of binary data are not claimed"):
        InferRequest.from_rest(header + b"\0" * 13, len(header), "m")


def test_error_table_is_the_one_mapping() -> None:
    expected = {
        errors.InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
        errors.Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
        errors.Forbidden: (403, grpc.StatusCode.PERMISSION_DENIED),
        errors.ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
        errors.PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        errors.BackendError: (500, grpc.StatusCode.INTERNAL),
        errors.BackendUnavailable: (503, grpc.StatusCode.UNAVAILABLE),
        errors.DeadlineExceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    }
    for cls, (status, code) in expected.items():
        exc = cls("m")
        assert (exc.http_status, exc.grpc_code) == (status, code)
        assert type(errors.error_for_status(status, "msg")) is cls
    assert errors.BackendUnavailable("x").retry_after_s == 1
    odd = errors.error_for_status(429, "slow down")
    assert (odd.http_status, odd.grpc_code) == (429, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert odd.message == "slow down"
    assert errors.as_gateway_error(RuntimeError("boom")).http_status == 500


def test_handler_error_envelope_maps_back_with_the_message() -> None:
    err = handler_error(b'{\n  "error": "\'image\' is not an image",\n  "status": 400,\n  "model": "x"\n}')
    assert isinstance(err, errors.InvalidInput) and err.message == "'image' is not an image"
    assert isinstance(handler_error(b'{"error": "too big", "status": 413}'), errors.PayloadTooLarge)
    assert handler_error(b'{"detections": [], "error": "not an envelope"}') is None
    assert handler_error(b"\x89PNG") is None


def test_fan_out_maps_tensors_to_handler_fields() -> None:
    request = InferRequest("m", [
        InferInput.from_bytes_list("image", [b"i0", b"i1"]),
        InferInput.from_bytes_list("mask", [b"shared"]),
        InferInput.from_numpy("threshold", np.array([0.5], np.float32)),
        InferInput.from_numpy("boxes", np.array([[1, 2], [3, 4]], np.int32)),
    ], parameters={"top_k": 5, "binary_data_output": True, "mode": "fast"})
    payloads = fan_out(request)
    assert payloads == [  # every handler request asks for the typed answer
        {"top_k": b"5", "mode": b"fast", "mask": b"shared", "threshold": b"0.5", "boxes": b"[[1, 2], [3, 4]]",
         "image": b"i0", ANSWER_FIELD: ANSWER_TENSORS},
        {"top_k": b"5", "mode": b"fast", "mask": b"shared", "threshold": b"0.5", "boxes": b"[[1, 2], [3, 4]]",
         "image": b"i1", ANSWER_FIELD: ANSWER_TENSORS},
    ]
    bad = InferRequest("m", [InferInput.from_bytes_list("a", [b"1", b"2"]),
                             InferInput.from_bytes_list("b", [b"1", b"2", b"3"])])
    with pytest.raises(errors.InvalidInput, match="input 'b' has 3 elements"):
        fan_out(bad)


def _typed(boxes: list[list[float]], names: list[bytes], probs: list[float]) -> bytes:
    return encode_tensors({"boxes": as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                           "label_names": as_tensor(names, "BYTES"),
                           "probabilities": as_tensor(np.asarray(probs, np.float32))})


def test_typed_answers_become_batched_outputs_padded_where_items_differ() -> None:
    answers = [typed_answer(_typed([[1, 2, 3, 4]], [b"cat"], [0.1, 0.7, 0.2])),
               typed_answer(_typed([[5, 6, 7, 8], [0, 0, 1, 1]], [b"dog", b"cow"], [0.6, 0.3, 0.1]))]
    request = InferRequest("m", [InferInput.from_bytes_list("image", [b"a", b"b"])])
    response = answers_to_response(request, answers)
    assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
        ("boxes", "FP32", [2, 2, 4]), ("label_names", "BYTES", [2, 2]), ("probabilities", "FP32", [2, 3])]
    assert response.output("boxes").as_numpy().tolist() == [[[1, 2, 3, 4], [0, 0, 0, 0]],
                                                            [[5, 6, 7, 8], [0, 0, 1, 1]]]
    assert response.output("label_names").data == [b"cat", b"", b"dog", b"cow"]
    request.outputs = [RequestedOutput("probabilities", {"classification": 2})]
    (top,) = answers_to_response(request, answers).outputs
    assert (top.datatype, top.shape, top.data) == ("BYTES", [2, 2], [b"0.700000:1", b"0.200000:2",
                                                                     b"0.600000:0", b"0.300000:1"])
    request.outputs = [RequestedOutput("label_names", {"classification": 2})]
    with pytest.raises(errors.InvalidInput, match="holds no per-item probabilities"):
        answers_to_response(request, answers)
    with pytest.raises(errors.BackendError, match="typed and others not"):
        answers_to_response(request, [answers[0], b"{}"])


def test_config_keys_routes_and_limits(tmp_path, monkeypatch) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n  - {key: file-key, name: f, models: [a]}\n")
    cfg_path = tmp_path / "gw.yaml"
    cfg_path.write_text(
        "backends:\n  ts: {type: torchserve, grpc: '127.0.0.1:1'}\n"
        "models:\n  a: {model: backend_a, deadline_s: 2}\n  b: {max_request_bytes: 10}\n"
        "limits: {deadline_s: 7}\n"
        "auth:\n  keys_file: keys.yaml\n  keys: [{key: yaml-key, models: ['*']}]\n")
    monkeypatch.setenv("ZOO_API_KEYS", "env-key=b; bare-key")
    monkeypatch.delenv("ZOO_API_KEYS_FILE", raising=False)
    cfg = load_config(cfg_path)
    assert cfg.models["a"].model == "backend_a" and cfg.models["a"].deadline_s == 2
    assert cfg.models["b"].deadline_s == 7 and cfg.models["b"].max_request_bytes == 10
    assert cfg.largest_request_bytes == 512 * 1024 * 1024
    assert cfg.lookup_key("file-key").allows("a") and not cfg.lookup_key("file-key").allows("b")
    assert cfg.lookup_key("yaml-key").allows("anything")
    assert cfg.lookup_key("env-key").models == {"b"} and cfg.lookup_key("bare-key").allows("x")
    assert cfg.lookup_key("nope") is None and "file-key" not in str(cfg.api_keys)  # held as digests
    assert parse_keys_env("k1=*;k2=a,b")[1]["models"] == ["a", "b"]
    monkeypatch.delenv("ZOO_API_KEYS")
    assert not load_config(None).auth_enabled


def test_grpc_request_with_contents_and_raw_contents_is_refused() -> None:
    msg = InferRequest("m", [InferInput.from_bytes_list("image", [b"x"])]).to_grpc(oip.ModelInferRequest)
    msg.inputs[0].contents.bytes_contents.append(b"x")
    with pytest.raises(errors.InvalidInput, match="'image' has typed contents while the request also has raw"):
        InferRequest.from_grpc(msg)
