"""Malformed OIP requests, one at a time over REST and gRPC: each is refused with 400 / INVALID_ARGUMENT and a
message naming the problem, and the valid request right after it is answered (nothing is left broken)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from proto import oip, serialize
from tests.serving.gateway_support import Running
from tests.serving.perf_analyzer_support import NOOP, noop_gateway
from tests.support import http_request, json_body

RAW_X = b"\x01\x00\x00\x00x"  # one BYTES element b"x" in the raw layout


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with noop_gateway() as running:
        yield running


def tensor(**changes: Any) -> dict[str, Any]:
    return {"name": "INPUT", "datatype": "BYTES", "shape": [1, 1], "data": ["x"], **changes}


def body(**doc: Any) -> bytes:
    return json.dumps(doc).encode()


BINARY_HEADER = body(inputs=[{"name": "INPUT", "datatype": "BYTES", "shape": [1, 1],
                              "parameters": {"binary_data_size": 50}}])
REST_CASES = [  # (case, body, extra headers, what the message must say)
    ("not JSON", b"{not json", {}, "request body is not valid JSON"),
    ("no inputs", body(inputs=[]), {}, "non-empty 'inputs' list"),
    ("inputs not a list", body(inputs={}), {}, "non-empty 'inputs' list"),
    ("input without a name", body(inputs=[{"datatype": "BYTES", "shape": [1], "data": ["x"]}]), {},
     "inputs[0] has no 'name'"),
    ("shape and data disagree", body(inputs=[tensor(shape=[2, 1])]), {}, "1 data elements for shape [2, 1]"),
    ("unknown datatype", body(inputs=[tensor(datatype="FP128")]), {}, "unknown datatype 'FP128'"),
    ("negative dimension", body(inputs=[tensor(shape=[-1, 1])]), {}, "has a negative dimension"),
    ("strings as FP32", body(inputs=[tensor(datatype="FP32", data=["a"])]), {}, "FP32 data must be numbers"),
    ("value out of range", body(inputs=[tensor(datatype="UINT8", data=[300])]), {}, "do not fit UINT8"),
    ("input twice", body(inputs=[tensor(), tensor()]), {}, "input 'INPUT' appears twice"),
    ("parameters not an object", body(inputs=[tensor()], parameters=[]), {}, "parameters must be an object"),
    ("unknown output", body(inputs=[tensor()], outputs=[{"name": "nope"}]), {}, "has no output 'nope'"),
    ("header length not a number", body(inputs=[tensor()]), {"Inference-Header-Content-Length": "abc"},
     "Inference-Header-Content-Length must be an integer"),
    ("header length past the body", body(inputs=[tensor()]), {"Inference-Header-Content-Length": "9999"},
     "is outside the body"),
    ("binary size past the body", BINARY_HEADER + RAW_X,
     {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}, "binary_data_size 50 overruns"),
]


def grpc_request(datatype: str = "BYTES", shape: tuple[int, ...] = (1, 1), contents: bool = True,
                 raw: tuple[bytes, ...] = ()) -> Any:
    msg = oip.ModelInferRequest(model_name=NOOP)
    one = msg.inputs.add(name="INPUT", datatype=datatype, shape=list(shape))
    if contents:
        one.contents.bytes_contents.append(b"x")
    msg.raw_input_contents.extend(raw)
    return msg


GRPC_CASES = [
    ("contents and raw_input_contents", grpc_request(raw=(RAW_X,)), "not both"),
    ("raw element past its data", grpc_request(contents=False, raw=(b"\x05\x00\x00\x00x",)), "overruns the data"),
    ("unknown datatype", grpc_request(datatype="FP128"), "unknown datatype 'FP128'"),
    ("shape and contents disagree", grpc_request(shape=(3, 1)), "for shape [3, 1]"),
    ("no data", grpc_request(contents=False), "0 elements in contents.bytes_contents"),
    ("raw entries per input", grpc_request(contents=False, raw=(RAW_X, b"zz")), "2 entries for 1 inputs"),
]


def rest_infer(gw: Running, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, _, raw = http_request(f"{gw.http_url}/v2/models/{NOOP}/infer", data,
                                  {"Content-Type": "application/json", **headers}, "POST", timeout=30)
    return status, json_body(raw)


@pytest.mark.parametrize(("case", "data", "headers", "needle"), REST_CASES, ids=[c[0] for c in REST_CASES])
def test_rest_malformed_request_is_400_naming_the_problem(gw: Running, case: str, data: bytes,
                                                          headers: dict[str, str], needle: str) -> None:
    status, doc = rest_infer(gw, data, headers)
    assert status == 400 and needle in doc["error"], (case, status, doc)
    status, doc = rest_infer(gw, body(inputs=[tensor()]), {})
    assert status == 200 and doc["outputs"][0]["name"] == "ok"


@pytest.mark.parametrize(("case", "msg", "needle"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_malformed_request_is_invalid_argument_naming_the_problem(gw: Running, case: str, msg: Any,
                                                                       needle: str) -> None:
    with grpc.insecure_channel(gw.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=serialize,
                                    response_deserializer=oip.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            infer(msg, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details(), case
        assert infer(grpc_request(), timeout=30).outputs[0].name == "ok"
