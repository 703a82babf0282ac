"""Run by tests/serving/test_kserve_sdk.py inside the kserve venv (`.venv-kserve`, see the Makefile): KServe's
own SDK, unmodified, against a gateway. Imports nothing of this project. Prints one JSON document: per protocol,
the typed answer of a good request and the error message the SDK shows for a 404 and a 400.

    python kserve_client.py HTTP_BASE_URL GRPC_TARGET MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, shape: list[int], text: str = "hello") -> InferRequest:
    tensor = InferInput(name="INPUT", shape=shape, datatype="BYTES", data=[text])
    return InferRequest(model_name=model, infer_inputs=[tensor])


async def main(base_url: str, grpc_target: str, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        answer = await rest.infer(base_url, request(model, [1, 1]), model_name=model)
        out["rest_ok"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
        for kind, name, shape in (("rest_404", "nope", [1, 1]), ("rest_400", model, [3, 1])):
            try:
                await rest.infer(base_url, request(name, shape), model_name=name)
                out[kind] = None
            except httpx.HTTPStatusError as exc:
                out[kind] = {"status": exc.response.status_code, "message": str(exc)}
    finally:
        await rest.close()
    client = InferenceGRPCClient(grpc_target, timeout=30)
    try:
        answer = await client.infer(request(model, [1, 1]))
        out["grpc_ok"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
        for kind, name, shape in (("grpc_404", "nope", [1, 1]), ("grpc_400", model, [3, 1])):
            try:
                await client.infer(request(name, shape))
                out[kind] = None
            except grpc.RpcError as exc:
                out[kind] = {"status": exc.code().name, "message": exc.details()}
    finally:
        await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4])), default=str))
